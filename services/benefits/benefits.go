// Package benefits is the real-time benefit calculator: the points ledger
// with expiring lots, earning rules and campaigns, dynamic tiers, benefits,
// coupons and missions (docs/benefits.md), the benefit worker of the
// pipeline and the gRPC BenefitsService. Effects are exactly-once: the cause
// (event id, order id, idempotency key) is recorded in the transaction that
// applies them.
package benefits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/pipeline/contract"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/facts"
	"github.com/membercenter/membercenter/services/versioned"
)

// Stage is the benefit worker's name in groups and processed_events.
const Stage = "benefits"

// Service applies the programme and serves balances, ledgers, tiers,
// benefits and coupons.
type Service struct {
	pool    *pgxpool.Pool
	changes changes.Writer
	log     *slog.Logger
	now     func() time.Time
	prog    *versioned.Document[Program]
	facts   driver.Conn // ClickHouse, for campaign simulation; may be nil
	group   *grouper    // mutating RPCs, applied in groups (group.go)
	// eachLot loads every open lot one by one for every operation (tests
	// compare it with settled lots loaded as one sum).
	eachLot bool
}

// Programmes is how the loyalty programme is stored and read.
var Programmes = versioned.Format[Program]{Name: "loyalty programme", Kind: postgres.Programme, Action: "program.loaded", Parse: ParseProgram,
	Version: func(p *Program) string { return p.Version }}

// New returns the service running the embedded default programme until a
// loaded version is found (see Watch).
func New(pool *pgxpool.Pool, ch changes.Writer, log *slog.Logger) *Service {
	p, err := ParseProgram(defaultProgram)
	if err != nil {
		panic(fmt.Sprintf("embedded program.yaml: %v", err)) // covered by tests
	}
	s := &Service{pool: pool, changes: ch, log: log, now: time.Now, prog: versioned.New(Programmes, pool, log, p)}
	s.group = newGrouper(s.commitGroup)
	return s
}

func (s *Service) program() *Program { return s.prog.Current() }

// Program returns the programme in force.
func (s *Service) Program() *Program { return s.program() }

// SetClock replaces the service's clock, for tests and simulations.
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// LoadProgram validates a programme and stores it as the newest version;
// running services pick it up (Watch). A version id may be used once. The
// load is audited as made by the call's actor (auth.Actor).
func LoadProgram(ctx context.Context, pool *pgxpool.Pool, src []byte) (*Program, error) {
	return Programmes.Store(ctx, pool, src, versioned.Loader{Actor: auth.Actor(ctx)})
}

// Reload switches to the newest stored programme version, if it is not the
// one in force.
func (s *Service) Reload(ctx context.Context) error { return s.prog.Reload(ctx) }

// Watch reloads the programme every interval until ctx ends, so a loaded
// version takes effect without a restart.
func (s *Service) Watch(ctx context.Context, interval time.Duration) error {
	return s.prog.Watch(ctx, interval)
}

var _ contract.Applier = (*Service)(nil)

// OpFromEvent turns a member event into an engine operation; ok is false
// for events the programme ignores (visits, browsing, shares).
func OpFromEvent(p *Program, ev *mcv1.MemberEvent) (Op, bool, error) {
	op := Op{At: ev.GetOccurredAt().AsTime(), Cause: ev.GetEventId(), Origin: ev.GetResolution().GetOriginMemberId(),
		Channel: facts.ChannelName(ev.GetChannel()), Store: ev.GetStoreId()}
	switch x := ev.GetPayload().(type) {
	case *mcv1.MemberEvent_Transaction:
		t := x.Transaction
		if c := t.GetTotal().GetCurrency(); c != p.Currency {
			return op, false, fault.Permanent(fmt.Errorf("transaction.total.currency %q: the programme runs in %s", c, p.Currency))
		}
		op.Kind, op.OrderID, op.Total = OpPurchase, t.GetOrderId(), t.GetTotal().GetAmountMinor()
		op.CouponCodes, op.RedeemPoints = t.GetCouponCodes(), t.GetPointsRedeemed()
		op.Items = toItems(t.GetItems())
	case *mcv1.MemberEvent_Refund:
		r := x.Refund
		if c := r.GetAmount().GetCurrency(); c != p.Currency {
			return op, false, fault.Permanent(fmt.Errorf("refund.amount.currency %q: the programme runs in %s", c, p.Currency))
		}
		op.Kind, op.OrderID, op.Amount = OpRefund, r.GetOrderId(), r.GetAmount().GetAmountMinor()
	case *mcv1.MemberEvent_CheckIn:
		op.Kind = OpCheckIn
	case *mcv1.MemberEvent_Referral:
		op.Kind = OpReferral
	case *mcv1.MemberEvent_SignUp:
		op.Kind = OpSignUp
		if x.SignUp.GetBirthDate() != nil {
			op.BirthDate = x.SignUp.GetBirthDate().AsTime().In(p.Location).Format("2006-01-02")
		}
	default:
		return op, false, nil
	}
	return op, true, nil
}

