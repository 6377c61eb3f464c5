package benefits

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Merged folds the source member's loyalty data into the target when
// identity merges them: tier inputs, coupons, orders and campaign usage
// combine (lots and the balance are moved by identity, with the ledger
// transfer); the target's tier and benefits are re-evaluated. Everything
// keeps its origin, so Unmerged can give it back.
func (s *Service) Merged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, at time.Time, cause string) error {
	if err := postgres.MoveLoyaltyData(ctx, tx, source, target); err != nil {
		return err
	}
	return s.recompute(ctx, tx, target, at, cause)
}

// Unmerged gives back to the source what came from it (origins: the source
// and the members folded into it): tier inputs, coupons and orders; both
// members' tiers and benefits are re-derived. Campaign usage stays with the
// target (caps are not split).
func (s *Service) Unmerged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, origins []uuid.UUID, at time.Time, cause string) error {
	if err := postgres.ReturnLoyaltyData(ctx, tx, target, source, origins); err != nil {
		return err
	}
	if err := s.recompute(ctx, tx, source, at, cause); err != nil {
		return err
	}
	return s.recompute(ctx, tx, target, at, cause)
}

func (s *Service) recompute(ctx context.Context, tx pgx.Tx, member uuid.UUID, at time.Time, cause string) error {
	st, err := s.load(ctx, tx, member, false, at)
	if err != nil {
		return err
	}
	fx := Engine{P: s.program()}.Recompute(st, at, cause)
	return s.persist(ctx, tx, st, fx, Op{Cause: cause, Origin: member.String()}, mcv1.Channel_CHANNEL_BACKOFFICE, "")
}
