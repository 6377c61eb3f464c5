// Package tags is the tag / profile engine: a versioned catalogue of labels
// (catalog.yaml) computed from per-member features that the tag worker folds
// event by event from member.events.v1, exactly once, with a sweep that
// moves members out of time windows on time; label changes go to the outbox
// (so channels see them) and to ClickHouse (current profiles and history)
// for marketing. Backfill recomputes everything from ClickHouse history.
package tags

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/membercenter/membercenter/pipeline/contract"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/versioned"
)

// Stage is the tag worker's name in consumer groups and processed_events.
const Stage = "tags"

// Service computes and stores labels.
type Service struct {
	pool    *pgxpool.Pool
	changes changes.Writer
	log     *slog.Logger
	now     func() time.Time
	cat     *versioned.Document[Catalog]
	// benefitLabels says whether a benefit depends on a label (nil: none
	// does).
	benefitLabels atomic.Pointer[func(label string) bool]
	// states are the decoded states batches stored last (nil: none kept).
	states *stateCache
}

// SetBenefitLabels tells the worker which labels benefits depend on: a
// member whose membership of one of them changes is queued, in the same
// transaction, for the benefit stage to re-evaluate its benefits.
func (s *Service) SetBenefitLabels(depends func(label string) bool) { s.benefitLabels.Store(&depends) }

// benefitsFollow says whether a benefit depends on one of the labels.
func (s *Service) benefitsFollow(labels ...[]string) bool {
	f := s.benefitLabels.Load()
	if f == nil {
		return false
	}
	for _, ls := range labels {
		for _, l := range ls {
			if (*f)(l) {
				return true
			}
		}
	}
	return false
}

// Catalogues is how the label catalogue is stored and read.
var Catalogues = versioned.Format[Catalog]{Name: "label catalogue", Kind: postgres.Catalogue, Action: "catalog.loaded", Parse: ParseCatalog,
	Version: func(c *Catalog) string { return c.Version }}

var _ contract.Applier = (*Service)(nil)

// New returns the service running the embedded catalogue until a loaded
// version is found (Watch).
func New(pool *pgxpool.Pool, ch changes.Writer, log *slog.Logger) *Service {
	c, err := ParseCatalog(defaultCatalog)
	if err != nil {
		panic(fmt.Sprintf("embedded catalog.yaml: %v", err)) // covered by tests
	}
	return &Service{pool: pool, changes: ch, log: log, now: time.Now, cat: versioned.New(Catalogues, pool, log, c),
		states: newStateCache(DefaultStateCacheBytes)}
}

// Catalog returns the catalogue in force.
func (s *Service) Catalog() *Catalog { return s.cat.Current() }

// SetClock replaces the clock, for tests.
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// LoadCatalog validates a catalogue and stores it as the newest version;
// running services switch to it (Watch). A catalogue that fails validation
// is refused and nothing changes. The load is audited as made by the
// call's actor (auth.Actor).
func LoadCatalog(ctx context.Context, pool *pgxpool.Pool, src []byte) (*Catalog, error) {
	return Catalogues.Store(ctx, pool, src, versioned.Loader{Actor: auth.Actor(ctx)})
}

// Known reports whether the catalogue in force has the label.
func (s *Service) Known(labelID string) bool { return s.Catalog().Label(labelID) != nil }

// Reload switches to the newest stored catalogue if it is not in force. A
// stored catalogue that no longer validates is logged and skipped: the
// running one stays.
func (s *Service) Reload(ctx context.Context) error { return s.cat.Reload(ctx) }

// Watch reloads the catalogue every interval until ctx ends.
func (s *Service) Watch(ctx context.Context, interval time.Duration) error {
	return s.cat.Watch(ctx, interval)
}

// memberState is what the engine holds of one member during an operation.
type memberState struct {
	id        uuid.UUID
	attrs     map[string]string
	exists    bool // member_features row
	state     *State
	version   int64
	catalog   string
	dueAt     *time.Time
	profiling bool // profiling consent not withdrawn
	device    int
	changeSeq int64 // the member's last change sequence (the row is locked)
	pending   []*mcv1.MemberChange
	devices   []string // device identifiers to record before counting
	// attrsDirty: attrs changed (a sign-up filled them) and must be written.
	attrsDirty bool
}

