package identity

import (
	"context"
	"errors"
	"maps"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
)

var _ contract.BatchResolver = (*Service)(nil)

// ResolveEvents resolves a partition's events in order, as ResolveEvent
// would one by one. One lookup answers every run of events that change
// nothing in the identity graph: an event seen before gets its first
// answer, and one whose identifiers all belong, uniquely, to one member only
// records its resolution, all of them in one statement at the end. The
// events that link, create, merge or refuse take ResolveEvent's
// transactional path, gathered into one transaction (a group) while the
// events between them share no identifier and no member with them: a
// promotion's stream of first-time shoppers is a transaction per group, not
// per shopper. An event that shares one waits for the group to commit and is
// looked up again, so that each sees what the events before it did. A
// redelivery of an event within the batch gets the same answer.
//
// When an event's resolution fails (not a data error), the events after it
// answer errNotAttempted, to be tried again one by one; in a group, the
// group's first event fails with it.
func (s *Service) ResolveEvents(ctx context.Context, evs []*mcv1.ChannelEvent) ([]contract.Resolution, []error) {
	b := &eventBatch{evs: evs, out: make([]contract.Resolution, len(evs)), errs: make([]error, len(evs)),
		ids: make([][]Normalized, len(evs)), usable: make([][]Normalized, len(evs)), referees: make([]*Normalized, len(evs)), fps: make([][]byte, len(evs)), seen: map[string]int{},
		grouped: map[string]bool{}, groupMembers: map[uuid.UUID]bool{}}
	for i, ev := range evs {
		b.ids[i], b.referees[i], b.errs[i] = s.prepareEvent(ev)
		b.fps[i] = s.fingerprint(ev)
		b.usable[i] = slices.DeleteFunc(slices.Clone(b.ids[i]), func(n Normalized) bool { return s.rules.Blocked(n.Type, n.Value) })
	}
	failed := len(evs)
	// flush resolves the group waiting for its transaction; false when it
	// failed.
	flush := func() bool {
		if f := s.resolveGroup(ctx, b); f >= 0 {
			failed = f
			return false
		}
		return true
	}
loop:
	for i := 0; i < len(evs); {
		// A lookup sees what the group before it wrote.
		if !flush() {
			break
		}
		w, err := s.lookup(ctx, b, i)
		if err != nil {
			b.errs[i], failed = err, i
			break
		}
		// The window's lookup answers its events; an event that needs the
		// transactional path joins the group, and the lookup still answers
		// the events after it that share no identifier and no member with
		// the group. The first that does is looked up again, after the
		// group's transaction.
		for i < w.end {
			j, slow, err := s.answer(b, w, i)
			if err != nil {
				if flush() {
					b.errs[j], failed = err, j
				}
				break loop
			}
			if !slow {
				i = j
				break
			}
			w.join(b, j)
			if len(b.group) == maxGroup && !flush() {
				break loop
			}
			i = j + 1
		}
	}
	if failed == len(evs) {
		flush()
	}
	// An answer after the event that failed waits with the events after it.
	for n, at := range b.pendingAt {
		if at > failed {
			b.pending, b.pendingAt = b.pending[:n], b.pendingAt[:n]
			break
		}
	}
	if err := s.recordPending(ctx, b); err != nil {
		// Nothing the lookups answered is recorded: from the first of them
		// on, the events wait.
		failed = min(failed, b.pendingAt[0])
		b.errs[failed] = err
	}
	for k := failed + 1; k < len(evs); k++ {
		if b.errs[k] == nil || !fault.IsData(b.errs[k]) {
			b.out[k], b.errs[k] = contract.Resolution{}, errNotAttempted
		}
	}
	if failed < len(evs) {
		b.out[failed] = contract.Resolution{}
	}
	return b.out, b.errs
}

// maxGroup is how many events one transaction of the transactional path
// resolves at most: enough to share its round trips and commit, few enough
// that the identifiers it locks are not held long.
const maxGroup = 32

// errRefusedInGroup rolls back a group's transaction in which an event was
// refused (a data error), so that the others are resolved again without
// what it wrote.
var errRefusedInGroup = errors.New("an event of the group was refused")

