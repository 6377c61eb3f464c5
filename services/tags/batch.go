package tags

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
)

var _ contract.BatchApplier = (*Service)(nil)

// batchEvent is an event of a batch that can be applied.
type batchEvent struct {
	i       int
	ev      *mcv1.MemberEvent
	fact    Fact
	member  uuid.UUID
	devices []string
}

// Batch is a partition's batch of member events as the tag stage reads
// them: the events it can apply, in order (PrepareBatch).
type Batch struct {
	todo []batchEvent
	// kept are the states the last attempt stored, for the state cache
	// once its transaction committed (Committed).
	kept []keptState
}

// Empty says whether the batch has nothing to apply.
func (b *Batch) Empty() bool { return b == nil || len(b.todo) == 0 }

// Without is the batch without the events of the indexes in skip (another
// stage refused them in the same transaction).
func (b *Batch) Without(skip map[int]bool) *Batch {
	out := &Batch{}
	for _, be := range b.todo {
		if !skip[be.i] {
			out.todo = append(out.todo, be)
		}
	}
	return out
}

// ApplyBatch applies a partition's batch of member events in one
// transaction: the events are marked processed at once (a redelivered one
// changes nothing), their members locked (in id order) and loaded once, each
// member's events folded in order, its labels evaluated once for the batch,
// and every member's writes sent in one round trip with one statement per
// kind of row. A label change is attributed to the member's last event of
// the batch.
func (s *Service) ApplyBatch(ctx context.Context, evs []*mcv1.MemberEvent) (map[int]error, error) {
	b, rejected := s.PrepareBatch(evs)
	if b.Empty() {
		return rejected, nil
	}
	inTx := func(ctx context.Context, fn func(pgx.Tx) error) error { return postgres.RetryTx(ctx, s.pool, fn) }
	rejected, err := changes.ApplyBatch(ctx, rejected, inTx, func(tx pgx.Tx, refused map[int]error) error {
		_, err := s.ApplyPrepared(ctx, tx, b, refused, nil)
		return err
	})
	if err == nil {
		s.Committed(b)
	}
	return rejected, err
}

// Committed tells the service that the transaction of b's last
// ApplyPrepared committed: the states it stored may serve the next batches
// (the state cache). Without it they are read again from PostgreSQL.
func (s *Service) Committed(b *Batch) {
	if b == nil {
		return
	}
	s.states.put(b.kept)
	b.kept = nil
}

// PrepareBatch reads a batch of member events: it refuses, by index, those
// the stage cannot read (data errors) and keeps the others in order,
// without a redelivery within the batch.
func (s *Service) PrepareBatch(evs []*mcv1.MemberEvent) (*Batch, map[int]error) {
	rejected := map[int]error{}
	b := &Batch{}
	seen := map[string]bool{}
	for i, ev := range evs {
		resolved, err := uuid.Parse(ev.GetMemberId())
		if err != nil {
			rejected[i] = fault.Permanent(fmt.Errorf("member_id %q: %w", ev.GetMemberId(), err))
			continue
		}
		f := FactFromEvent(ev)
		if f.Kind == "" {
			rejected[i] = fault.Permanent(fmt.Errorf("member event %s has no payload", ev.GetEventId()))
			continue
		}
		if _, err := uuid.Parse(f.Origin); err != nil {
			rejected[i] = fault.Permanent(fmt.Errorf("resolution.origin_member_id %q: %w", f.Origin, err))
			continue
		}
		if seen[ev.GetEventId()] { // a redelivery within the batch
			continue
		}
		seen[ev.GetEventId()] = true
		be := batchEvent{i: i, ev: ev, fact: f, member: resolved}
		for _, id := range ev.GetIdentifiers() {
			if id.GetType() == mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID && id.GetValueHash() != "" {
				be.devices = append(be.devices, id.GetValueHash())
			}
		}
		b.todo = append(b.todo, be)
	}
	return b, rejected
}

