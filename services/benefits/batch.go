package benefits

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
)

var _ contract.BatchApplier = (*Service)(nil)

// batchOp is an event of a batch the programme acts on.
type batchOp struct {
	i      int
	ev     *mcv1.MemberEvent
	op     Op
	member uuid.UUID // resolved to; the member that absorbed it since, once locked
}

// ApplyBatch applies a partition's batch of member events in one
// transaction: the events are marked processed at once (a redelivered one
// changes nothing), their members locked and loaded once (every kind of row
// for all members in one statement), each member's events applied in order,
// and every write of the batch sent in one round trip, one statement per
// kind of row. An event the programme refuses (more points redeemed than
// available, say) is recorded as processed and logged, so it never blocks
// the member's later events; one it cannot read is refused as a data error.
func (s *Service) ApplyBatch(ctx context.Context, evs []*mcv1.MemberEvent) (map[int]error, error) {
	p := s.program()
	rejected := map[int]error{}
	var todo []batchOp
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
		todo = append(todo, batchOp{i: i, ev: ev, op: op, member: resolved})
	}
	if len(todo) == 0 {
		return rejected, nil
	}
	var refused map[int]error // by the transaction (an attempt's own)
	err := s.retryRaces(ctx, func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			refused = map[int]error{}
			return s.applyBatch(ctx, tx, p, todo, refused)
		})
	})
	if err != nil {
		return nil, err
	}
	maps.Copy(rejected, refused)
	return rejected, nil
}

func (s *Service) applyBatch(ctx context.Context, tx pgx.Tx, p *Program, todo []batchOp, refused map[int]error) error {
	ids := make([]string, len(todo))
	for i, b := range todo {
		ids[i] = b.ev.GetEventId()
	}
	fresh, err := postgres.MarkProcessedBatch(ctx, tx, Stage, ids)
	if err != nil {
		return err
	}
	todo = slices.DeleteFunc(slices.Clone(todo), func(b batchOp) bool { return !fresh[b.ev.GetEventId()] })
	if len(todo) == 0 {
		return nil
	}
	rows, err := s.loadBatch(ctx, tx, p, todo)
	if err != nil {
		return err
	}
	// Each event to the member it now belongs to; members in id order.
	byMember := map[uuid.UUID][]batchOp{}
	for _, b := range todo {
		byMember[b.member] = append(byMember[b.member], b)
	}
	members := slices.SortedFunc(maps.Keys(byMember), func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
	w := postgres.NewLoyaltyWrites(p.Version)
	for _, m := range members {
		r := rows[m]
		if r == nil || !r.Found {
			for _, b := range byMember[m] {
				refused[b.i] = fault.Permanent(fmt.Errorf("member %s: %w", m, postgres.ErrNotFound))
			}
			continue
		}
		if err := s.applyMember(ctx, tx, w, p, m, r, byMember[m], refused); err != nil {
			return err
		}
	}
	return s.flush(ctx, tx, w)
}

// loadBatch locks and loads the members of the batch, following merges:
// an event of a member merged into another is applied to the survivor.
func (s *Service) loadBatch(ctx context.Context, tx pgx.Tx, p *Program, todo []batchOp) (map[uuid.UUID]*postgres.LoyaltyRows, error) {
	rows, err := postgres.LoadLoyaltyBatch(ctx, tx, loadsOf(p, todo))
	if err != nil {
		return nil, err
	}
	var moved []batchOp
	for k := range todo {
		r := rows[todo[k].member]
		if r == nil || !r.Merged {
			continue
		}
		to, err := postgres.CanonicalMember(ctx, tx, todo[k].member)
		if err != nil {
			return nil, err
		}
		todo[k].member = to
		if rows[to] == nil {
			moved = append(moved, todo[k])
		}
	}
	if len(moved) > 0 {
		more, err := postgres.LoadLoyaltyBatch(ctx, tx, loadsOf(p, moved))
		if err != nil {
			return nil, err
		}
		maps.Copy(rows, more)
	}
	return rows, nil
}

// loadsOf says what to load of each member: activity from the year before
// its earliest event, campaign usage of every day and month its events fall
// in, the orders they name.
func loadsOf(p *Program, ops []batchOp) []postgres.LoyaltyLoad {
	byMember := map[uuid.UUID]*postgres.LoyaltyLoad{}
	var order []uuid.UUID
	for _, b := range ops {
		l := byMember[b.member]
		if l == nil {
			l = &postgres.LoyaltyLoad{Member: b.member, Lock: true, ActivityFrom: int(monthOf(b.op.At, p.Location)) - 13}
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
	}
	out := make([]postgres.LoyaltyLoad, len(order))
	for i, m := range order {
		out[i] = *byMember[m]
	}
	return out
}

// applyMember applies a member's events in order to its loaded state and
// stages their writes. An event the programme refuses leaves no trace: the
// member's state is rebuilt and its other events applied again without it.
func (s *Service) applyMember(ctx context.Context, tx pgx.Tx, w *postgres.LoyaltyWrites, p *Program, member uuid.UUID,
	rows *postgres.LoyaltyRows, ops []batchOp, refused map[int]error) error {
	skip := map[int]bool{}
	for {
		st, err := toState(member, *rows, p)
		if err != nil {
			return err
		}
		if err := s.usageAsOfLast(ctx, tx, p, st, ops); err != nil {
			return err
		}
		type applied struct {
			b  batchOp
			fx *Effects
		}
		var done []applied
		again := false
		for _, b := range ops {
			if skip[b.i] {
				continue
			}
			fx, err := Engine{P: p}.Apply(st, b.op)
			var refusal *Refusal
			switch {
			case errors.Is(err, ErrInvalid):
				refused[b.i], skip[b.i], again = fault.Permanent(err), true, true
			case errors.As(err, &refusal):
				s.log.WarnContext(ctx, "event refused by the programme", "event_id", b.ev.GetEventId(), "member_id", member, "reason", refusal.Reason)
				skip[b.i], again = true, true
			case err != nil:
				return err
			default:
				done = append(done, applied{b, fx})
			}
			if again {
				break
			}
		}
		if again {
			continue
		}
		for _, a := range done {
			if err := s.stageOp(ctx, w, st, a.fx, a.b.op, a.b.ev.GetChannel(), a.b.ev.GetStoreId()); err != nil {
				return err
			}
		}
		s.stageState(w, st)
		return nil
	}
}

// usageAsOfLast reads the campaign usage of the day and month of the
// member's last operation when an event is older: it is processed at that
// time (§1), so its campaign caps are that day's and month's.
func (s *Service) usageAsOfLast(ctx context.Context, tx pgx.Tx, p *Program, st *State, ops []batchOp) error {
	older := slices.ContainsFunc(ops, func(b batchOp) bool {
		return st.Last.After(b.op.At) && dayOf(st.Last, p.Location) != dayOf(b.op.At, p.Location)
	})
	if !older {
		return nil
	}
	usage, err := postgres.CampaignUsage(ctx, tx, uuid.MustParse(st.MemberID), periodsOf(p, st.Last))
	if err != nil {
		return err
	}
	for _, u := range usage {
		st.Usage[u.Campaign+"|"+u.Period] = u.Points
	}
	return nil
}

// periodsOf names the day and the month of t, as campaign usage counts them.
func periodsOf(p *Program, t time.Time) []string {
	return []string{fmt.Sprintf("d:%d", dayOf(t, p.Location)), fmt.Sprintf("m:%d", int(monthOf(t, p.Location)))}
}