// lock locks the member (the members row first, like every writer of a
// member, then its features) and loads what the engine needs. A merged
// member's id is followed to the member it was merged into.
func (s *Service) lock(ctx context.Context, tx pgx.Tx, id uuid.UUID, devices ...string) (*memberState, error) {
	for range 5 {
		m := &memberState{id: id, profiling: true, state: &State{}, devices: devices}
		var merged *uuid.UUID
		var err error
		if m.attrs, merged, m.changeSeq, err = postgres.MemberForUpdate(ctx, tx, id); err != nil {
			return nil, err
		}
		if merged != nil {
			if id, err = postgres.CanonicalMember(ctx, tx, id); err != nil {
				return nil, err
			}
			continue
		}
		if err := s.loadRest(ctx, tx, m); err != nil {
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("member %s keeps being merged", id)
}

func (s *Service) loadRest(ctx context.Context, tx pgx.Tx, m *memberState) error {
	r, err := postgres.LoadFeatures(ctx, tx, m.id, m.devices)
	if err != nil {
		return err
	}
	return m.take(&r)
}

// take takes the member's stored features.
func (m *memberState) take(r *postgres.FeaturesRow) error { return m.takeCached(r, nil) }

// takeCached takes the member's stored features, its state from cached
// when the row is still the one cached (r.Unchanged: the state was not
// read).
func (m *memberState) takeCached(r *postgres.FeaturesRow, cached *State) error {
	m.exists, m.version, m.catalog, m.dueAt, m.profiling, m.device = r.Exists, r.Version, r.CatalogVersion, r.DueAt, r.Profiling, r.DeviceShare
	if r.Unchanged {
		if cached == nil {
			return fmt.Errorf("member %s: features read without their state, and none held", m.id)
		}
		m.state = cached
		return nil
	}
	if r.State != nil {
		st, err := DecodeStateParts(r.State, r.Tail)
		if err != nil {
			return fmt.Errorf("member %s: %w", m.id, err)
		}
		m.state = st
	}
	return nil
}

// storedLabels reads the labels stored for the member, for a Refresh whose
// state does not remember what they were computed from (a state stored
// before, or under another catalogue).
func (s *Service) storedLabels(ctx context.Context, tx pgx.Tx, m *memberState) func() (map[string]any, error) {
	return func() (map[string]any, error) {
		if !m.exists {
			return map[string]any{}, nil
		}
		pb, legacy, _, err := postgres.StoredLabels(ctx, tx, m.id)
		if err != nil {
			return nil, err
		}
		return decodeStoredLabels(pb, legacy)
	}
}

// decodeStoredLabels decodes labels as stored: labels_pb, or JSON in a row
// written before it.
func decodeStoredLabels(pb, legacy []byte) (map[string]any, error) {
	if pb != nil {
		return LabelsFromPB(pb)
	}
	out := map[string]any{}
	if legacy != nil {
		if err := json.Unmarshal(legacy, &out); err != nil {
			return nil, fmt.Errorf("decode labels: %w", err)
		}
	}
	return out, nil
}

func demographics(attrs map[string]string) Demographics {
	return Demographics{BirthDate: attrs["birth_date"], Gender: attrs["gender"], City: attrs["city"]}
}

// Apply folds one member event into the member's features and recomputes
// the labels it can change, once: the event id is recorded in the same
// transaction.
func (s *Service) Apply(ctx context.Context, ev *mcv1.MemberEvent) error {
	rejected, err := s.ApplyBatch(ctx, []*mcv1.MemberEvent{ev})
	if err != nil {
		return err
	}
	return rejected[0]
}

// fillAttributes copies what a sign-up says about the member into canonical
// attributes the member does not have yet (written with the member's
// features).
func (s *Service) fillAttributes(m *memberState, su *mcv1.SignUp, ev *mcv1.MemberEvent) bool {
	loc := s.Catalog().Location
	add := map[string]string{}
	if su.GetBirthDate() != nil && m.attrs["birth_date"] == "" {
		add["birth_date"] = su.GetBirthDate().AsTime().In(loc).Format("2006-01-02")
	}
	if su.GetGender() != "" && m.attrs["gender"] == "" {
		add["gender"] = su.GetGender()
	}
	if su.GetCity() != "" && m.attrs["city"] == "" {
		add["city"] = su.GetCity()
	}
	if len(add) == 0 {
		return false
	}
	if m.attrs == nil {
		m.attrs = map[string]string{}
	}
	maps.Copy(m.attrs, add)
	m.attrsDirty = true
	m.pending = append(m.pending, &mcv1.MemberChange{
		CauseId: ev.GetEventId(), Channel: ev.GetChannel(), StoreId: ev.GetStoreId(),
		Change: &mcv1.MemberChange_AttributesChanged{AttributesChanged: &mcv1.AttributesChanged{Attributes: add}},
	})
	return true
}

// recompute brings the member's labels up to date (Catalog.Refresh: those
// that read a feature that changed, or all of them when the state does not
// say what they were computed from) and stores the result.
func (s *Service) recompute(ctx context.Context, tx pgx.Tx, m *memberState, cause string, ch mcv1.Channel, store string) error {
	r, err := s.evaluate(ctx, tx, m)
	if err != nil {
		return err
	}
	return s.store(ctx, tx, m, r, cause, ch, store)
}

// evaluate is recompute without the write: the member's new labels, what
// changed and the due time.
func (s *Service) evaluate(ctx context.Context, tx pgx.Tx, m *memberState) (*Refreshed, error) {
	c := s.Catalog()
	return c.Refresh(Inputs{State: m.state, Demo: demographics(m.attrs), Device: m.device}, s.now(), !m.profiling, s.storedLabels(ctx, tx, m))
}

// store writes the member's state and, when labels changed, the change
// (outbox, member_label_sets' true labels, the ClickHouse export queue).
func (s *Service) store(ctx context.Context, tx pgx.Tx, m *memberState, r *Refreshed, cause string, ch mcv1.Channel, storeID string) error {
	w, err := s.stage(ctx, m, r, cause, ch, storeID)
	if err != nil {
		return err
	}
	_, err = s.flush(ctx, tx, []*memberWrite{w}, nil)
	return err
}

// memberWrite is what one member's recomputation writes.
type memberWrite struct {
	m      *memberState
	labels *postgres.LabelMembership // nil: the true labels stay as they were
	export bool
	// benefits: a label a benefit depends on changed
	benefits bool
	outbox   []postgres.OutboxRow
	features postgres.FeaturesWrite
	// after the write: what the member then is
	newVersion int64
	newDue     *time.Time
}

// stage works out what storing the member's new labels writes: the change
// (numbered under the member's row lock), label membership, the export
// queue and the features row (its labels only when they changed).
func (s *Service) stage(ctx context.Context, m *memberState, r *Refreshed, cause string, ch mcv1.Channel, storeID string) (*memberWrite, error) {
	c := s.Catalog()
	now := s.now()
	w := &memberWrite{m: m, newVersion: m.version}
	if r.Changed() {
		w.newVersion++
		w.export = true
		m.pending = append(m.pending, &mcv1.MemberChange{
			CauseId: cause, Channel: ch, StoreId: storeID,
			Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: &mcv1.LabelsChanged{Labels: r.Changes, CatalogVersion: c.Version}},
		})
		// member_label_sets holds the labels that are true: written
		// when one became true or stopped being true.
		if len(r.Set) > 0 || len(r.Cleared) > 0 {
			w.labels = &postgres.LabelMembership{Member: m.id, Labels: r.TrueLabels()}
		}
		w.benefits = s.benefitsFollow(r.Set, r.Cleared)
	}
	for _, change := range m.pending {
		m.changeSeq++
		row, err := s.changes.Row(ctx, m.id, m.changeSeq, change)
		if err != nil {
			return nil, err
		}
		w.outbox = append(w.outbox, row)
	}
	m.pending = nil
	// The state's base is kept as stored when only records were added
	// since (EncodeStateParts).
	base, tail, err := EncodeStateParts(m.state)
	if err != nil {
		return nil, err
	}
	// Labels are written only when they changed, and only as labels_pb
	// (the JSON column is what rows written before it hold).
	var labelsPB []byte
	if r.Changed() || !m.exists {
		labelsPB = r.EncodeLabels()
	}
	if !r.Next.IsZero() {
		w.newDue = &r.Next
	}
	w.features = postgres.FeaturesWrite{Member: m.id, State: base, Tail: tail, KeepState: base == nil, LabelsPB: labelsPB,
		CatalogVersion: c.Version, Version: w.newVersion, DueAt: w.newDue, At: now}
	return w, nil
}

// flush writes the members' staged writes in one round trip, each kind of
// row in one statement; their changes go to held when there is one (for
// the transaction to write with its other phases' changes), to the outbox
// otherwise.
func (s *Service) flush(ctx context.Context, tx pgx.Tx, ws []*memberWrite, held *postgres.HeldOutbox) (map[uuid.UUID]uint32, error) {
	if len(ws) == 0 {
		return nil, nil
	}
	b := &pgx.Batch{}
	var attrMembers []uuid.UUID
	var attrs []map[string]string
	var labels []postgres.LabelMembership
	var exportMembers []uuid.UUID
	var exportVersions []int64
	var outbox []postgres.OutboxRow
	var benefitChecks []uuid.UUID
	features := make([]postgres.FeaturesWrite, 0, len(ws))
	for _, w := range ws {
		if w.m.attrsDirty {
			attrMembers, attrs = append(attrMembers, w.m.id), append(attrs, w.m.attrs)
		}
		if w.labels != nil {
			labels = append(labels, *w.labels)
		}
		if w.export {
			exportMembers, exportVersions = append(exportMembers, w.m.id), append(exportVersions, w.newVersion)
		}
		if w.benefits {
			benefitChecks = append(benefitChecks, w.m.id)
		}
		outbox = append(outbox, w.outbox...)
		features = append(features, w.features)
	}
	postgres.QueueAttributes(b, attrMembers, attrs)
	postgres.QueueLabelMembershipBatch(b, labels, s.now())
	postgres.QueueProfileExports(b, exportMembers, exportVersions)
	if held != nil {
		held.Hold(outbox)
	} else {
		postgres.QueueOutbox(b, outbox)
	}
	postgres.QueueBenefitLabelChecks(b, benefitChecks)
	xmins := make(map[uuid.UUID]uint32, len(features))
	postgres.QueueFeaturesBatch(b, features, func(m uuid.UUID, xmin uint32) { xmins[m] = xmin })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("store labels: %w", err)
	}
	for _, w := range ws {
		m := w.m
		m.version, m.catalog, m.dueAt, m.exists, m.attrsDirty = w.newVersion, s.Catalog().Version, w.newDue, true, false
	}
	return xmins, nil
}

