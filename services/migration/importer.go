package migration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
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
	// Workers import batches of members concurrently (0: the CPUs, at
	// least 2); records
	// sharing an identifier are told apart in file order before any is
	// imported.
	Workers int
	// Batch is how many members one transaction imports (0: 500); each
	// member is imported whole or not at all within it (a refused member
	// is rolled back alone).
	Batch int
	// LabelsByOrders leaves the members' labels to ImportOrders, to be run
	// next with the export's order history: it computes every imported
	// member's labels once, from its orders (rebuilt) or without (the
	// members that have none), where otherwise they are computed here and
	// again from the orders. Until it has run, the members have no labels.
	LabelsByOrders bool
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
	// Accepted are, in a dry run, the legacy ids that would be imported,
	// for the order history's check (a real run's order history asks the
	// database). Kept only then: a million strings in a map cost the
	// collector a scan of each on every cycle of a long run.
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
	now := im.now
	// Identifiers seen in this run: two legacy members sharing a unique
	// identifier are a conflict even in a dry run (which keeps nothing
	// for the database to find).
	owners := &identifierOwners{byHash: map[[16]byte]int32{}}
	workers := o.Workers
	if workers <= 0 {
		workers = max(2, runtime.GOMAXPROCS(0))
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
		batch = 500
	}
	// Each chunk of members is imported in one transaction.
	chunks := chunker{size: batch, run: func(ms []*Member) {
		g.Go(func() error {
			results, err := im.importChunk(gctx, ms, o.DryRun, !o.LabelsByOrders, now())
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
						if o.DryRun {
							rep.Accepted[m.LegacyID] = true
						}
						rep.Already++
						if res.changed {
							rep.Changed++
						}
					default:
						if o.DryRun {
							rep.Accepted[m.LegacyID] = true
						}
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
	}}
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
		chunks.add(m)
		return nil
	})
	err = chunks.finish(g, err)
	// In file order, whatever order the workers finished in.
	sort.SliceStable(rep.Refused, func(i, j int) bool {
		return before(rep.Refused[i].File, rep.Refused[i].Line, rep.Refused[j].File, rep.Refused[j].Line)
	})
	sort.Strings(rep.Ignored)
	if err == nil && rep.Imported > 0 && !o.DryRun {
		// What comes next (the order history, verify, catch-up) is
		// planned on the statistics of the members just loaded.
		err = postgres.AnalyzeMembers(ctx, im.Pool)
	}
	rep.Took = time.Since(start)
	return rep, err
}

// chunker gathers members into chunks of size, handing each full one (and
// the last, flushed) to run.
type chunker struct {
	size  int
	chunk []*Member
	run   func([]*Member)
}

func (c *chunker) add(m *Member) {
	if c.chunk = append(c.chunk, m); len(c.chunk) >= c.size {
		c.flush()
	}
}

func (c *chunker) flush() {
	if len(c.chunk) > 0 {
		ms := c.chunk
		c.chunk = nil
		c.run(ms)
	}
}

