package benefits

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Merged folds the source member's loyalty data into the target when
// identity merges them: tier inputs, coupons, orders and campaign usage
// combine (lots and the balance are moved by identity, with the ledger
// transfer); the target's tier and benefits are re-evaluated. Everything
// keeps its origin, so Unmerged can give it back.
func (s *Service) Merged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, at time.Time, cause string) error {
	for _, q := range []string{
		`UPDATE member_activity SET member_id = $2 WHERE member_id = $1`,
		`UPDATE coupons SET member_id = $2 WHERE member_id = $1`,
		`UPDATE orders SET member_id = $2 WHERE member_id = $1`,
		`INSERT INTO campaign_usage AS u (campaign_id, member_id, period, points)
		   SELECT campaign_id, $2, period, points FROM campaign_usage WHERE member_id = $1
		 ON CONFLICT (member_id, campaign_id, period) DO UPDATE SET points = u.points + EXCLUDED.points`,
		`DELETE FROM campaign_usage WHERE member_id = $1 AND $2::uuid IS NOT NULL`,
	} {
		if _, err := tx.Exec(ctx, q, source, target); err != nil {
			return fmt.Errorf("merge loyalty data: %w", err)
		}
	}
	return s.recompute(ctx, tx, target, at, cause)
}

// Unmerged gives back to the source what came from it (origins: the source
// and the members folded into it): tier inputs, coupons and orders; both
// members' tiers and benefits are re-derived. Campaign usage stays with the
// target (caps are not split).
func (s *Service) Unmerged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, origins []uuid.UUID, at time.Time, cause string) error {
	for _, q := range []string{
		`UPDATE member_activity SET member_id = $2 WHERE member_id = $1 AND origin_member_id = ANY($3)`,
		`UPDATE coupons SET member_id = $2 WHERE member_id = $1 AND origin_member_id = ANY($3)`,
		`UPDATE orders SET member_id = $2 WHERE member_id = $1 AND origin_member_id = ANY($3)`,
	} {
		if _, err := tx.Exec(ctx, q, target, source, origins); err != nil {
			return fmt.Errorf("unmerge loyalty data: %w", err)
		}
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
