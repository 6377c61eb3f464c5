package migration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/profile"
)

// Importer imports legacy members into the platform.
type Importer struct {
	Pool     *pgxpool.Pool
	Identity *identity.Service
	Profile  *profile.Service
	Benefits *benefits.Service
	// Source names the legacy system; a legacy id is unique within it.
	Source string
	Now    func() time.Time
}

// Options of an import run.
type Options struct {
	// DryRun imports each member in a transaction that is then rolled
	// back: every check the import makes, against the platform as it is,
	// nothing kept.
	DryRun bool
	// Progress is called after each member with the records read.
	Progress func(read int)
}

// Report is what an import run did.
type Report struct {
	DryRun bool
	// Read counts the source's member records (refused ones included).
	Read     int
	Imported int
	// Already imported by an earlier run (Changed of them differ from
	// the source now: incremental catch-up is not built; see
	// docs/migration.md).
	Already, Changed int
	Points           int64 // points imported (open lots' remaining)
	// Refused records, each with its file, line and reason; Conflicts
	// counts those refused because an identifier belongs to another member.
	Refused   []*RowError
	Conflicts int
	// Ignored identifiers (placeholder values the identity rules block).
	Ignored []string
	Took    time.Duration
}

// errDryRun rolls a dry run's transaction back.
var errDryRun = errors.New("dry run")

// Run imports every member of src, each in its own transaction: all of a
// member or nothing. A record already imported (by legacy id) is skipped,
// so a run after a kill continues where the last one stopped and a second
// run doubles nothing. A refused record is reported and the run goes on;
// an error of the platform (a database that stays away) stops it.
func (im *Importer) Run(ctx context.Context, src *Source, o Options) (Report, error) {
	start := time.Now()
	rep := Report{DryRun: o.DryRun}
	now := time.Now
	if im.Now != nil {
		now = im.Now
	}
	// Identifiers seen in this run: two legacy members sharing a unique
	// identifier are a conflict even in a dry run (which keeps nothing
	// for the database to find).
	owners := map[string]string{}
	err := src.Each(func(m *Member, rerr *RowError) error {
		if m != nil || rerr == nil || rerr.File == "members.csv" || rerr.File == "members.jsonl" {
			rep.Read++
		}
		defer func() {
			if o.Progress != nil {
				o.Progress(rep.Read)
			}
		}()
		if rerr != nil {
			rep.Refused = append(rep.Refused, rerr)
			return nil
		}
		if other, err := im.sharedInRun(m, owners); err != nil {
			return err
		} else if other != "" {
			rep.Conflicts++
			rep.Refused = append(rep.Refused, &RowError{File: m.File, Line: m.Line, LegacyID: m.LegacyID,
				Reason: "conflict: " + other + " (never merged by an import; resolve it in the legacy system or after the import)"})
			return nil
		}
		res, err := im.importMember(ctx, m, o.DryRun, now())
		switch {
		case err != nil && refusal(err):
			if errors.Is(err, identity.ErrImportConflict) {
				rep.Conflicts++
			}
			rep.Refused = append(rep.Refused, &RowError{File: m.File, Line: m.Line, LegacyID: m.LegacyID, Reason: err.Error()})
		case err != nil:
			return fmt.Errorf("%s:%d: %s: %w", m.File, m.Line, m.LegacyID, err)
		case res.already:
			rep.Already++
			if res.changed {
				rep.Changed++
			}
		default:
			rep.Imported++
			rep.Points += openPoints(m.Loyalty, now())
			for _, g := range res.ignored {
				rep.Ignored = append(rep.Ignored, fmt.Sprintf("%s:%d: %s: %s", m.File, m.Line, m.LegacyID, g))
			}
		}
		return nil
	})
	rep.Took = time.Since(start)
	return rep, err
}