// finish ends a run whose reading of the source ended with err: the last
// chunk goes to run if the reading ended well, then it waits for g, the
// group run hands the chunks to. It returns the error that ended the run:
// a worker's where the reading stopped only because that worker's failure
// cancelled it.
func (c *chunker) finish(g *errgroup.Group, err error) error {
	if err == nil {
		c.flush()
	}
	if werr := g.Wait(); err == nil || errors.Is(err, context.Canceled) && werr != nil {
		err = werr
	}
	return err
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

// identifierOwners are the unique identifiers of this run's records, by
// the first 16 bytes of their keyed hash (a collision of 128 bits of an
// HMAC is not a concern at any export's size), each with the record that
// holds it. The map holds no pointers, so the collector does not scan its
// millions of entries; the legacy ids are kept once each, in a slice.
type identifierOwners struct {
	byHash  map[[16]byte]int32
	records []string // legacy ids, by index
}

// sharedInRun reports a unique identifier of m that another record of this
// run holds, and records m's.
func (im *Importer) sharedInRun(m *Member, owners *identifierOwners) string {
	plan, err := im.planOf(m)
	if plan == nil || errors.Is(err, identity.ErrInvalidIdentifier) {
		return "" // importMember refuses it, naming the identifier
	}
	rules := im.Identity.Rules()
	var mine [][16]byte
	for _, n := range plan.Usable {
		if !rules.For(n.Type).Unique {
			continue
		}
		var k [16]byte
		copy(k[:], n.Hash)
		if i, ok := owners.byHash[k]; ok && owners.records[i] != m.LegacyID {
			return fmt.Sprintf("%s %s also belongs to legacy member %s", identity.TypeName(n.Type), n.Masked, owners.records[i])
		}
		mine = append(mine, k)
	}
	if len(mine) > 0 {
		i := int32(len(owners.records))
		owners.records = append(owners.records, m.LegacyID)
		for _, k := range mine {
			owners.byHash[k] = i
		}
	}
	return ""
}

// planOf is m's identifiers planned for an import (identity.PlanImport),
// once: the plan (nil when they cannot be normalised) and its refusal.
func (im *Importer) planOf(m *Member) (*identity.ImportPlan, error) {
	if m.plan == nil && m.planErr == nil {
		p, err := im.Identity.PlanImport(m.Identifiers)
		m.plan, m.planErr = &p, err
		if errors.Is(err, identity.ErrInvalidIdentifier) {
			m.plan = nil
		}
	}
	return m.plan, m.planErr
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
func (im *Importer) importChunk(ctx context.Context, ms []*Member, dryRun, labels bool, now time.Time) ([]imported, error) {
	results := make([]imported, len(ms))
	ready, skip := im.checkProfiles(ms, results, now)
	for {
		err := postgres.RetryTx(ctx, im.Pool, func(tx pgx.Tx) error {
			if err := im.importIn(ctx, tx, ms, ready, skip, results, labels, now); err != nil {
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
				one, err := im.importChunk(ctx, []*Member{m}, dryRun, labels, now)
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
func (im *Importer) checkProfiles(ms []*Member, results []imported, now time.Time) (ready []checked, skip []bool) {
	ready = make([]checked, len(ms))
	skip = make([]bool, len(ms)) // refused before or by an earlier attempt
	for i, m := range ms {
		if err := checkMemberTimes(m, now); err != nil {
			results[i].err, skip[i] = err, true
			continue
		}
		values, shown, err := im.Profile.CheckImport(m.Attributes, m.Consents)
		if err != nil {
			results[i].err, skip[i] = err, true
			continue
		}
		ready[i] = checked{values, shown}
	}
	return ready, skip
}

// now is the importer's clock: Now, or the wall clock.
func (im *Importer) now() time.Time {
	if im.Now != nil {
		return im.Now()
	}
	return time.Now()
}

// checkMemberTimes refuses a member created, or whose consents were
// decided, before benefits.EarliestLegacy or after now (the import's
// time): year 0 was stored and broke every read of the member, and a
// creation in 9999 stood as the member's.
func checkMemberTimes(m *Member, now time.Time) error {
	for _, c := range m.Consents {
		if err := legacyTime("consented_at", c.DecidedAt, now); err != nil {
			return err
		}
	}
	return legacyTime("created_at", m.CreatedAt, now)
}

// legacyTime refuses t, the field of an imported record, before
// benefits.EarliestLegacy or after now.
func legacyTime(field string, t, now time.Time) error {
	switch {
	case t.Before(benefits.EarliestLegacy):
		return fmt.Errorf("%s: %s is before %s", field, t.Format(time.RFC3339), benefits.EarliestLegacy.Format(time.DateOnly))
	case t.After(now):
		return fmt.Errorf("%s: %s is after the import time %s", field, t.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	return nil
}

// importIn imports the members of ms not skipped in tx, as a stage
// writes a batch: their legacy records locked and looked up in one
// statement each; their identity (identity.ImportMembers), attributes,
// consents and changes written in one round trip, under a savepoint; their
// loyalty in one batch; their labels computed together; their legacy
// records in one statement (labels unless !labels: ImportOrders computes
// them). A member refused on its own (a conflict, an
// identifier or attribute the platform refuses) is marked in skip, with its
// refusal in results, and leaves nothing. A member whose loyalty is refused
// is marked so too and errRedo returned: tx must be rolled back and the
// rest imported again. errSplit asks for the members one by one (a value
// the database refuses in one of them); any other error is the platform's.
func (im *Importer) importIn(ctx context.Context, tx pgx.Tx, ms []*Member, ready []checked, skip []bool, results []imported, labels bool, now time.Time) error {
	var ids, keys []string
	for i, m := range ms {
		if skip[i] {
			continue
		}
		results[i] = imported{}
		ids = append(ids, m.LegacyID)
		keys = append(keys, m.LegacyID, attributes.ErasedLegacyID(im.Identity.PII(), im.Source, m.LegacyID))
	}
	if len(ids) == 0 {
		return nil
	}
	if err := postgres.LockLegacyIDs(ctx, tx, im.Source, ids); err != nil {
		return err
	}
	prev, err := postgres.FindLegacyMembers(ctx, tx, im.Source, keys)
	if err != nil {
		return err
	}
	var reqs []identity.ImportRequest
	var of []int
	for i, m := range ms {
		if skip[i] {
			continue
		}
		l, found := prev[m.LegacyID]
		if !found {
			l, found = prev[attributes.ErasedLegacyID(im.Identity.PII(), im.Source, m.LegacyID)]
		}
		switch {
		case found && l.Erased:
			results[i].err, skip[i] = fmt.Errorf("%w: the member was erased at their request; an import does not bring them back", ErrErased), true
			continue
		case found:
			results[i].already, results[i].changed = true, !bytes.Equal(l.RowSHA256, m.SHA256)
			continue
		}
		plan, err := im.planOf(m)
		if err != nil {
			results[i].err, skip[i] = err, true
			continue
		}
		reqs = append(reqs, identity.ImportRequest{Plan: *plan, CreatedAt: m.CreatedAt, Cause: im.cause(m)})
		of = append(of, i)
	}
	if len(reqs) == 0 {
		return nil
	}
	members, err := im.importIdentities(ctx, tx, ms, reqs, of, ready, skip, results)
	if err != nil {
		return err
	}
	var loyalty []benefits.LegacyImport
	var at []int
	for k, i := range of {
		if !skip[i] {
			loyalty = append(loyalty, benefits.LegacyImport{Member: members[k], Legacy: ms[i].Loyalty, Cause: reqs[k].Cause})
			at = append(at, i)
		}
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
			results[at[k]].err, skip[at[k]] = rerr, true
		}
		return errRedo
	}
	done := make([]uuid.UUID, len(loyalty))
	causes := make([]string, len(loyalty))
	records := make([]postgres.LegacyMember, len(loyalty))
	for k, l := range loyalty {
		done[k], causes[k] = l.Member, l.Cause
		records[k] = postgres.LegacyMember{Source: im.Source, LegacyID: ms[at[k]].LegacyID, MemberID: l.Member, RowSHA256: ms[at[k]].SHA256, ImportedAt: now}
	}
	if labels {
		if err := im.Profile.ComputeLabelsBatch(ctx, tx, done, causes); err != nil {
			return err
		}
	}
	b := &pgx.Batch{}
	postgres.QueueLegacyMembers(b, records)
	return tx.SendBatch(ctx, b).Close()
}

// errSplit rolls a chunk back to import its members one by one.
var errSplit = errors.New("import the batch member by member")

// errRedo rolls a chunk back to import it again without the members
// refused on the way.
var errRedo = errors.New("redo the batch without the refused members")

// cause is what an import of m causes, on every change it makes.
func (im *Importer) cause(m *Member) string { return "import:" + im.Source + ":" + m.LegacyID }

// importIdentities creates the members of reqs (ms[of[k]] for reqs[k]) with
// their identifiers, attributes, consents and changes, under a savepoint
// of tx, and returns their ids by request. A member refused is marked in
// skip with its refusal in results; when the database refuses a value of
// the batch's, errSplit (several members) or the member refused (one).
func (im *Importer) importIdentities(ctx context.Context, tx pgx.Tx, ms []*Member, reqs []identity.ImportRequest, of []int,
	ready []checked, skip []bool, results []imported) ([]uuid.UUID, error) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	members, err := im.writeIdentities(ctx, sp, ms, reqs, of, ready, skip, results)
	if err != nil {
		_ = sp.Rollback(ctx)
		if !refusal(err) {
			return nil, err
		}
		if len(reqs) > 1 {
			return nil, errSplit
		}
		results[of[0]].err, skip[of[0]] = err, true
		return members, nil
	}
	return members, sp.Commit(ctx)
}

func (im *Importer) writeIdentities(ctx context.Context, sp pgx.Tx, ms []*Member, reqs []identity.ImportRequest, of []int,
	ready []checked, skip []bool, results []imported) ([]uuid.UUID, error) {
	b := &pgx.Batch{}
	got, conflicts, err := im.Identity.ImportMembers(ctx, sp, b, reqs)
	if err != nil {
		return nil, err
	}
	members := make([]uuid.UUID, len(reqs))
	var changes []postgres.OutboxRow
	var profiles []profile.ProfileImport
	for k, i := range of {
		if err := conflicts[k]; err != nil {
			results[i].err, skip[i] = err, true
			continue
		}
		g := got[k]
		members[k] = g.MemberID
		for _, ig := range g.Ignored {
			results[i].ignored = append(results[i].ignored, fmt.Sprintf("%s %s ignored (%s)", identity.TypeName(ig.Identifier.Type), ig.Identifier.Masked, ig.Rule))
		}
		changes = append(changes, g.Changes...)
		profiles = append(profiles, profile.ProfileImport{Member: g.MemberID, Values: ready[i].values, Shown: ready[i].shown,
			Consents: ms[i].Consents, Cause: reqs[k].Cause, Seq: int64(len(g.Changes))})
	}
	more, err := im.Profile.ImportProfiles(ctx, b, profiles)
	if err != nil {
		return nil, err
	}
	postgres.QueueOutbox(b, append(changes, more...))
	if err := sp.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("import members: %w", err)
	}
	return members, nil
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
