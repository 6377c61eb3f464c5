package benefits

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// DependsOnLabel says whether a benefit of the programme in force is held
// only with the label: the tag worker then queues a member whose
// membership of it changes for CheckLabels.
func (s *Service) DependsOnLabel(label string) bool {
	for _, b := range s.program().Benefits {
		if slices.Contains(b.Labels, label) {
			return true
		}
	}
	return false
}

// CheckLabels re-evaluates the benefits of up to limit members whose labels
// a benefit depends on changed (queued by the tag worker in the
// transaction that changed them), with the labels as they now are: a
// benefit that follows a label is granted or revoked whatever event changed
// the label, a share as much as a purchase. One transaction takes the
// members off the queue and stores what changed, so each change is acted
// on once. It returns how many members it took.
func (s *Service) CheckLabels(ctx context.Context, limit int) (int, error) {
	now := s.now()
	p := s.program()
	var n int
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		// The members are locked (in id order, by the load) before they
		// are taken off the queue: the tag worker that queues a member
		// holds its row, so taking first would deadlock.
		queued, err := postgres.PeekBenefitLabelChecks(ctx, tx, limit)
		if err != nil {
			return err
		}
		n = len(queued)
		if n == 0 {
			return nil
		}
		rows, err := postgres.LoadLoyaltyBatch(ctx, tx, labelLoads(p, now, queued))
		if err != nil {
			return err
		}
		ids, err := postgres.TakeBenefitLabelChecks(ctx, tx, queued)
		if err != nil {
			return err
		}
		return s.followLabels(ctx, tx, p, now, rows, ids, nil)
	})
	return n, err
}

// CheckLabelsOf does in tx what CheckLabels does for those of members that
// are queued: the member stage calls it in the transaction in which the
// tag stage changed their labels (and so holds their rows), so a benefit
// follows a label in the same transaction as the label. What it takes of
// the shared limits, and the changes, are added to held (see Held).
func (s *Service) CheckLabelsOf(ctx context.Context, tx pgx.Tx, members []uuid.UUID, held *Held) error {
	if len(members) == 0 {
		return nil
	}
	ids, err := postgres.TakeBenefitLabelChecks(ctx, tx, members)
	if err != nil || len(ids) == 0 {
		return err
	}
	now := s.now()
	p := s.program()
	rows, err := postgres.LoadLoyaltyBatch(ctx, tx, labelLoads(p, now, ids))
	if err != nil {
		return err
	}
	return s.followLabels(ctx, tx, p, now, rows, ids, held)
}

// labelLoads says what a label check loads of each member: what a month
// start at now reads.
func labelLoads(p *Program, now time.Time, members []uuid.UUID) []postgres.LoyaltyLoad {
	loads := make([]postgres.LoyaltyLoad, len(members))
	for i, id := range members {
		loads[i] = postgres.LoyaltyLoad{Member: id, Lock: true, ActivityFrom: int(monthOf(now, p.Location)) - 13, Periods: periodsOf(p, now), Labels: p.labels}
	}
	return loads
}

// followLabels re-evaluates the benefits of the members ids, loaded in
// rows, with their labels as they now are, in id order, and stores what
// changed. A limited coupon a benefit gives goes to the members in that
// order while it lasts; what they take of the shared limits, and their
// changes, are added to held, when there is one, instead of written.
func (s *Service) followLabels(ctx context.Context, tx pgx.Tx, p *Program, now time.Time, rows map[uuid.UUID]*postgres.LoyaltyRows, ids []uuid.UUID,
	held *Held) error {
	w := postgres.NewLoyaltyWrites(p.Version)
	shared := sharedLimits{held: held}
	for _, id := range slices.SortedFunc(slices.Values(ids), postgres.CompareMemberIDs) {
		r := rows[id]
		if r == nil || !r.Found || r.Merged {
			continue // gone, or merged: the member it went to has labels of its own
		}
		shared.lend(id, r)
		st, err := toState(id, *r, p)
		if err != nil {
			return err
		}
		op := Op{Kind: OpAdvance, At: now, Cause: fmt.Sprintf("labels:%s:%s", now.UTC().Format(time.RFC3339Nano), id), Origin: id.String()}
		fx, err := Engine{P: p}.Apply(st, op)
		if err != nil {
			return err
		}
		if err := s.stageOp(ctx, w, st, fx, op, mcv1.Channel_CHANNEL_BACKOFFICE, "", st.Lots); err != nil {
			return err
		}
		s.stageState(w, st)
		shared.took(st)
	}
	held.hold(w)
	return s.flush(ctx, tx, w)
}

// RunLabelChecks re-evaluates queued members every interval (and at once
// while a backlog lasts) until ctx ends.
func (s *Service) RunLabelChecks(ctx context.Context, interval time.Duration) error {
	s.drainEvery(ctx, "benefits of changed labels", interval, s.CheckLabels)
	return nil
}
