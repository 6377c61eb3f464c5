package benefits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
)

var _ contract.BatchApplier = (*Service)(nil)

// batchOp is an operation of a batch: an event the programme acts on, or
// a call of a mutating RPC in a group (group.go).
type batchOp struct {
	i      int
	ev     *mcv1.MemberEvent // an event's
	call   *call             // a call's
	op     Op
	member uuid.UUID // resolved to; the member that absorbed it since, once locked
	ch     mcv1.Channel
	store  string
}

// Batch is a partition's batch of member events as the benefit stage
// reads them: the operations the programme in force makes of them, in
// order (PrepareBatch).
type Batch struct {
	p    *Program
	todo []batchOp
}

// Empty says whether the batch has nothing to apply.
func (b *Batch) Empty() bool { return b == nil || len(b.todo) == 0 }

// ApplyBatch applies a partition's batch of member events in one
// transaction: the events are marked processed at once (a redelivered one
// changes nothing), their members locked and loaded once (every kind of row
// for all members in one statement), each member's events applied in order,
// and every write of the batch sent in one round trip, one statement per
// kind of row. An event the programme refuses (more points redeemed than
// available, say) is recorded as processed, so it never blocks the member's
// later events, and refused as a data error with the programme's reason
// (the stage dead-letters it), as is one it cannot read.
func (s *Service) ApplyBatch(ctx context.Context, evs []*mcv1.MemberEvent) (map[int]error, error) {
	b, rejected := s.PrepareBatch(evs)
	if b.Empty() {
		return rejected, nil
	}
	return changes.ApplyBatch(ctx, rejected, s.InTx, func(tx pgx.Tx, refused map[int]error) error {
		return s.ApplyPrepared(ctx, tx, b, refused, nil)
	})
}

// PrepareBatch reads a batch of member events under the programme in
// force: it refuses, by index, those the stage cannot read (data errors),
// leaves out those the programme ignores and a redelivery within the
// batch, and keeps the operations of the others in order.
func (s *Service) PrepareBatch(evs []*mcv1.MemberEvent) (*Batch, map[int]error) {
	p := s.program()
	rejected := map[int]error{}
	b := &Batch{p: p}
	seen := map[string]bool{}
	for i, ev := range evs {
		resolved, err := uuid.Parse(ev.GetMemberId())
		if err != nil {
			rejected[i] = fault.Permanent(fmt.Errorf("member_id %q: %w", ev.GetMemberId(), err))
			continue
		}
		if err := checkMemberEvent(p, ev); err != nil {
			rejected[i] = fault.Permanent(err)
			continue
		}
		op, ok, err := OpFromEvent(p, ev)
		if err != nil {
			rejected[i] = err
			continue
		}
		if !ok || seen[ev.GetEventId()] { // ignored by the programme; a redelivery within the batch
			continue
		}
		seen[ev.GetEventId()] = true
		if op.Origin == "" {
			op.Origin = resolved.String()
		} else if _, err := uuid.Parse(op.Origin); err != nil {
			rejected[i] = fault.Permanent(fmt.Errorf("resolution.origin_member_id %q: %w", op.Origin, err))
			continue
		}
		b.todo = append(b.todo, batchOp{i: i, ev: ev, op: op, member: resolved, ch: ev.GetChannel(), store: ev.GetStoreId()})
	}
	return b, rejected
}

// ApplyPrepared applies a prepared batch in tx, as ApplyBatch does in its
// own transaction, adding the events it refuses to refused. With held,
// what the batch takes of the shared limits and its changes are added to
// held instead of written (see Held).
func (s *Service) ApplyPrepared(ctx context.Context, tx pgx.Tx, b *Batch, refused map[int]error, held *Held) error {
	if b.Empty() {
		return nil
	}
	todo, err := changes.Unprocessed(ctx, tx, Stage, b.todo, func(op batchOp) string { return op.ev.GetEventId() })
	if err != nil {
		return err
	}
	if len(todo) < len(b.todo) {
		if err := refuseAgain(ctx, tx, b.todo, todo, refused); err != nil {
			return err
		}
	}
	if len(todo) == 0 {
		return nil
	}
	w := postgres.NewLoyaltyWrites(b.p.Version)
	if err := s.applyOps(ctx, tx, w, held, b.p, todo, refused, nil); err != nil {
		return err
	}
	// Why an event was refused is kept with its processed mark, for a
	// redelivery (refuseAgain).
	refusals := map[string]string{}
	for _, op := range todo {
		if err := refused[op.i]; err != nil {
			refusals[op.ev.GetEventId()] = err.Error()
		}
	}
	if err := postgres.RecordRefusals(ctx, tx, Stage, refusals); err != nil {
		return err
	}
	held.hold(w)
	return s.flush(ctx, tx, w)
}

