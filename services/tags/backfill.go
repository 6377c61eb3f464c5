package tags

import (
	"context"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"
)

// BackfillOptions tune a backfill.
type BackfillOptions struct {
	// Members per batch (one PostgreSQL transaction, one ClickHouse query).
	Batch int
	// Restart forgets the progress of an earlier run of this catalogue
	// version.
	Restart bool
	// Progress is called after every batch.
	Progress func(p BackfillProgress)
}

// BackfillProgress is where a backfill stands.
type BackfillProgress struct {
	Catalog string
	Done    int64 // members recomputed, over all runs of this version
	Total   int64 // active members
	Changed int64 // members whose labels changed
	Events  int64 // events read from ClickHouse in this run
	Resumed bool  // this run continued an interrupted one
	// AlreadyDone: this catalogue version was backfilled before; nothing
	// was done (Restart runs it again).
	AlreadyDone bool
	Elapsed     time.Duration
}

// Backfill recomputes every active member's features and labels from the
// event history in ClickHouse (member_events) with the catalogue in force:
// after a catalogue change, or to repair. Members are taken in id order and
// progress is stored with each batch's effects, so an interrupted backfill
// resumes where it stopped and a finished one does nothing until
// restarted; running it twice gives the same labels (label changes are
// written, with their outbox change, only where a value differs). Events
// the worker folded that have not reached ClickHouse yet are kept.
func (s *Service) Backfill(ctx context.Context, facts driver.Conn, o BackfillOptions) (BackfillProgress, error) {
	c := s.Catalog()
	if o.Batch <= 0 {
		o.Batch = 500
	}
	start := time.Now()
	p := BackfillProgress{Catalog: c.Version}
	if o.Restart {
		if err := postgres.RestartBackfill(ctx, s.pool, c.Version); err != nil {
			return p, err
		}
	}
	stored, err := postgres.StartBackfill(ctx, s.pool, c.Version)
	if err != nil {
		return p, err
	}
	last, done := stored.LastMember, stored.Done
	p.Done, p.Changed = stored.Members, stored.Changed
	p.Resumed = last != nil && !done
	if p.Total, err = postgres.CountActiveMembers(ctx, s.pool); err != nil {
		return p, err
	}
	if done {
		p.AlreadyDone, p.Elapsed = true, time.Since(start)
		return p, nil
	}
	after := uuid.Nil
	if last != nil {
		after = *last
	}
	for {
		ids, err := postgres.ActiveMembersAfter(ctx, s.pool, after, o.Batch)
		if err != nil {
			return p, err
		}
		if len(ids) == 0 {
			break
		}
		n, changed, events, err := s.backfillBatch(ctx, facts, ids)
		if err != nil {
			return p, err
		}
		after = ids[len(ids)-1]
		p.Done += int64(n)
		p.Changed += int64(changed)
		p.Events += int64(events)
		p.Elapsed = time.Since(start)
		if o.Progress != nil {
			o.Progress(p)
		}
	}
	if err := postgres.FinishBackfill(ctx, s.pool, c.Version); err != nil {
		return p, err
	}
	p.Elapsed = time.Since(start)
	return p, nil
}

// backfillBatch rebuilds one batch of members in one transaction, with the
// progress row.
func (s *Service) backfillBatch(ctx context.Context, facts driver.Conn, ids []uuid.UUID) (n, changed, events int, err error) {
	c := s.Catalog()
	return s.rebuild(ctx, facts, ids, "backfill:"+c.Version, func(tx pgx.Tx, n, changed int) error {
		return postgres.AdvanceBackfill(ctx, tx, c.Version, ids[len(ids)-1], n, changed)
	})
}

// RebuildFromHistory recomputes the members' features and labels from
// their event history in ClickHouse, in one transaction caused by cause, as
// a backfill does for a batch (events folded but not yet in ClickHouse are
// kept): after history was written to ClickHouse directly (a legacy
// import's orders). It returns the members rebuilt, those whose labels
// changed, and the events read.
func (s *Service) RebuildFromHistory(ctx context.Context, facts driver.Conn, ids []uuid.UUID, cause string) (n, changed, events int, err error) {
	return s.rebuild(ctx, facts, ids, cause, nil)
}

