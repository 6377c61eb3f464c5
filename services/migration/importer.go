package migration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/profile"
	"github.com/membercenter/membercenter/services/tags"
)

// Importer imports legacy members into the platform.
type Importer struct {
	Pool     *pgxpool.Pool
	Identity *identity.Service
	Profile  *profile.Service
	Benefits *benefits.Service
	Tags     *tags.Service // for an order history (ImportOrders)
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
	// Progress is called after each member with the records done.
	Progress func(done int)
	// Workers import batches of members concurrently (0: 4); records
	// sharing an identifier are told apart in file order before any is
	// imported.
	Workers int
	// Batch is how many members one transaction imports (0: 100); each
	// member is imported whole or not at all within it (a refused member
	// is rolled back alone).
	Batch int
}

// Report is what an import run did.
type Report struct {
	DryRun bool
	// Read counts the source's member records (refused ones included).
	Read     int
	Imported int
	// Already imported by an earlier run (Changed of them differ from
	// the source now: an import does not update them; their changes come
	// through catch-up, CatchUp).
	Already, Changed int
	Points           int64 // points imported (open lots' remaining)
	// Refused records, each with its file, line and reason; Conflicts
	// counts those refused because an identifier belongs to another member.
	Refused   []*RowError
	Conflicts int
	// Erased: records whose member was erased at their request since an
	// earlier import (not brought back, not a refusal).
	Erased int
	// Ignored identifiers (placeholder values the identity rules block).
	Ignored []string
	// Accepted are the legacy ids imported, now or before (in a dry run:
	// that would be), for the order history's check.
	Accepted map[string]bool
	Took     time.Duration
}

// ErrErased refuses a legacy record whose member was erased (EraseMember).
var ErrErased = errors.New("erased")

// errDryRun rolls a dry run's transaction back.
var errDryRun = errors.New("dry run")