// refuseAgain refuses again the events of a batch delivered again (its
// offsets not committed) that the stage refused the first time: their
// dead letters, sent after the first transaction committed, were lost if
// the process died in between. A letter may so be sent twice, never not
// at all.
func refuseAgain(ctx context.Context, tx pgx.Tx, all, fresh []batchOp, refused map[int]error) error {
	isFresh := make(map[int]bool, len(fresh))
	for _, op := range fresh {
		isFresh[op.i] = true
	}
	var ids []string
	for _, op := range all {
		if !isFresh[op.i] {
			ids = append(ids, op.ev.GetEventId())
		}
	}
	stored, err := postgres.StoredRefusals(ctx, tx, Stage, ids)
	if err != nil {
		return err
	}
	for _, op := range all {
		if reason, ok := stored[op.ev.GetEventId()]; ok && !isFresh[op.i] {
			refused[op.i] = fault.Permanent(errors.New(reason))
		}
	}
	return nil
}

// InTx runs fn in a transaction, and again in a new one while it loses a
// race another transaction won (a unique key, a campaign budget, a
// serialization failure), up to five times.
func (s *Service) InTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.retryRaces(ctx, func() error { return pgx.BeginFunc(ctx, s.pool, fn) })
}

// applyOps locks and loads the members of todo (following merges) and
// applies each member's operations in order, members in id order, staging
// their writes in w. An operation the programme refuses is left out (see
// applyMember); a call's answer goes to answers. What one member takes of
// the shared limits (campaign budgets, coupon template totals) counts for
// the members after it, so a batch never spends a limit twice, and so
// does what the transaction holds unwritten in held (nil: nothing); a
// member's changes continue the sequence of those held.
func (s *Service) applyOps(ctx context.Context, tx pgx.Tx, w *postgres.LoyaltyWrites, held *Held, p *Program, todo []batchOp,
	refused map[int]error, answers map[int]proto.Message) error {
	rows, err := s.loadBatch(ctx, tx, p, todo)
	if err != nil {
		return err
	}
	// Each operation to the member it now belongs to; members in id order.
	byMember := map[uuid.UUID][]batchOp{}
	for _, b := range todo {
		byMember[b.member] = append(byMember[b.member], b)
	}
	members := slices.SortedFunc(maps.Keys(byMember), postgres.CompareMemberIDs)
	if err := s.addUsageAsOfLast(ctx, tx, p, rows, byMember); err != nil {
		return err
	}
	shared := sharedLimits{held: held}
	// The orders the members before recorded: order ids are unique across
	// members, and those are not written yet.
	taken := map[string]bool{}
	for _, m := range members {
		r := rows[m]
		if r == nil || !r.Found {
			for _, b := range byMember[m] {
				err := fmt.Errorf("member %s: %w", m, postgres.ErrNotFound)
				if b.call == nil {
					err = fault.Permanent(err)
				}
				refused[b.i] = err
			}
			continue
		}
		shared.lend(m, r)
		r.TakenOrders = taken
		before := len(w.NewOrders)
		st, err := s.applyMember(ctx, tx, w, p, m, r, byMember[m], refused, answers)
		if err != nil {
			return err
		}
		shared.took(st)
		for _, o := range w.NewOrders[before:] {
			taken[o.OrderID] = true
		}
	}
	return nil
}

// sharedLimits is what the members of one transaction have taken so far of
// the limits they share (campaign budgets, coupon template totals), so
// that a member applied after another sees what that one took and a
// transaction never spends a limit twice.
type sharedLimits struct {
	budgets map[string]int64
	issued  map[string]int
	held    *Held // taken and changed by the transaction's earlier phases, not written yet
}