// Diff lists the labels whose value changed from prev to next, in id order;
// labels that disappeared are cleared.
func Diff(prev, next map[string]any, at time.Time) []*mcv1.LabelValue {
	var ids []string
	for id, v := range next {
		if p, ok := prev[id]; !ok || !sameValue(p, v) {
			ids = append(ids, id)
		}
	}
	for id := range prev {
		if _, ok := next[id]; !ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	out := make([]*mcv1.LabelValue, 0, len(ids))
	for _, id := range ids {
		lv := &mcv1.LabelValue{LabelId: id, ComputedAt: timestamppb.New(at)}
		v, ok := next[id]
		if !ok {
			lv.Cleared = true
		} else {
			SetProtoValue(lv, v)
		}
		out = append(out, lv)
	}
	return out
}

// sameValue compares label values as stored (JSON numbers decode as
// float64).
func sameValue(a, b any) bool {
	return FormatValue(a) == FormatValue(b)
}

// SetProtoValue sets lv's value from a label value.
func SetProtoValue(lv *mcv1.LabelValue, v any) {
	switch x := v.(type) {
	case bool:
		lv.Value = &mcv1.LabelValue_BoolValue{BoolValue: x}
	case string:
		lv.Value = &mcv1.LabelValue_EnumValue{EnumValue: x}
	case float64:
		lv.Value = &mcv1.LabelValue_NumberValue{NumberValue: x}
	}
}

// FormatValue renders a label value as text: true/false, the enum value,
// or the number.
func FormatValue(v any) string {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x)
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	return fmt.Sprint(v)
}