// Run imports every member of src, each in its own transaction: all of a
// member or nothing. A record already imported (by legacy id) is skipped,
// so a run after a kill continues where the last one stopped and a second
// run doubles nothing. A refused record is reported and the run goes on;
// an error of the platform (a database that stays away) stops it.
func (im *Importer) Run(ctx context.Context, src *Source, o Options) (Report, error) {
	start := time.Now()
	rep := Report{DryRun: o.DryRun, Accepted: map[string]bool{}}
	now := time.Now
	if im.Now != nil {
		now = im.Now
	}
	// Identifiers seen in this run: two legacy members sharing a unique
	// identifier are a conflict even in a dry run (which keeps nothing
	// for the database to find).
	owners := map[string]string{}
	workers := o.Workers
	if workers <= 0 {
		workers = 4
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	var mu sync.Mutex // rep
	done := 0
	finish := func(apply func()) {
		mu.Lock()
		defer mu.Unlock()
		apply()
		done++
		if o.Progress != nil {
			o.Progress(done)
		}
	}
	batch := o.Batch
	if batch <= 0 {
		batch = 100
	}
	var chunk []*Member
	// dispatch imports the members read so far in one transaction.
	dispatch := func() {
		if len(chunk) == 0 {
			return
		}
		ms := chunk
		chunk = nil
		g.Go(func() error {
			results, err := im.importChunk(gctx, ms, o.DryRun, now())
			if err != nil {
				return err
			}
			for i, m := range ms {
				res := results[i]
				finish(func() {
					switch {
					case errors.Is(res.err, ErrErased):
						rep.Erased++
					case res.err != nil:
						if errors.Is(res.err, identity.ErrImportConflict) {
							rep.Conflicts++
						}
						rep.Refused = append(rep.Refused, &RowError{File: m.File, Line: m.Line, LegacyID: m.LegacyID, Reason: res.err.Error()})
					case res.already:
						rep.Accepted[m.LegacyID] = true
						rep.Already++
						if res.changed {
							rep.Changed++
						}
					default:
						rep.Accepted[m.LegacyID] = true
						rep.Imported++
						rep.Points += openPoints(m.Loyalty, now())
						for _, ig := range res.ignored {
							rep.Ignored = append(rep.Ignored, fmt.Sprintf("%s:%d: %s: %s", m.File, m.Line, m.LegacyID, ig))
						}
					}
				})
			}
			return nil
		})
	}
	err := src.Each(func(m *Member, rerr *RowError) error {
		if err := gctx.Err(); err != nil {
			return err
		}
		if m == nil && rerr.File != "members.csv" && rerr.File != "members.jsonl" {
			mu.Lock()
			rep.Refused = append(rep.Refused, rerr) // a side record: its member is counted on its own line
			mu.Unlock()
			return nil
		}
		mu.Lock()
		rep.Read++
		mu.Unlock()
		if rerr != nil {
			finish(func() { rep.Refused = append(rep.Refused, rerr) })
			return nil
		}
		if other := im.sharedInRun(m, owners); other != "" {
			finish(func() {
				rep.Conflicts++
				rep.Refused = append(rep.Refused, &RowError{File: m.File, Line: m.Line, LegacyID: m.LegacyID,
					Reason: "conflict: " + other + " (never merged by an import; resolve it in the legacy system or after the import)"})
			})
			return nil
		}
		chunk = append(chunk, m)
		if len(chunk) >= batch {
			dispatch()
		}
		return nil
	})
	if err == nil {
		dispatch()
	}
	if werr := g.Wait(); err == nil || errors.Is(err, context.Canceled) && werr != nil {
		err = werr
	}
	// In file order, whatever order the workers finished in.
	sort.SliceStable(rep.Refused, func(i, j int) bool {
		return before(rep.Refused[i].File, rep.Refused[i].Line, rep.Refused[j].File, rep.Refused[j].Line)
	})
	sort.Strings(rep.Ignored)
	rep.Took = time.Since(start)
	return rep, err
}

// before orders places in a source: the members file first, then the
// others by name, lines in order.
func before(fileA string, lineA int, fileB string, lineB int) bool {
	am, bm := strings.HasPrefix(fileA, "members."), strings.HasPrefix(fileB, "members.")
	switch {
	case am != bm:
		return am
	case fileA != fileB:
		return fileA < fileB
	}
	return lineA < lineB
}

// sharedInRun reports a unique identifier of m that another record of this
// run holds, and records m's.
func (im *Importer) sharedInRun(m *Member, owners map[string]string) string {
	norm, err := im.Identity.Normalize(m.Identifiers)
	if err != nil {
		return "" // importMember refuses it, naming the identifier
	}
	rules := im.Identity.Rules()
	var mine []string
	for _, n := range norm {
		if !rules.For(n.Type).Unique || rules.Blocked(n.Type, n.Value) {
			continue
		}
		k := string(n.Hash)
		if other, ok := owners[k]; ok && other != m.LegacyID {
			return fmt.Sprintf("%s %s also belongs to legacy member %s", identity.TypeName(n.Type), n.Masked, other)
		}
		mine = append(mine, k)
	}
	for _, k := range mine {
		owners[k] = m.LegacyID
	}
	return ""
}

type imported struct {
	already, changed bool
	ignored          []string
	err              error // the member's refusal
}

// importChunk imports members in one transaction (rolled back in a dry
// run): each member's identity and profile under a savepoint of its own
// (a refused member is rolled back alone), then the loyalty of all of them
// in one batch; a member whose loyalty is refused is left out and the
// transaction done again without it, so nothing of it is kept. An error is
// the platform's: the run stops.
func (im *Importer) importChunk(ctx context.Context, ms []*Member, dryRun bool, now time.Time) ([]imported, error) {
	results := make([]imported, len(ms))
	ready, skip := im.checkProfiles(ms, results)
	for {
		err := postgres.RetryTx(ctx, im.Pool, func(tx pgx.Tx) error {
			if err := im.importIn(ctx, tx, ms, ready, skip, results, now); err != nil {
				return err
			}
			if dryRun {
				return errDryRun
			}
			return nil
		})
		switch {
		case errors.Is(err, errRedo):
			continue
		case errors.Is(err, errSplit):
			for i, m := range ms {
				if skip[i] {
					continue
				}
				one, err := im.importChunk(ctx, []*Member{m}, dryRun, now)
				if err != nil {
					return nil, err
				}
				results[i] = one[0]
			}
			return results, nil
		case errors.Is(err, errDryRun):
			return results, nil
		case err != nil:
			return nil, err
		}
		return results, nil
	}
}

// checked is a member's attributes as CheckImport returned them: values
// normalised (sealed once the member exists) and shown masked.
type checked struct{ values, shown map[string]string }

// checkProfiles checks the members' attributes and consents against the
// schema before anything is written; skip marks the refused ones (their
// results hold why).
func (im *Importer) checkProfiles(ms []*Member, results []imported) (ready []checked, skip []bool) {
	ready = make([]checked, len(ms))
	skip = make([]bool, len(ms)) // refused before or by an earlier attempt
	for i, m := range ms {
		values, shown, err := im.Profile.CheckImport(m.Attributes, m.Consents)
		if err != nil {
			results[i].err, skip[i] = err, true
			continue
		}
		ready[i] = checked{values, shown}
	}
	return ready, skip
}

// importIn imports the members of ms not skipped in tx: each member's
// identity and profile under a savepoint of its own, then their loyalty in
// one batch, labels and the legacy record. A member whose loyalty is
// refused is marked in skip with its refusal in results, and errRedo
// returned: tx must be rolled back and the rest imported again. errSplit
// asks for the members one by one; any other error is the platform's.
func (im *Importer) importIn(ctx context.Context, tx pgx.Tx, ms []*Member, ready []checked, skip []bool, results []imported, now time.Time) error {
	for i := range ms {
		if !skip[i] {
			results[i] = imported{}
		}
	}
	var loyalty []benefits.LegacyImport
	var of []int
	for i, m := range ms {
		if skip[i] {
			continue
		}
		cause := "import:" + im.Source + ":" + m.LegacyID
		member, res, err := im.importIdentity(ctx, tx, m, ready[i].values, ready[i].shown, cause)
		switch {
		case err != nil && refusal(err):
			results[i].err, skip[i] = err, true
			continue
		case err != nil:
			return err
		}
		results[i] = res
		if res.already {
			continue
		}
		loyalty = append(loyalty, benefits.LegacyImport{Member: member, Legacy: m.Loyalty, Cause: cause})
		of = append(of, i)
	}
	refused, err := im.Benefits.ImportLegacyBatch(ctx, tx, loyalty, now)
	if err != nil && fault.IsData(err) {
		// A value the database refuses in one member's loyalty: the
		// batch is done member by member to find it.
		if len(loyalty) > 1 {
			return errSplit
		}
		refused = map[int]error{0: err}
	} else if err != nil {
		return err
	}
	if len(refused) > 0 {
		for k, rerr := range refused {
			results[of[k]].err, skip[of[k]] = rerr, true
		}
		return errRedo
	}
	for k, i := range of {
		cause := loyalty[k].Cause
		if err := im.Profile.ComputeLabels(ctx, tx, loyalty[k].Member, cause); err != nil {
			return err
		}
		if err := postgres.InsertLegacyMember(ctx, tx, postgres.LegacyMember{Source: im.Source, LegacyID: ms[i].LegacyID,
			MemberID: loyalty[k].Member, RowSHA256: ms[i].SHA256, ImportedAt: now}); err != nil {
			return err
		}
	}
	return nil
}

// errSplit rolls a chunk back to import its members one by one.
var errSplit = errors.New("import the batch member by member")

// errRedo rolls a chunk back to import it again without the members
// refused on the way.
var errRedo = errors.New("redo the batch without the refused members")

// importIdentity imports a member's identifiers, attributes and consents
// under a savepoint of tx, unless the legacy id was imported before.
func (im *Importer) importIdentity(ctx context.Context, tx pgx.Tx, m *Member, values, shown map[string]string, cause string) (uuid.UUID, imported, error) {
	var res imported
	// Everything under a savepoint: a refused member (whatever refused it)
	// leaves the batch's transaction usable and nothing of itself.
	sp, err := tx.Begin(ctx)
	if err != nil {
		return uuid.Nil, res, err
	}
	member, res, err := im.importIdentityIn(ctx, sp, m, values, shown, cause)
	if err != nil {
		_ = sp.Rollback(ctx)
		return uuid.Nil, res, err
	}
	return member, res, sp.Commit(ctx)
}

func (im *Importer) importIdentityIn(ctx context.Context, tx pgx.Tx, m *Member, values, shown map[string]string, cause string) (uuid.UUID, imported, error) {
	var res imported
	if err := postgres.LockLegacyID(ctx, tx, im.Source, m.LegacyID); err != nil {
		return uuid.Nil, res, err
	}
	prev, found, err := im.findLegacy(ctx, tx, m.LegacyID)
	if err != nil {
		return uuid.Nil, res, err
	}
	if found && prev.Erased {
		return uuid.Nil, res, fmt.Errorf("%w: the member was erased at their request; an import does not bring them back", ErrErased)
	}
	if found {
		res.already, res.changed = true, !bytes.Equal(prev.RowSHA256, m.SHA256)
		return prev.MemberID, res, nil
	}
	got, err := im.Identity.ImportMember(ctx, tx, m.Identifiers, m.CreatedAt, cause)
	var stored map[string]string
	if err == nil {
		stored, err = im.Profile.SealImport(ctx, got.MemberID, values)
	}
	if err == nil {
		err = im.Profile.ImportProfile(ctx, tx, got.MemberID, stored, shown, m.Consents, cause)
	}
	if err != nil {
		return uuid.Nil, res, err
	}
	for _, g := range got.Ignored {
		res.ignored = append(res.ignored, fmt.Sprintf("%s %s ignored (%s)", identity.TypeName(g.Identifier.Type), g.Identifier.Masked, g.Rule))
	}
	return got.MemberID, res, nil
}

// findLegacy finds the record of a legacy id: imported, or kept under a
// keyed hash of it since its member was erased.
func (im *Importer) findLegacy(ctx context.Context, q postgres.Querier, legacyID string) (postgres.LegacyMember, bool, error) {
	l, found, err := postgres.FindLegacyMember(ctx, q, im.Source, legacyID)
	if err != nil || found {
		return l, found, err
	}
	return postgres.FindLegacyMember(ctx, q, im.Source, attributes.ErasedLegacyID(im.Identity.PII(), im.Source, legacyID))
}

// erasedSince reports whether a legacy id's member was erased since its
// import, remembering answers in cache.
func (im *Importer) erasedSince(ctx context.Context, legacyID string, cache map[string]bool) (bool, error) {
	if v, ok := cache[legacyID]; ok {
		return v, nil
	}
	l, found, err := im.findLegacy(ctx, im.Pool, legacyID)
	if err != nil {
		return false, err
	}
	cache[legacyID] = found && l.Erased
	return cache[legacyID], nil
}

// refusal reports whether err refuses the record (its data) rather than
// the run (the platform).
func refusal(err error) bool {
	return errors.Is(err, ErrErased) || errors.Is(err, identity.ErrImportConflict) || errors.Is(err, identity.ErrInvalidIdentifier) ||
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
// imported; erased when it was erased since at the member's request.
func (im *Importer) memberOf(ctx context.Context, legacyID string) (member uuid.UUID, erased bool, err error) {
	l, found, err := im.findLegacy(ctx, im.Pool, legacyID)
	if err != nil || !found {
		return uuid.Nil, false, err
	}
	return l.MemberID, l.Erased, nil
}

// Setup is what New builds an importer from.
type Setup struct {
	Pool     *pgxpool.Pool
	KeyStore *pgxpool.Pool // members' data keys; nil: Pool
	Identity identity.Config
	Schema   *attributes.Schema // nil: the built-in schema
	Changes  changes.Writer
	Log      *slog.Logger
	Source   string
	Now      func() time.Time // nil: the wall clock
}

// New builds an importer on its own services — identity, benefits with the
// programme in force, the tag engine with the catalogue in force, the
// profile with the attribute schema — as a platform process builds them.
func New(ctx context.Context, s Setup) (*Importer, error) {
	ids, err := identity.New(s.Identity, s.Pool, s.Changes, s.Log)
	if err != nil {
		return nil, err
	}
	if s.KeyStore != nil {
		ids.PII().UseKeyStore(s.KeyStore)
	}
	bs := benefits.New(s.Pool, s.Changes, s.Log)
	ts := tags.New(s.Pool, s.Changes, s.Log)
	ps := profile.New(s.Pool, ts, s.Changes)
	if s.Now != nil {
		ids.SetClock(s.Now)
		bs.SetClock(s.Now)
		ts.SetClock(s.Now)
		ps.SetClock(s.Now)
	}
	if err := bs.Reload(ctx); err != nil {
		return nil, err
	}
	if err := ts.Reload(ctx); err != nil {
		return nil, err
	}
	ts.SetBenefitLabels(bs.DependsOnLabel)
	schema := s.Schema
	if schema == nil {
		schema = attributes.Default()
	}
	ps.SetAttributes(schema, ids.PII())
	return &Importer{Pool: s.Pool, Identity: ids, Profile: ps, Benefits: bs, Tags: ts, Source: s.Source, Now: s.Now}, nil
}
