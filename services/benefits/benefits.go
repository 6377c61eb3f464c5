// Package benefits is the real-time benefit calculator: the points ledger,
// earning rules, and the gRPC BenefitsService. Effects of member events are
// exactly-once: the event id is recorded in the transaction that applies them.
package benefits

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/worker"
	"github.com/membercenter/membercenter/services/changes"
)

// Stage is the benefit worker's name in groups and processed_events.
const Stage = "benefits"

// Service applies earning rules and serves balances and ledgers.
type Service struct {
	pool    *pgxpool.Pool
	changes changes.Writer
	log     *slog.Logger
	now     func() time.Time
}

// New returns the service.
func New(pool *pgxpool.Pool, ch changes.Writer, log *slog.Logger) *Service {
	return &Service{pool: pool, changes: ch, log: log, now: time.Now}
}

var _ worker.Applier = (*Service)(nil)

// PointsFor is the placeholder earning rule: one point per whole currency
// unit paid (amounts are in minor units of two-decimal currencies).
func PointsFor(total *mcv1.Money) int64 {
	if total.GetAmountMinor() <= 0 {
		return 0
	}
	return total.GetAmountMinor() / 100
}

// pointsLifetime is how long earned points stay spendable.
const pointsLifetime = 365 * 24 * time.Hour

// Apply credits the points a transaction earns, once per event, writing the
// ledger transaction, the lot, the balance and the outbox change together.
func (s *Service) Apply(ctx context.Context, ev *mcv1.MemberEvent) error {
	tx := ev.GetTransaction()
	if tx == nil {
		return nil // only purchases earn points so far
	}
	resolved, err := uuid.Parse(ev.GetMemberId())
	if err != nil {
		return dlq.Reject(fmt.Errorf("member_id %q: %w", ev.GetMemberId(), err))
	}
	// Points belong to the member the event is attributed to, so an unmerge
	// can give them back; they are held by whoever that member is now.
	origin := resolved
	if o := ev.GetResolution().GetOriginMemberId(); o != "" {
		if origin, err = uuid.Parse(o); err != nil {
			return dlq.Reject(fmt.Errorf("resolution.origin_member_id %q: %w", o, err))
		}
	}
	points := PointsFor(tx.GetTotal())
	return pgx.BeginFunc(ctx, s.pool, func(dbtx pgx.Tx) error {
		fresh, err := postgres.MarkProcessed(ctx, dbtx, Stage, ev.GetEventId())
		if err != nil || !fresh || points == 0 {
			return err
		}
		member, err := postgres.CanonicalMember(ctx, dbtx, resolved)
		if err != nil {
			return err
		}
		// Serialise with merges and unmerges of this member.
		if _, err := postgres.LockMembers(ctx, dbtx, member); err != nil {
			return err
		}
		now := s.now()
		earnedAt := now
		if ev.GetOccurredAt() != nil {
			earnedAt = ev.GetOccurredAt().AsTime()
		}
		txnID := uuid.Must(uuid.NewV7())
		reason := fmt.Sprintf("purchase %s: 1 point per currency unit", tx.GetOrderId())
		if err := postgres.InsertLedgerTransaction(ctx, dbtx, postgres.LedgerTransaction{
			TransactionID: txnID, MemberID: member, OriginMemberID: origin, Kind: "earn", Reason: reason, CauseID: ev.GetEventId(), CreatedAt: now,
			Entries: []postgres.LedgerEntry{
				{Account: postgres.MemberAccount(member), MemberID: &member, Delta: points},
				{Account: postgres.LiabilityAccount, Delta: -points},
			},
		}); err != nil {
			return err
		}
		if err := postgres.InsertLot(ctx, dbtx, postgres.Lot{
			MemberID: member, OriginMemberID: origin, TransactionID: txnID, Earned: points, Remaining: points,
			EarnedAt: earnedAt, AvailableAt: earnedAt, ExpiresAt: earnedAt.Add(pointsLifetime),
		}); err != nil {
			return err
		}
		acct, err := postgres.AddToAccount(ctx, dbtx, member, points, 0, points)
		if err != nil {
			return err
		}
		_, err = s.changes.Append(ctx, dbtx, member, &mcv1.MemberChange{
			CauseId: ev.GetEventId(), Channel: ev.GetChannel(), StoreId: ev.GetStoreId(),
			Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{
				Kind: mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EARN, Delta: points, Balance: acct.Available,
				Pending: acct.Pending, Reason: reason, TransactionId: txnID.String(),
			}},
		})
		return err
	})
}