// lend makes r, member m's loaded rows, read the shared counts as the
// members before it left them (the counts of the first load, with what
// the transaction holds unwritten, otherwise), and its change sequence
// continue the changes held of m.
func (l *sharedLimits) lend(m uuid.UUID, r *postgres.LoyaltyRows) {
	r.ChangeSeq = l.held.Outbox().Sequence(m, r.ChangeSeq)
	if l.budgets == nil {
		l.budgets, l.issued = maps.Clone(r.Budgets), maps.Clone(r.TplIssued)
		if l.held != nil {
			for c, sp := range l.held.budgets {
				l.budgets[c] += sp.Amount
			}
			for t, sp := range l.held.templates {
				l.issued[t] += int(sp.Amount)
			}
		}
	}
	r.Budgets, r.TplIssued = l.budgets, l.issued
}

// Held holds what a transaction's phases have taken of the limits members
// share (campaign budgets, coupon template totals) and the changes they
// made, until WriteHeld writes them, last before the commit.
//
// A shared counter's row stays locked from its write to the commit, and
// every batch that spends the same limit (each with a purchase in a
// birthday month, say) writes the same row: written with the benefit
// stage's other rows, it held the other partitions' batches through the
// label checks and the commit. The phases after the first read the shared
// counts with what is held added.
//
// The changes of all phases (the tag stage's, given Outbox, the benefit
// stage's and the label checks') go to the outbox in one insert, with one
// move of the members' sequences (postgres.HeldOutbox).
//
// A nil *Held holds nothing: the spends and changes are written with the
// other rows.
type Held struct {
	budgets, templates map[string]*postgres.Spend
	outbox             postgres.HeldOutbox
}

// NewHeld returns a Held that holds nothing yet (as a zero Held does: hold
// makes its maps).
func NewHeld() *Held { return &Held{} }

// Outbox is where the transaction's other phases hold their changes, for
// WriteHeld to write with the benefit phases'; nil for a nil l.
func (l *Held) Outbox() *postgres.HeldOutbox {
	if l == nil {
		return nil
	}
	return &l.outbox
}

// hold moves what w spends of the shared limits, and its changes, into l
// (when l is not nil). A limit is the latest phase's (a programme
// reloaded between two phases checks the whole spend against its own).
func (l *Held) hold(w *postgres.LoyaltyWrites) {
	if l == nil {
		return
	}
	move := func(into *map[string]*postgres.Spend, from map[string]*postgres.Spend) {
		if *into == nil {
			*into = map[string]*postgres.Spend{}
		}
		for k, sp := range from {
			if h := (*into)[k]; h != nil {
				h.Amount, h.Limit = h.Amount+sp.Amount, sp.Limit
			} else {
				(*into)[k] = &postgres.Spend{Amount: sp.Amount, Limit: sp.Limit}
			}
		}
		clear(from)
	}
	move(&l.budgets, w.Budgets)
	move(&l.templates, w.Templates)
	l.outbox.Hold(w.Outbox)
	w.Outbox = nil
}

// WriteHeld writes what held holds in tx (nothing for a nil one): the
// changes, then the shared counts, the last statement before the commit.
// A limit found used up meanwhile is errBudgetRace, which InTx retries
// with fresh counts.
func (s *Service) WriteHeld(ctx context.Context, tx pgx.Tx, held *Held) error {
	if held == nil {
		return nil
	}
	w := postgres.NewLoyaltyWrites(s.program().Version)
	maps.Copy(w.Budgets, held.budgets)
	maps.Copy(w.Templates, held.templates)
	b := &pgx.Batch{}
	held.outbox.Queue(b)
	return s.send(ctx, tx, b, w)
}

// took adds what st's operations took of the shared limits.
func (l *sharedLimits) took(st *State) {
	for c, v := range st.BudgetDelta {
		l.budgets[c] += v
	}
	for t, n := range st.TplDelta {
		l.issued[t] += n
	}
}