// resolveGroup resolves the group's events in one transaction, in order,
// and empties the group. Every usable identifier of the group (see
// eventBatch.usable) is locked first, in one statement and a fixed order,
// as one event's are, then the members holding them, in id order, and the
// events' first answers looked for, all in one round trip. An event
// refused as a data error is answered with its refusal and the others
// resolved again without it, in a new transaction (the refusal rolled back
// what it wrote). It returns the group's first event when the transaction
// failed otherwise (its error on it: the group's answers are unknown),
// else -1.
func (s *Service) resolveGroup(ctx context.Context, b *eventBatch) int {
	todo := b.group
	members := slices.SortedFunc(maps.Keys(b.groupMembers), postgres.CompareMemberIDs)
	b.group = nil
	clear(b.grouped)
	clear(b.groupMembers)
	for len(todo) > 0 {
		out := make([]contract.Resolution, len(todo))
		refused, refusal := -1, error(nil)
		var keys []postgres.IdentifierKey
		eventIDs := make([]string, len(todo))
		for k, j := range todo {
			eventIDs[k] = b.evs[j].GetEventId()
			for _, n := range b.usable[j] {
				keys = append(keys, keyOf(n))
			}
		}
		err := postgres.PipelinedTx(ctx, s.pool, func(tx pgx.Tx) error {
			refused = -1
			if err := postgres.LockIdentifiers(ctx, tx, keys); err != nil {
				return err
			}
			// The members the group may write, at once and in id order, as
			// the member stage takes them: taken one by one as its events
			// need them, two of them could be held in the opposite order by
			// a stage's batch, each transaction waiting for the other.
			if err := postgres.LockMemberRows(ctx, tx, members); err != nil {
				return err
			}
			// First answers recorded meanwhile (a partition that moved
			// between instances), for the whole group at once.
			prev, err := postgres.GetIngestedEvents(ctx, tx, eventIDs)
			if err != nil {
				return err
			}
			for k, j := range todo {
				var r contract.Resolution
				var err error
				if p, ok := prev[eventIDs[k]]; ok {
					r, err = firstAnswer(b.evs[j], b.fps[j], b.ids[j], p)
				} else {
					r, err = s.resolveNewEventTx(contract.RecordContext(ctx, j), tx, b.evs[j], b.ids[j], b.referees[j])
				}
				if fault.IsData(err) {
					refused, refusal = k, err
					return errRefusedInGroup
				}
				if err != nil {
					return err
				}
				out[k] = r
			}
			return nil
		})
		switch {
		case refused >= 0 && errors.Is(err, errRefusedInGroup):
			b.errs[todo[refused]] = refusal
			todo = slices.Delete(slices.Clone(todo), refused, refused+1)
			continue
		case err != nil:
			b.errs[todo[0]] = err
			return todo[0]
		}
		for k, j := range todo {
			b.out[j] = out[k]
			b.seen[b.evs[j].GetEventId()] = j
		}
		return -1
	}
	return -1
}

// eventBatch is a partition's events, their normalised identifiers and
// referees, and the answers: the events answered so far by event id, and
// the resolutions the lookups answered, not yet recorded.
type eventBatch struct {
	evs []*mcv1.ChannelEvent
	ids [][]Normalized
	// usable are each event's identifiers but those the rules block: a
	// blocked value is ignored and never stored, so a group neither locks
	// it nor waits for another group that met it (a till's placeholder
	// phone, in a hundredth of the POS visits).
	usable    [][]Normalized
	referees  []*Normalized
	fps       [][]byte // fingerprints
	out       []contract.Resolution
	errs      []error
	seen      map[string]int
	pending   []postgres.IngestedEvent
	pendingAt []int
	// group is the events waiting for the transactional path, in order,
	// grouped their event ids, and groupMembers the members that held
	// their unique identifiers when they were looked up (those they may
	// write: link to, merge).
	group        []int
	grouped      map[string]bool
	groupMembers map[uuid.UUID]bool
}

// lookupWindow is how many events one lookup covers at most.
const lookupWindow = 128

// errNotAttempted is the answer for the events after one whose resolution
// failed (not for a data error): they are resolved once it is.
var errNotAttempted = errors.New("not resolved yet: an earlier event of the partition failed")