// Recompute re-evaluates every label of a member in tx (after attribute or
// consent changes, merges), with cause as the change's cause.
func (s *Service) Recompute(ctx context.Context, tx pgx.Tx, member uuid.UUID, cause string, ch mcv1.Channel) error {
	m, err := s.lock(ctx, tx, member)
	if err != nil {
		return err
	}
	return s.recompute(ctx, tx, m, cause, ch, "")
}

// RecomputeBatch is Recompute for many members in tx, as a stage writes a
// batch: the members locked in id order and their features loaded in one
// statement each, every member's writes in one flush; causes[i] is the
// cause of members[i]'s change. A member merged into another since is
// recomputed as its survivor, alone (Recompute follows the merge).
func (s *Service) RecomputeBatch(ctx context.Context, tx pgx.Tx, members []uuid.UUID, causes []string, ch mcv1.Channel) error {
	if len(members) == 0 {
		return nil
	}
	cause := make(map[uuid.UUID]string, len(members))
	for i, id := range members {
		cause[id] = causes[i]
	}
	ids := slices.Clone(members)
	slices.SortFunc(ids, postgres.CompareMemberIDs)
	ids = slices.Compact(ids)
	locked, err := postgres.LockMembersForUpdate(ctx, tx, ids)
	if err != nil {
		return err
	}
	live := make([]uuid.UUID, 0, len(ids))
	var merged []uuid.UUID
	for _, id := range ids {
		l, ok := locked[id]
		switch {
		case !ok:
			return fmt.Errorf("member %s: %w", id, postgres.ErrNotFound)
		case l.MergedInto != nil:
			merged = append(merged, id)
		default:
			live = append(live, id)
		}
	}
	if _, err := s.recomputeLocked(ctx, tx, live, locked, func(id uuid.UUID) string { return cause[id] }, ch, nil); err != nil {
		return err
	}
	for _, id := range merged {
		if err := s.Recompute(ctx, tx, id, cause[id], ch); err != nil {
			return err
		}
	}
	return nil
}