// ApplyPrepared applies a prepared batch in tx, as ApplyBatch does in its
// own transaction, adding the events it refuses to rejected. It returns the
// members it changed (an event's member, or the one that absorbed it), in
// id order, locked until tx ends. With outbox, the changes are held there
// (numbered after what it holds) for the transaction to write later.
func (s *Service) ApplyPrepared(ctx context.Context, tx pgx.Tx, b *Batch, rejected map[int]error, outbox *postgres.HeldOutbox) ([]uuid.UUID, error) {
	if b.Empty() {
		return nil, nil
	}
	b.kept = nil // an earlier attempt's states were not committed
	todo, err := changes.Unprocessed(ctx, tx, Stage, b.todo, func(be batchEvent) string { return be.ev.GetEventId() })
	if err != nil {
		return nil, err
	}
	if len(todo) == 0 {
		return nil, nil
	}
	// Each event goes to the member it was resolved to, or to the one that
	// absorbed that member since.
	members, err := s.lockMembers(ctx, tx, todo, rejected)
	if err != nil {
		return nil, err
	}
	order := make([]uuid.UUID, 0, len(members))
	var seen []postgres.DeviceSighting
	for id, m := range members {
		m.changeSeq = outbox.Sequence(id, m.changeSeq)
		order = append(order, id)
		for _, d := range m.devices {
			seen = append(seen, postgres.DeviceSighting{Member: id, Device: d})
		}
	}
	slices.SortFunc(order, postgres.CompareMemberIDs)
	// States this stage stored last are taken out of the cache: used if
	// their rows are still the ones stored, dropped otherwise.
	cached := map[uuid.UUID]*State{}
	known := map[uuid.UUID]uint32{}
	for _, id := range order {
		if e, ok := s.states.take(id); ok {
			cached[id], known[id] = e.state, e.xmin
		}
	}
	rows, err := postgres.LoadFeaturesBatch(ctx, tx, order, seen, known)
	if err != nil {
		return nil, err
	}
	writes := make([]*memberWrite, 0, len(order))
	for _, id := range order {
		m := members[id]
		row := rows[id]
		var st *State
		if row.Unchanged {
			st = cached[id]
		}
		if err := m.takeCached(row, st); err != nil {
			return nil, err
		}
		if s.states != nil && row.Exists {
			if row.Unchanged {
				s.states.hits.Add(1)
			} else {
				s.states.misses.Add(1)
			}
		}
		var last *mcv1.MemberEvent
		lastAt := -1
		for _, be := range m.events {
			if su := be.ev.GetSignUp(); su != nil {
				s.fillAttributes(m.memberState, su, be.ev)
			}
			m.state.Fold(be.fact)
			last, lastAt = be.ev, be.i
		}
		r, err := s.evaluate(ctx, tx, m.memberState)
		if err != nil {
			return nil, err
		}
		// The member's change continues the trace of its last event.
		w, err := s.stage(contract.RecordContext(ctx, lastAt), m.memberState, r, last.GetEventId(), last.GetChannel(), last.GetStoreId())
		if err != nil {
			return nil, err
		}
		writes = append(writes, w)
	}
	xmins, err := s.flush(ctx, tx, writes, outbox)
	if err != nil {
		return nil, err
	}
	if s.states != nil {
		for _, w := range writes {
			if x, ok := xmins[w.m.id]; ok {
				b.kept = append(b.kept, keptState{member: w.m.id,
					cachedState: cachedState{xmin: x, state: w.m.state, size: decodedSize(w.m.state.storedSize(w.features))}})
			}
		}
	}
	return order, nil
}

// storedSize is the size of s as f stores it, its kept base included.
func (s *State) storedSize(f postgres.FeaturesWrite) int {
	if f.KeepState && s.base != nil {
		return s.base.bytes + len(f.Tail)
	}
	return len(f.State) + len(f.Tail)
}

// batchMember is a member of a batch with its events, in batch order.
type batchMember struct {
	*memberState
	events []batchEvent
}

// lockMembers locks the batch's members, following merges, and groups the
// events by the member they now belong to. An event whose member does not
// exist is refused.
func (s *Service) lockMembers(ctx context.Context, tx pgx.Tx, todo []batchEvent, rejected map[int]error) (map[uuid.UUID]*batchMember, error) {
	want := make([]uuid.UUID, 0, len(todo))
	for _, be := range todo {
		want = append(want, be.member)
	}
	locked, err := postgres.LockMembersForUpdate(ctx, tx, want)
	if err != nil {
		return nil, err
	}
	// Merged members are rare: each is followed to its survivor, whose row
	// is locked in turn.
	canonical := map[uuid.UUID]uuid.UUID{}
	for id, l := range locked {
		if l.MergedInto == nil {
			canonical[id] = id
			continue
		}
		to, err := postgres.CanonicalMember(ctx, tx, id)
		if err != nil {
			return nil, err
		}
		canonical[id] = to
		if _, ok := locked[to]; !ok {
			more, err := postgres.LockMembersForUpdate(ctx, tx, []uuid.UUID{to})
			if err != nil {
				return nil, err
			}
			if l, ok := more[to]; ok {
				locked[to] = l
			}
		}
	}
	out := map[uuid.UUID]*batchMember{}
	for _, be := range todo {
		to, ok := canonical[be.member]
		l, found := locked[to]
		if !ok || !found {
			rejected[be.i] = fault.Permanent(fmt.Errorf("member %s: %w", be.member, postgres.ErrNotFound))
			continue
		}
		m := out[to]
		if m == nil {
			m = &batchMember{memberState: &memberState{id: to, attrs: l.Attributes, changeSeq: l.ChangeSeq,
				profiling: true, state: &State{}}}
			out[to] = m
		}
		m.events = append(m.events, be)
		m.devices = append(m.devices, be.devices...)
	}
	return out, nil
}