// recordPending records the resolutions the lookups answered, in one
// statement. An event a concurrent ingest recorded first (a partition
// moving between instances) gets that first answer.
func (s *Service) recordPending(ctx context.Context, b *eventBatch) error {
	if len(b.pending) == 0 {
		return nil
	}
	inserted, err := postgres.InsertIngestedEvents(ctx, s.pool, b.pending)
	if err != nil {
		return err
	}
	for n, p := range b.pending {
		if inserted[p.EventID] {
			continue
		}
		j := b.pendingAt[n]
		prev, err := postgres.GetIngestedEvent(ctx, s.pool, p.EventID)
		if err != nil {
			return err
		}
		for k := j; k < len(b.evs); k++ {
			if b.evs[k].GetEventId() == p.EventID && b.errs[k] == nil {
				b.out[k], b.errs[k] = firstAnswer(b.evs[k], b.fps[k], b.ids[k], prev)
				if b.errs[k] != nil && !fault.IsData(b.errs[k]) {
					return b.errs[k]
				}
			}
		}
	}
	return nil
}

// window is one lookup's answers for the events from its start to end:
// the first answers of events seen before and the identifiers' rows; and
// what the events that joined the group since may touch (their
// identifiers and the members those belong to), for which its answers are
// stale.
type window struct {
	end          int
	prev         map[string]postgres.IngestedEvent
	byHash       map[string][]postgres.IdentifierRow
	dirtyHashes  map[string]bool
	dirtyMembers map[uuid.UUID]bool
}

// lookup looks up the events of a window from i on: their event ids
// (answered before?) and identifiers, in one round trip.
func (s *Service) lookup(ctx context.Context, b *eventBatch, i int) (*window, error) {
	// A window, not the rest of the batch: an event that touches what a
	// later one needs makes the later one look up again, so a batch with
	// many of them would otherwise look up the same events many times.
	w := &window{end: min(len(b.evs), i+lookupWindow), prev: map[string]postgres.IngestedEvent{},
		byHash: map[string][]postgres.IdentifierRow{}, dirtyHashes: map[string]bool{}, dirtyMembers: map[uuid.UUID]bool{}}
	var eventIDs []string
	var keys []postgres.IdentifierKey
	for k := i; k < w.end; k++ {
		if _, ok := b.seen[b.evs[k].GetEventId()]; b.errs[k] == nil && !ok {
			eventIDs = append(eventIDs, b.evs[k].GetEventId())
			for _, n := range b.ids[k] {
				keys = append(keys, keyOf(n))
			}
		}
	}
	if len(eventIDs) == 0 {
		return w, nil
	}
	prev, found, err := postgres.LookupIngestBatch(ctx, s.pool, eventIDs, keys)
	if err != nil {
		return nil, err
	}
	w.prev = prev
	for _, f := range found {
		w.byHash[string(f.Hash)] = append(w.byHash[string(f.Hash)], f)
	}
	return w, nil
}

// join adds event j to the group waiting for the transactional path and
// marks what it may touch: its identifiers and the members that hold them
// (whatever it creates, links or merges is among these or new), the
// holders of its unique identifiers among the members the group locks
// (those it may write: link to, merge; a store tablet's device id may have
// thousands of holders, none of them written).
func (w *window) join(b *eventBatch, j int) {
	b.group = append(b.group, j)
	b.grouped[b.evs[j].GetEventId()] = true
	for _, n := range b.usable[j] {
		w.dirtyHashes[string(n.Hash)] = true
		for _, r := range w.byHash[string(n.Hash)] {
			w.dirtyMembers[r.MemberID] = true
			if r.Unique {
				b.groupMembers[r.MemberID] = true
			}
		}
	}
}

// stale says whether the window's rows of event k's identifiers may have
// changed since its lookup.
func (w *window) stale(b *eventBatch, k int) bool {
	for _, n := range b.usable[k] {
		if w.dirtyHashes[string(n.Hash)] {
			return true
		}
		for _, r := range w.byHash[string(n.Hash)] {
			if w.dirtyMembers[r.MemberID] {
				return true
			}
		}
	}
	return false
}