// Sweep recomputes members whose due time has passed (a window ended, a day
// began) in batches, and returns how many it recomputed.
func (s *Service) Sweep(ctx context.Context, batch int) (int, error) {
	total := 0
	for {
		n := 0
		err := postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
			n = 0
			ids, err := postgres.DueFeatures(ctx, tx, s.now(), batch)
			if err != nil {
				return err
			}
			// Members first, in id order, as the workers lock them; then
			// their features, in one statement, and their new labels
			// written as the tag worker writes a batch's.
			slices.SortFunc(ids, postgres.CompareMemberIDs)
			locked, err := postgres.LockMembersForUpdate(ctx, tx, ids)
			if err != nil {
				return err
			}
			if err := s.sweepBatch(ctx, tx, ids, locked); err != nil {
				return err
			}
			n = len(ids)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < batch {
			return total, nil
		}
	}
}

// sweepBatch recomputes the due members ids (locked, in id order) in the
// transaction: their features loaded in one statement, their writes in one
// flush. A member merged into another since (rare) is recomputed as its
// survivor, alone (Recompute follows the merge), and leaves the list: its
// own features are no longer anyone's, and left due they brought its
// survivor back every sweep, for good.
func (s *Service) sweepBatch(ctx context.Context, tx pgx.Tx, ids []uuid.UUID, locked map[uuid.UUID]postgres.LockedMember) error {
	live := make([]uuid.UUID, 0, len(ids))
	var merged []uuid.UUID
	for _, id := range ids {
		if l, ok := locked[id]; ok && l.MergedInto == nil {
			live = append(live, id)
		} else {
			merged = append(merged, id)
		}
	}
	if _, err := s.recomputeLocked(ctx, tx, live, locked, func(uuid.UUID) string { return "sweep" }, mcv1.Channel_CHANNEL_BACKOFFICE, nil); err != nil {
		return err
	}
	for _, id := range merged {
		if err := s.Recompute(ctx, tx, id, "sweep", mcv1.Channel_CHANNEL_BACKOFFICE); err != nil {
			return err
		}
	}
	if len(merged) == 0 {
		return nil
	}
	return postgres.ClearDue(ctx, tx, merged)
}