// sharedInRun reports a unique identifier of m that another record of this
// run holds, and records m's.
func (im *Importer) sharedInRun(m *Member, owners map[string]string) (string, error) {
	norm, err := im.Identity.Normalize(m.Identifiers)
	if err != nil {
		return "", nil // importMember refuses it, naming the identifier
	}
	rules := im.Identity.Rules()
	var mine []string
	for _, n := range norm {
		if !rules.For(n.Type).Unique || rules.Blocked(n.Type, n.Value) {
			continue
		}
		k := string(n.Hash)
		if other, ok := owners[k]; ok && other != m.LegacyID {
			return fmt.Sprintf("%s %s also belongs to legacy member %s", identity.TypeName(n.Type), n.Masked, other), nil
		}
		mine = append(mine, k)
	}
	for _, k := range mine {
		owners[k] = m.LegacyID
	}
	return "", nil
}

type imported struct {
	already, changed bool
	ignored          []string
}

// importMember imports m in one transaction (rolled back in a dry run).
func (im *Importer) importMember(ctx context.Context, m *Member, dryRun bool, now time.Time) (imported, error) {
	var res imported
	cause := "import:" + im.Source + ":" + m.LegacyID
	stored, shown, err := im.Profile.CheckImport(m.Attributes, m.Consents)
	if err != nil {
		return res, err
	}
	err = postgres.RetryTx(ctx, im.Pool, func(tx pgx.Tx) error {
		res = imported{}
		if err := postgres.LockLegacyID(ctx, tx, im.Source, m.LegacyID); err != nil {
			return err
		}
		prev, found, err := postgres.FindLegacyMember(ctx, tx, im.Source, m.LegacyID)
		if err != nil {
			return err
		}
		if found {
			res.already, res.changed = true, !bytes.Equal(prev.RowSHA256, m.SHA256)
			return nil
		}
		got, err := im.Identity.ImportMember(ctx, tx, m.Identifiers, m.CreatedAt, cause)
		if err != nil {
			return err
		}
		for _, g := range got.Ignored {
			res.ignored = append(res.ignored, fmt.Sprintf("%s %s ignored (%s)", identity.TypeName(g.Identifier.Type), g.Identifier.Masked, g.Rule))
		}
		if err := im.Profile.ImportProfile(ctx, tx, got.MemberID, stored, shown, m.Consents, cause); err != nil {
			return err
		}
		if err := im.Benefits.ImportLegacy(ctx, tx, got.MemberID, m.Loyalty, cause, now); err != nil {
			return err
		}
		if err := im.Profile.ComputeLabels(ctx, tx, got.MemberID, cause); err != nil {
			return err
		}
		if err := postgres.InsertLegacyMember(ctx, tx, postgres.LegacyMember{Source: im.Source, LegacyID: m.LegacyID,
			MemberID: got.MemberID, RowSHA256: m.SHA256, ImportedAt: now}); err != nil {
			return err
		}
		if dryRun {
			return errDryRun
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		err = nil
	}
	return res, err
}

// refusal reports whether err refuses the record (its data) rather than
// the run (the platform).
func refusal(err error) bool {
	return errors.Is(err, identity.ErrImportConflict) || errors.Is(err, identity.ErrInvalidIdentifier) ||
		errors.Is(err, identity.ErrUnroutable) || errors.Is(err, identity.ErrRefused) ||
		errors.Is(err, profile.ErrInvalid) || fault.IsData(err)
}

// openPoints is the balance a legacy member's lots make at now.
func openPoints(l benefits.Legacy, now time.Time) int64 {
	var n int64
	for _, lot := range l.Lots {
		if lot.ExpiresAt.IsZero() || lot.ExpiresAt.After(now) {
			n += lot.Remaining
		}
	}
	return n
}

// memberOf is the member a legacy record became; uuid.Nil when it was not
// imported.
func (im *Importer) memberOf(ctx context.Context, legacyID string) (uuid.UUID, error) {
	l, found, err := postgres.FindLegacyMember(ctx, im.Pool, im.Source, legacyID)
	if err != nil || !found {
		return uuid.Nil, err
	}
	return l.MemberID, nil
}