// answer answers the window's events from i on that its lookup can, and
// returns where it stopped: at an event that needs the transactional path
// (slow), at one whose answer the window no longer knows (to be looked up
// again), or at the window's end.
func (s *Service) answer(b *eventBatch, w *window, i int) (next int, slow bool, err error) {
	j := i
	for ; j < w.end; j++ {
		if b.errs[j] != nil {
			continue
		}
		ev := b.evs[j]
		if b.grouped[ev.GetEventId()] {
			return j, false, nil // a redelivery of a grouped event: answered once the group is
		}
		if k, ok := b.seen[ev.GetEventId()]; ok {
			if b.errs[j] = sameEvent(ev, b.fps[j], b.fps[k]); b.errs[j] == nil {
				b.out[j] = contract.Resolution{MemberID: b.out[k].MemberID, Identifiers: Refs(b.ids[j]), Detail: b.out[k].Detail}
			}
			continue
		}
		if p, ok := w.prev[ev.GetEventId()]; ok {
			r, err := firstAnswer(ev, b.fps[j], b.ids[j], p)
			switch {
			case fault.IsData(err):
				b.errs[j] = err
			case err != nil:
				return j, false, err
			default:
				b.out[j] = r
				b.seen[ev.GetEventId()] = j
			}
			continue
		}
		if w.stale(b, j) {
			return j, false, nil
		}
		member, origin, ok := s.knownMember(ev, b.ids[j], w.byHash)
		if !ok {
			return j, true, nil
		}
		detail := &mcv1.Resolution{OriginMemberId: origin.String()}
		stored, err := proto.MarshalOptions{Deterministic: true}.Marshal(detail)
		if err != nil {
			return j, false, err
		}
		b.pending = append(b.pending, postgres.IngestedEvent{EventID: ev.GetEventId(), MemberID: member, Resolution: stored, Fingerprint: b.fps[j]})
		b.pendingAt = append(b.pendingAt, j)
		b.out[j] = contract.Resolution{MemberID: member.String(), Identifiers: Refs(b.ids[j]), Detail: detail}
		b.seen[ev.GetEventId()] = j
	}
	return j, false, nil
}

// knownMember is the member an event's identifiers belong to when
// resolving it would change nothing in the graph, and the origin of its
// best identifier; ok is false when it would create, link, merge or refuse
// (an unknown or blocked identifier, a unique identifier of another
// member, an identifier the member does not hold yet, a referral to
// check). As resolve decides: the member holding a unique identifier of
// the event is the match every shared one (a store tablet's device id,
// held by several members) ranks below, shared identifiers merge nothing,
// and one the member already holds links nothing, so an event from a
// shared device its shopper has used before takes this path too.
func (s *Service) knownMember(ev *mcv1.ChannelEvent, ids []Normalized, byHash map[string][]postgres.IdentifierRow) (member, origin uuid.UUID, ok bool) {
	if ev.GetReferral().GetReferee() != nil {
		return uuid.Nil, uuid.Nil, false
	}
	rowsOf := func(n Normalized) []postgres.IdentifierRow {
		var out []postgres.IdentifierRow
		for _, r := range byHash[string(n.Hash)] {
			if r.Type == int16(n.Type) && r.Scope == n.Scope {
				out = append(out, r)
			}
		}
		return out
	}
	for _, n := range ids {
		if s.rules.Blocked(n.Type, n.Value) {
			return uuid.Nil, uuid.Nil, false
		}
		for _, r := range rowsOf(n) {
			if r.Unique {
				if member != uuid.Nil && r.MemberID != member {
					return uuid.Nil, uuid.Nil, false // two members: a merge or a conflict
				}
				member = r.MemberID
			}
		}
	}
	if member == uuid.Nil {
		return uuid.Nil, uuid.Nil, false
	}
	var best *postgres.IdentifierRow
	for _, n := range ids {
		var held *postgres.IdentifierRow
		for _, r := range rowsOf(n) {
			if r.MemberID == member {
				held = &r
			}
		}
		if held == nil {
			return uuid.Nil, uuid.Nil, false // to be linked (or refused by a limit)
		}
		// The strongest identifier, then the latest link, as in resolve.
		if best == nil || s.better(match{member: member, id: Normalized{Type: mcv1.IdentifierType(held.Type)}, unique: held.Unique, linkedAt: held.LinkedAt},
			match{member: member, id: Normalized{Type: mcv1.IdentifierType(best.Type)}, unique: best.Unique, linkedAt: best.LinkedAt}) {
			best = held
		}
	}
	return member, best.OriginMemberID, true
}