// recomputeLocked recomputes live members (locked, in id order) in tx, as
// a stage writes a batch: their features loaded in one statement, each
// member's labels evaluated — after prepare, when given, has set the state
// to evaluate (a rebuild's) — and staged, caused by cause(id) on ch, and
// every write sent in one flush. It returns how many members' labels
// changed.
func (s *Service) recomputeLocked(ctx context.Context, tx pgx.Tx, live []uuid.UUID, locked map[uuid.UUID]postgres.LockedMember,
	cause func(uuid.UUID) string, ch mcv1.Channel, prepare func(*memberState)) (changed int, err error) {
	rows, err := postgres.LoadFeaturesBatch(ctx, tx, live, nil, nil)
	if err != nil {
		return 0, err
	}
	writes := make([]*memberWrite, 0, len(live))
	for _, id := range live {
		l := locked[id]
		m := &memberState{id: id, attrs: l.Attributes, changeSeq: l.ChangeSeq, profiling: true, state: &State{}}
		if err := m.take(rows[id]); err != nil {
			return 0, err
		}
		if prepare != nil {
			prepare(m)
		}
		r, err := s.evaluate(ctx, tx, m)
		if err != nil {
			return 0, err
		}
		w, err := s.stage(ctx, m, r, cause(id), ch, "")
		if err != nil {
			return 0, err
		}
		if w.newVersion != m.version {
			changed++
		}
		writes = append(writes, w)
	}
	_, err = s.flush(ctx, tx, writes, nil)
	return changed, err
}

// RunSweeper sweeps every interval until ctx ends.
// A failed sweep is retried (it never ends the loop).
func (s *Service) RunSweeper(ctx context.Context, interval time.Duration) error {
	fault.Every(ctx, s.log, "label sweep", interval, func(ctx context.Context) error {
		n, err := s.Sweep(ctx, 500)
		if n > 0 {
			s.log.DebugContext(ctx, "label sweep", "members", n)
		}
		return err
	})
	return nil
}

// Labels returns a member's current labels (a merged member's id answers
// with the member it was merged into) and the catalogue version they were
// computed with.
func (s *Service) Labels(ctx context.Context, q postgres.Querier, member uuid.UUID) (map[string]any, time.Time, error) {
	pb, legacy, at, err := postgres.StoredLabels(ctx, q, member)
	if err != nil {
		return nil, at, err
	}
	out, err := decodeStoredLabels(pb, legacy)
	if err != nil {
		return nil, at, err
	}
	return out, at, nil
}

// EncodeLabels encodes labels as GetProfile returns them: LabelValues in id
// order without times, as the wire form of a LabelsChanged.
func EncodeLabels(labels map[string]any) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(&mcv1.LabelsChanged{Labels: ProtoLabels(labels, time.Time{})})
}

// LabelsAsField re-tags stored labels (the wire form of a LabelsChanged:
// its repeated labels, field 1) as field num of another message, for one
// that carries them as they are stored, in its unknown fields, so that
// they are sent without being decoded and encoded again (a Profile's
// labels, field 7: GetProfile). The result is what marshalling the
// decoded labels as that field writes. ok is false when b holds anything
// but such labels, and b is then left as it was.
//
// The caller gives b up: when num's tag is one byte long, as field 1's is
// (fields 1 to 15), the tags are rewritten in place and the result is b,
// so that a member's labels (about 5 KB) are not copied once more on each
// GetProfile.
func LabelsAsField(b []byte, num protowire.Number) (out []byte, ok bool) {
	var entries int
	oneByteTags := true
	for rest := b; len(rest) > 0; entries++ {
		n, typ, tl := protowire.ConsumeTag(rest)
		if tl < 0 || n != 1 || typ != protowire.BytesType {
			return nil, false
		}
		_, vl := protowire.ConsumeBytes(rest[tl:])
		if vl < 0 {
			return nil, false
		}
		oneByteTags = oneByteTags && tl == 1
		rest = rest[tl+vl:]
	}
	tag := protowire.EncodeTag(num, protowire.BytesType)
	if oneByteTags && protowire.SizeVarint(tag) == 1 {
		// Each entry's tag is its first byte.
		for rest := b; len(rest) > 0; {
			_, vl := protowire.ConsumeBytes(rest[1:])
			rest[0] = byte(tag)
			rest = rest[1+vl:]
		}
		return b, true
	}
	out = make([]byte, 0, len(b)+entries)
	for len(b) > 0 {
		_, _, tl := protowire.ConsumeTag(b)
		v, vl := protowire.ConsumeBytes(b[tl:])
		out = protowire.AppendBytes(protowire.AppendVarint(out, tag), v)
		b = b[tl+vl:]
	}
	return out, true
}