func toItems(items []*mcv1.LineItem) []Item {
	out := make([]Item, len(items))
	for i, it := range items {
		out[i] = Item{SKU: it.GetSku(), Category: it.GetCategory(), Brand: it.GetBrand(), Quantity: int64(it.GetQuantity()), Amount: it.GetAmount().GetAmountMinor()}
	}
	return out
}

// Apply applies one member event, once: the event id is recorded in the
// transaction that applies it. A purchase the programme refuses (say, more
// points redeemed than available) is recorded as processed and logged, so
// it never blocks the member's later events.
func (s *Service) Apply(ctx context.Context, ev *mcv1.MemberEvent) error {
	rejected, err := s.ApplyBatch(ctx, []*mcv1.MemberEvent{ev})
	if err != nil {
		return err
	}
	return rejected[0]
}

// retryRaces runs fn again when a concurrent operation used the last of a
// budget or limit it counted on, or committed the same order first.
func (s *Service) retryRaces(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = fn()
		if !errors.Is(err, errBudgetRace) && !postgres.IsUniqueViolation(err) && !postgres.IsSerializationFailure(err) {
			return err
		}
	}
	return err
}

// Advance processes month starts and expiry for every member with points
// or a tier above the base, up to now: the scheduled job behind "a balance
// never shows expired points" and monthly tier evaluation. It returns how
// many members it changed. The members due are advanced advanceBatch at a
// time, each group in one transaction as the benefit stage applies a batch
// (locked in id order, loaded and written with one statement per kind of
// row): a month start makes every member with points due at once.
func (s *Service) Advance(ctx context.Context, batch int) (int, error) {
	now := s.now()
	p := s.program()
	cur := monthOf(now, p.Location)
	ids, err := postgres.DueLoyalty(ctx, s.pool, now, int(cur), batch)
	if err != nil {
		return 0, err
	}
	for group := range slices.Chunk(ids, advanceBatch) {
		if err := s.advance(ctx, p, now, group); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// advanceBatch is how many members one transaction of Advance advances:
// enough to share its round trips, few enough that the stages' batches
// wait little for the member rows it holds.
const advanceBatch = 100

// advance advances members to now in one transaction.
func (s *Service) advance(ctx context.Context, p *Program, now time.Time, members []uuid.UUID) error {
	at := now.UTC().Format("2006-01-02T15:04")
	return s.InTx(ctx, func(tx pgx.Tx) error {
		todo := make([]batchOp, len(members))
		for i, id := range members {
			todo[i] = batchOp{i: i, member: id, ch: mcv1.Channel_CHANNEL_BACKOFFICE,
				op: Op{Kind: OpAdvance, At: now, Cause: fmt.Sprintf("job:advance:%s:%s", at, id), Origin: id.String()}}
		}
		w := postgres.NewLoyaltyWrites(p.Version)
		refused := map[int]error{}
		if err := s.applyOps(ctx, tx, w, nil, p, todo, refused, nil); err != nil {
			return err
		}
		for i := range members {
			if err := refused[i]; err != nil {
				return fmt.Errorf("advance %s: %w", members[i], err)
			}
		}
		return s.flush(ctx, tx, w)
	})
}

// RunScheduler advances members every interval until ctx ends.
func (s *Service) RunScheduler(ctx context.Context, interval time.Duration) error {
	s.drainEvery(ctx, "scheduled expiry and tier evaluation", interval, s.Advance)
	return nil
}

// drainEvery calls pass with batches of 500 every interval, and again at
// once while a pass fills its batch, until ctx ends.
func (s *Service) drainEvery(ctx context.Context, what string, interval time.Duration, pass func(ctx context.Context, batch int) (int, error)) {
	fault.Every(ctx, s.log, what, interval, func(ctx context.Context) error {
		for {
			n, err := pass(ctx, 500)
			if err != nil || n < 500 {
				return err
			}
		}
	})
}