// loadBatch locks and loads the members of the batch, following merges:
// an operation of a member merged into another is applied to the survivor,
// which is loaded (again) for every operation it then has, so what it reads
// (campaign usage of their days, their orders, activity) covers them all.
func (s *Service) loadBatch(ctx context.Context, tx pgx.Tx, p *Program, todo []batchOp) (map[uuid.UUID]*postgres.LoyaltyRows, error) {
	rows, err := postgres.LoadLoyaltyBatch(ctx, tx, loadsOf(p, todo, s.eachLot))
	if err != nil {
		return nil, err
	}
	survivor := map[uuid.UUID]uuid.UUID{}
	gained := map[uuid.UUID]bool{}
	for k := range todo {
		r := rows[todo[k].member]
		if r == nil || !r.Merged {
			continue
		}
		to, ok := survivor[todo[k].member]
		if !ok {
			if to, err = postgres.CanonicalMember(ctx, tx, todo[k].member); err != nil {
				return nil, err
			}
			survivor[todo[k].member] = to
		}
		todo[k].member = to
		gained[to] = true
	}
	if len(gained) > 0 {
		var moved []batchOp
		for _, b := range todo {
			if gained[b.member] {
				moved = append(moved, b)
			}
		}
		more, err := postgres.LoadLoyaltyBatch(ctx, tx, loadsOf(p, moved, s.eachLot))
		if err != nil {
			return nil, err
		}
		maps.Copy(rows, more)
	}
	return rows, nil
}

// loadsOf says what to load of each member: activity from the year before
// its earliest event, campaign usage of every day and month its events fall
// in, the orders they name, and its open lots: one by one when an
// operation can change them other than by spending (lotsReadOf) or
// eachLotAlways, else the ones expiring by its operations' times, and,
// when a call is among them or they spend points, the ones pending at the
// first that become available by the last, the ones they may spend in
// spending order (as many as hold the points they spend together), and
// sums of the others.
func loadsOf(p *Program, ops []batchOp, eachLotAlways bool) []postgres.LoyaltyLoad {
	byMember := map[uuid.UUID]*postgres.LoyaltyLoad{}
	eachLot, withCall, spend := map[uuid.UUID]bool{}, map[uuid.UUID]bool{}, map[uuid.UUID]int64{}
	var order []uuid.UUID
	for _, b := range ops {
		l := byMember[b.member]
		if l == nil {
			l = &postgres.LoyaltyLoad{Member: b.member, Lock: true, ActivityFrom: int(monthOf(b.op.At, p.Location)) - 13, Labels: p.labels}
			byMember[b.member] = l
			order = append(order, b.member)
		}
		l.ActivityFrom = min(l.ActivityFrom, int(monthOf(b.op.At, p.Location))-13)
		for _, period := range periodsOf(p, b.op.At) {
			if !slices.Contains(l.Periods, period) {
				l.Periods = append(l.Periods, period)
			}
		}
		if b.op.OrderID != "" {
			l.Orders = append(l.Orders, b.op.OrderID)
		}
		// Lots one by one only for a member with an operation that can
		// change them other than by spending; otherwise those expiring by
		// its last operation, and with a call (its answer says how many
		// points are available) or a spending (which must know) those
		// pending at its first, the ones spent first, and sums of the
		// others.
		r := lotsReadOf(b.op)
		if eachLotAlways || r.each || b.op.At.IsZero() {
			eachLot[b.member] = true
		}
		spend[b.member] = min(spend[b.member], math.MaxInt64-r.spend) + r.spend // (saturating)
		if b.op.At.After(l.SettledAfter) {
			l.SettledAfter = b.op.At
		}
		if l.AvailableFrom.IsZero() || b.op.At.Before(l.AvailableFrom) {
			l.AvailableFrom = b.op.At
		}
		if b.call != nil {
			withCall[b.member] = true
		}
	}
	out := make([]postgres.LoyaltyLoad, len(order))
	for i, m := range order {
		out[i] = *byMember[m]
		switch {
		case eachLot[m]:
			out[i].SettledAfter, out[i].AvailableFrom = time.Time{}, time.Time{}
		case spend[m] > 0:
			out[i].SpendUpTo = spend[m]
		case !withCall[m]:
			out[i].AvailableFrom = time.Time{}
		}
	}
	return out
}