// DecodeLabels reverses EncodeLabels. GetProfile decodes a member's every
// label on each call: the labels are read field by field here, without
// reflection, and their strings share one copy of b (a label with a time
// or a field EncodeLabels does not write is left to proto.Unmarshal).
func DecodeLabels(b []byte) ([]*mcv1.LabelValue, error) {
	if out, ok := decodeLabelsFast(b); ok {
		return out, nil
	}
	var lc mcv1.LabelsChanged
	if err := proto.Unmarshal(b, &lc); err != nil {
		return nil, fmt.Errorf("decode labels: %w", err)
	}
	return lc.GetLabels(), nil
}

// ProtoLabels renders labels in id order; at zero leaves their times unset.
func ProtoLabels(labels map[string]any, at time.Time) []*mcv1.LabelValue {
	ids := slices.Sorted(maps.Keys(labels))
	out := make([]*mcv1.LabelValue, 0, len(ids))
	for _, id := range ids {
		lv := &mcv1.LabelValue{LabelId: id}
		if !at.IsZero() {
			lv.ComputedAt = timestamppb.New(at)
		}
		SetProtoValue(lv, labels[id])
		out = append(out, lv)
	}
	return out
}

// UseCatalog puts a parsed catalogue in force in this process (tests, the
// backfill of a catalogue before it is loaded).
func (s *Service) UseCatalog(c *Catalog) { s.cat.Set(c) }

// decodeLabelsFast decodes what EncodeLabels writes: LabelsChanged's
// labels (field 1), each with its id (1), one value (2, 3 or 4) and
// cleared (5). ok is false for anything else, malformed input included.
func decodeLabelsFast(b []byte) (out []*mcv1.LabelValue, ok bool) {
	d := decoder{buf: b, shared: &shared{whole: string(b)}}
	var f, g field
	n := 0
	for d.next(&f) {
		n++
	}
	if d.err != nil {
		return nil, false
	}
	d = decoder{buf: b, shared: d.shared}
	labels := make([]mcv1.LabelValue, n)
	out = make([]*mcv1.LabelValue, 0, n)
	for d.next(&f) {
		if f.num != 1 || f.typ != protowire.BytesType {
			return nil, false
		}
		lv := &labels[len(out)]
		sub := d.msg(&f)
		for sub.next(&g) {
			switch {
			case g.num == 1 && g.typ == protowire.BytesType:
				lv.LabelId = sub.str(&g)
			case g.num == 2 && g.typ == protowire.VarintType:
				lv.Value = &mcv1.LabelValue_BoolValue{BoolValue: g.v != 0}
			case g.num == 3 && g.typ == protowire.BytesType:
				lv.Value = &mcv1.LabelValue_EnumValue{EnumValue: sub.str(&g)}
			case g.num == 4 && g.typ == protowire.Fixed64Type:
				lv.Value = &mcv1.LabelValue_NumberValue{NumberValue: math.Float64frombits(g.v)}
			case g.num == 5 && g.typ == protowire.VarintType:
				lv.Cleared = g.v != 0
			default:
				return nil, false
			}
		}
		if sub.err != nil || !utf8.ValidString(lv.LabelId) || !utf8.ValidString(lv.GetEnumValue()) {
			return nil, false
		}
		out = append(out, lv)
	}
	return out, d.err == nil
}