// rebuild is RebuildFromHistory, with also written in the transaction.
func (s *Service) rebuild(ctx context.Context, facts driver.Conn, ids []uuid.UUID, cause string, also func(tx pgx.Tx, n, changed int) error) (n, changed, events int, err error) {
	// Every member whose events now belong to a member of the batch: the
	// members merged into them, transitively.
	roots, err := postgres.FoldRoots(ctx, s.pool, ids)
	if err != nil {
		return 0, 0, 0, err
	}
	rootOf := map[string]uuid.UUID{}
	origins := make([]string, 0, len(roots))
	for m, root := range roots {
		rootOf[m.String()] = root
		origins = append(origins, m.String())
	}
	built := map[uuid.UUID]*State{}
	for _, id := range ids {
		built[id] = &State{}
	}
	fold := func(f Fact) {
		if root, ok := rootOf[f.Origin]; ok {
			built[root].Fold(f)
			events++
		}
	}
	// Events are stored under the member they were resolved to: an origin
	// never merged into another has all of its events under its own id,
	// which the table's key finds; otherwise every event is read.
	folded := make([]uuid.UUID, 0, len(roots))
	for m := range roots {
		folded = append(folded, m)
	}
	away, err := postgres.EverMergedAway(ctx, s.pool, folded)
	if err != nil {
		return 0, 0, 0, err
	}
	if len(away) == 0 {
		err = clickhouse.ReadHistoryStoredUnder(ctx, facts, origins, origins, func(e clickhouse.HistoryEvent) { fold(factFromHistory(e)) })
	} else {
		err = ReadHistory(ctx, facts, origins, fold)
	}
	if err != nil {
		return 0, 0, 0, err
	}
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		n, changed = 0, 0
		// Members in id order, as every writer locks them; their features
		// in one statement and their writes in one flush. A member merged
		// since the history was read is left out.
		sorted := slices.Clone(ids)
		slices.SortFunc(sorted, postgres.CompareMemberIDs)
		locked, err := postgres.LockMembersForUpdate(ctx, tx, sorted)
		if err != nil {
			return err
		}
		live := make([]uuid.UUID, 0, len(sorted))
		for _, id := range sorted {
			if l, ok := locked[id]; ok && l.MergedInto == nil {
				live = append(live, id)
			}
		}
		c, err := s.recomputeLocked(ctx, tx, live, locked, func(uuid.UUID) string { return cause }, mcv1.Channel_CHANNEL_BACKOFFICE, func(m *memberState) {
			st := cloneState(built[m.id])
			st.Keep(m.state)
			// What the stored labels were computed from, to compare with;
			// its window aggregates are not the rebuilt records' (stale:
			// they are built again from the records).
			st.snap = m.state.snap
			st.stale = true
			m.state = st
		})
		if err != nil {
			return err
		}
		n, changed = len(live), c
		if also != nil {
			return also(tx, n, changed)
		}
		return nil
	})
	return n, changed, events, err
}

func cloneState(s *State) *State {
	out := &State{Life: map[string]*Lifetime{}}
	for _, p := range s.Purchases {
		cp := *p
		out.Purchases = append(out.Purchases, &cp)
	}
	out.Acts = append(out.Acts, s.Acts...)
	for k, v := range s.Life {
		cp := *v
		out.Life[k] = &cp
	}
	return out
}

// ReadHistory streams the events of the given origin members from
// ClickHouse in time order, as facts.
func ReadHistory(ctx context.Context, facts driver.Conn, origins []string, fn func(Fact)) error {
	return clickhouse.ReadHistory(ctx, facts, origins, func(e clickhouse.HistoryEvent) {
		fn(factFromHistory(e))
	})
}

// factFromHistory is the tag engine's view of a stored event.
func factFromHistory(e clickhouse.HistoryEvent) Fact {
	f := Fact{EventID: e.EventID, Kind: e.EventType, Channel: e.Channel, Store: e.StoreID, At: e.OccurredAt, Origin: e.Origin,
		OrderID: e.OrderID, Amount: e.AmountMinor, Discount: e.DiscountMinor, PointsRedeemed: e.PointsRedeemed,
		Coupons: e.CouponCount, Rating: e.ReviewRating}
	if f.Kind == KindRefund { // facts store a refund's total as a negative amount
		f.Amount = -f.Amount
	}
	for _, it := range e.Items {
		f.Items = append(f.Items, Item{Category: it.Category, Brand: it.Brand, Quantity: int64(it.Quantity), Amount: it.AmountMinor})
	}
	return f
}