// applyMember applies a member's operations in order to its loaded state
// and stages their writes; it returns the state they left. An operation
// the programme refuses leaves no trace: the member's state is rebuilt and
// its other operations applied again without it. A call's answer is built
// from the state right after its operation, as if it ran alone; a call
// refused by the programme or by its answer (a refund of an unknown order)
// gets the error in refused, as it would alone.
func (s *Service) applyMember(ctx context.Context, tx pgx.Tx, w *postgres.LoyaltyWrites, p *Program, member uuid.UUID,
	rows *postgres.LoyaltyRows, ops []batchOp, refused map[int]error, answers map[int]proto.Message) (*State, error) {
	skip := map[int]bool{}
	for {
		st, err := toState(member, *rows, p)
		if err != nil {
			return nil, err
		}
		type applied struct {
			b    batchOp
			fx   *Effects
			lots []*Lot // the lots it created
		}
		var done []applied
		again := false
		created := map[*Lot]bool{}
		for _, b := range ops {
			if skip[b.i] {
				continue
			}
			fx, err := Engine{P: p}.Apply(st, b.op)
			var resp proto.Message
			if err == nil && b.call != nil {
				resp = b.call.empty()
				err = b.call.answer(st, fx, resp)
			}
			switch {
			case err != nil && b.call != nil:
				refused[b.i], skip[b.i], again = err, true, true
				delete(answers, b.i)
			case errors.Is(err, ErrInvalid), errors.Is(err, ErrOrderTaken):
				refused[b.i], skip[b.i], again = fault.Permanent(err), true, true
			case errors.Is(err, ErrRefused):
				// What the member's state refuses (a refund of more than
				// is left, points or a coupon the member does not have):
				// no retry can apply it, and the channel must hear of it.
				refused[b.i], skip[b.i], again = fault.Permanent(fmt.Errorf("%w: %w", ErrRefused, err)), true, true
			case err != nil:
				return nil, err
			default:
				var lots []*Lot
				for _, l := range st.Lots {
					if l.ID == 0 && !created[l] {
						created[l] = true
						lots = append(lots, l)
					}
				}
				done = append(done, applied{b, fx, lots})
				if resp != nil {
					answers[b.i] = resp
				}
			}
			if again {
				break
			}
		}
		if again {
			continue
		}
		for _, l := range st.Lots {
			if l.settled && l.dirty {
				// lotsReadOf let through an operation that changes them.
				return nil, fmt.Errorf("member %s: an operation changed the settled lots loaded as one sum", member)
			}
		}
		for _, a := range done {
			octx := contract.RecordContext(ctx, a.b.i) // an event's changes carry its record's trace
			if a.b.call != nil {                       // a call's, its request's
				octx = trace.ContextWithSpanContext(ctx, a.b.call.span)
			}
			if err := s.stageOp(octx, w, st, a.fx, a.b.op, a.b.ch, a.b.store, a.lots); err != nil {
				return nil, err
			}
		}
		s.stageState(w, st)
		return st, nil
	}
}

// addUsageAsOfLast adds to the loaded rows of every member an operation of
// the batch predates (on another day than the member's last operation) the
// campaign usage of the day and month of that last operation, which the
// engine's limits count from — for the whole batch in one statement.
func (s *Service) addUsageAsOfLast(ctx context.Context, tx pgx.Tx, p *Program, rows map[uuid.UUID]*postgres.LoyaltyRows, byMember map[uuid.UUID][]batchOp) error {
	var members []uuid.UUID
	var periods []string
	for m, ops := range byMember {
		r := rows[m]
		if r == nil || !r.Found || r.State == nil {
			continue
		}
		var head struct {
			Last time.Time `json:"last"`
		}
		if err := json.Unmarshal(r.State, &head); err != nil {
			return fmt.Errorf("loyalty state of %s: %w", m, err)
		}
		older := slices.ContainsFunc(ops, func(b batchOp) bool { return processedAtLast(p, head.Last, b.op.At) })
		if !older {
			continue
		}
		for _, period := range periodsOf(p, head.Last) {
			members, periods = append(members, m), append(periods, period)
		}
	}
	return postgres.AddCampaignUsage(ctx, tx, rows, members, periods)
}

// processedAtLast says whether an operation at t is processed at the
// member's last operation's time (§1: it is older, on another day), so
// that its campaign caps are those of last's day and month.
func processedAtLast(p *Program, last, t time.Time) bool {
	return last.After(t) && dayOf(last, p.Location) != dayOf(t, p.Location)
}

// periodsOf names the day and the month of t, as campaign usage counts them.
func periodsOf(p *Program, t time.Time) []string {
	return []string{fmt.Sprintf("d:%d", dayOf(t, p.Location)), fmt.Sprintf("m:%d", int(monthOf(t, p.Location)))}
}
