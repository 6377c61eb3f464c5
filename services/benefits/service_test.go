package benefits_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
)

type fixture struct {
	pool  *pgxpool.Pool
	svc   *benefits.Service
	srv   *benefits.Server
	clock *time.Time
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	pool := pgtest.NewPool(t, nil)
	svc := benefits.New(pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	now := wed
	f := &fixture{pool: pool, svc: svc, srv: benefits.NewServer(svc), clock: &now}
	svc.SetClock(func() time.Time { return *f.clock })
	return f
}

func (f *fixture) member(t testing.TB) string {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(context.Background(), f.pool, id, *f.clock); err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// advanceAll brings every member due for month starts or expiry up to the
// fixture's clock, as the platform's sweeper does.
func (f *fixture) advanceAll(t testing.TB, c context.Context) {
	t.Helper()
	for {
		n, err := f.svc.Advance(c, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

// adjust makes the adjustment req, failing the test when it is refused.
func (f *fixture) adjust(t testing.TB, c context.Context, req *mcv1.AdjustRequest) {
	t.Helper()
	if _, err := f.srv.Adjust(c, req); err != nil {
		t.Fatal(err)
	}
}

// commit commits req, failing the test when it is refused.
func (f *fixture) commit(t testing.TB, c context.Context, req *mcv1.CommitRequest) {
	t.Helper()
	if _, err := f.srv.Commit(c, req); err != nil {
		t.Fatal(err)
	}
}

// ctx is a test's context: 30 s for its calls (ctxWithin for longer).
func ctx(t *testing.T) context.Context { return ctxWithin(t, 30*time.Second) }

// ctxWithin is a context that ends d from now or with the test.
func ctxWithin(t testing.TB, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// useProgram loads the programme src and puts it in force.
func (f *fixture) useProgram(t testing.TB, c context.Context, src []byte) {
	t.Helper()
	if _, err := benefits.LoadProgram(c, f.pool, src); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Reload(c); err != nil {
		t.Fatal(err)
	}
}

// begin opens a test: its fixture and the context of its calls.
func begin(t *testing.T) (*fixture, context.Context) { return newFixture(t), ctx(t) }

// beginWithMember is begin with a new member, as most tests open.
func beginWithMember(t *testing.T) (*fixture, context.Context, string) {
	f, c := begin(t)
	return f, c, f.member(t)
}

func basket(order string, total int64) *mcv1.Basket {
	return &mcv1.Basket{OrderId: order, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-1",
		Total: &mcv1.Money{Currency: "CNY", AmountMinor: total},
		Items: []*mcv1.LineItem{{Sku: "TEA", Category: "tea", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: total}}}}
}

// memberWithCoupon makes a member with an order o1 of total (key k1) and a
// claimed C10 coupon (key claim), whose code it returns.
func (f *fixture) memberWithCoupon(t *testing.T, c context.Context, total int64) (member, code string) {
	t.Helper()
	member = f.member(t)
	f.commit(t, c, &mcv1.CommitRequest{MemberId: member, Basket: basket("o1", total), IdempotencyKey: "k1"})
	coupon, err := f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: member, TemplateId: "C10", IdempotencyKey: "claim"})
	if err != nil {
		t.Fatal(err)
	}
	return member, coupon.GetCoupon().GetCode()
}

// benefitIDs lists the benefits the member holds, as ListBenefits does.
func (f *fixture) benefitIDs(t *testing.T, c context.Context, member string) []string {
	t.Helper()
	resp, err := f.srv.ListBenefits(c, &mcv1.ListBenefitsRequest{MemberId: member})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range resp.GetBenefits() {
		ids = append(ids, b.GetBenefitId())
	}
	return ids
}

// rows counts what a refused request must leave alone.
func (f *fixture) rows(t *testing.T) [7]int {
	t.Helper()
	var r [7]int
	err := f.pool.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM ledger_transactions), (SELECT count(*) FROM point_lots), (SELECT coalesce(sum(remaining), 0) FROM point_lots),
		(SELECT count(*) FROM orders), (SELECT count(*) FROM coupons WHERE state = 'issued'), (SELECT count(*) FROM outbox),
		(SELECT count(*) FROM idempotency_keys)`).Scan(&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6])
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCommitIsIdempotentAndQuoteChangesNothing(t *testing.T) {
	f, c, m := beginWithMember(t)
	before := f.rows(t)
	q, err := f.srv.Quote(c, &mcv1.QuoteRequest{MemberId: m, Basket: basket("o1", 12_345)})
	if err != nil {
		t.Fatal(err)
	}
	if q.GetPointsEarned() != 123 || q.GetAmountDue().GetAmountMinor() != 12_345 || len(q.GetTrace()) == 0 {
		t.Fatalf("quote = %v", q)
	}
	if after := f.rows(t); after != before {
		t.Fatalf("Quote wrote: %v → %v", before, after)
	}
	first, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 12_345), IdempotencyKey: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	if first.GetResult().GetPointsEarned() != 123 || first.GetBalance() != 123 || first.GetTransactionId() != "o1" {
		t.Fatalf("commit = %v", first)
	}
	afterFirst := f.rows(t)
	again, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 12_345), IdempotencyKey: "k1"})
	if err != nil || !proto.Equal(again, first) {
		t.Fatalf("retry = %v, %v; want %v", again, err, first)
	}
	// The same order under another key is the same purchase: nothing more.
	other, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 12_345), IdempotencyKey: "k2"})
	if err != nil || other.GetResult().GetPointsEarned() != 123 {
		t.Fatalf("same order, new key = %v, %v", other, err)
	}
	if r := f.rows(t); r[0] != afterFirst[0] || r[1] != afterFirst[1] || r[2] != afterFirst[2] || r[3] != afterFirst[3] {
		t.Fatalf("a repeated order changed the ledger: %v → %v", afterFirst, r)
	}
	// The same key with another basket is refused.
	if _, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o9", 100), IdempotencyKey: "k1"}); !errors.Is(err, changes.ErrKeyReused) {
		t.Fatalf("key reuse: %v", err)
	}
}

func TestRefusedRequestsChangeNothing(t *testing.T) {
	f, c := begin(t)
	m, code := f.memberWithCoupon(t, c, 100_000)
	*f.clock = wed.Add(8 * 24 * time.Hour) // the first order's points are available now
	before := f.rows(t)

	redeem := func(total, points int64) *mcv1.Basket {
		b := basket("o2", total)
		b.RedeemPoints = points
		return b
	}
	withCoupon := func(total int64, code string) *mcv1.Basket {
		b := basket("o3", total)
		b.CouponCodes = []string{code}
		return b
	}
	future := basket("o4", 100)
	future.At = timestamppb.New(f.clock.Add(time.Hour))
	usd := basket("o5", 100)
	usd.Total.Currency = "USD"
	commit := func(b *mcv1.Basket, key string) func() error {
		return func() error {
			_, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: b, IdempotencyKey: key})
			return err
		}
	}
	cases := []struct {
		name    string
		call    func() error
		refused bool // FailedPrecondition; otherwise InvalidArgument
		want    string
	}{
		{"overspend", commit(redeem(100_000, 5_000), "a"), true, "only 1010 points are available"},
		{"points beyond half the basket", commit(redeem(1_000, 1_000), "b"), true, "at most 500"},
		{"redeem not a multiple of 100", commit(redeem(100_000, 150), "c"), true, "multiple of 100"},
		{"coupon below its minimum spend", commit(withCoupon(1_000, code), "d"), true, "at least 5000"},
		{"someone else's coupon", commit(withCoupon(10_000, "C10-deadbeef-1"), "e"), true, "does not belong"},
		{"future basket", commit(future, "f"), false, "basket.at"},
		{"unknown currency", commit(usd, "g"), false, "basket.total.currency"},
		{"redeem too much", func() error {
			_, err := f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: 2_000, IdempotencyKey: "h"})
			return err
		}, true, "only 1010 points"},
		{"refund beyond the order", func() error {
			_, err := f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m, OrderId: "o1", Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 100_001}, IdempotencyKey: "i"})
			return err
		}, true, "cannot be refunded"},
		{"claim a template that is not claimable", func() error {
			_, err := f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: m, TemplateId: "BDAY", IdempotencyKey: "j"})
			return err
		}, true, "cannot be claimed"},
		{"claim a template the programme does not have", func() error {
			_, err := f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: m, TemplateId: "NOPE", IdempotencyKey: "k"})
			return err
		}, false, `template_id "NOPE" is not in the programme`},
	}
	for _, tc := range cases {
		err := tc.call()
		want := benefits.ErrInvalid
		if tc.refused {
			want = benefits.ErrRefused
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %v mentioning %q", tc.name, err, want, tc.want)
		}
	}
	if after := f.rows(t); after != before {
		t.Fatalf("refused requests changed the database: %v → %v", before, after)
	}
	// The coupon works once on a qualifying basket, then is used.
	f.commit(t, c, &mcv1.CommitRequest{MemberId: m, Basket: withCoupon(10_000, code), IdempotencyKey: "ok"})
	b := withCoupon(10_000, code)
	b.OrderId = "o6"
	if _, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: b, IdempotencyKey: "again"}); !errors.Is(err, benefits.ErrRefused) || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("used coupon: %v", err)
	}
}

func TestRefundReversesExactlyAndRestoresCoupons(t *testing.T) {
	f, c := begin(t)
	m, code := f.memberWithCoupon(t, c, 200_000)
	*f.clock = wed.Add(8 * 24 * time.Hour)
	b := basket("o2", 50_000)
	b.CouponCodes = []string{code}
	b.RedeemPoints = 1_000 // ¥10
	commit, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: b, IdempotencyKey: "k2"})
	if err != nil {
		t.Fatal(err)
	}
	// Paid 50,000 - 1,000 coupon - 1,000 points = 48,000; the first order
	// made the member silver (×1.2): 576 points, +10 for a ¥500 basket (the
	// campaign looks at the basket total).
	r := commit.GetResult()
	if r.GetAmountDue().GetAmountMinor() != 48_000 || r.GetPointsEarned() != 586 || r.GetCouponDiscount().GetAmountMinor() != 1_000 {
		t.Fatalf("commit = %v", r)
	}
	var reversed, restored int64
	for i, amount := range []int64{12_345, 0} { // a part, then the rest
		req := &mcv1.RefundRequest{MemberId: m, OrderId: "o2", IdempotencyKey: "r" + string(rune('0'+i))}
		if amount > 0 {
			req.Amount = &mcv1.Money{Currency: "CNY", AmountMinor: amount}
		}
		resp, err := f.srv.Refund(c, req)
		if err != nil {
			t.Fatal(err)
		}
		reversed += resp.GetPointsReversed()
		restored += resp.GetPointsRestored()
		if i == 1 && (len(resp.GetCouponsRestored()) != 1 || resp.GetCouponsRestored()[0] != code) {
			t.Fatalf("full refund restored coupons %v", resp.GetCouponsRestored())
		}
	}
	if reversed != 586 || restored != 1_000 {
		t.Fatalf("refunds reversed %d and restored %d; want 586 and 1000", reversed, restored)
	}
	bal, err := f.srv.GetBalance(c, &mcv1.GetBalanceRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	// The first order's 2,000 + 10 remain, all available now.
	if bal.GetAvailable() != 2_010 || bal.GetPending() != 0 {
		t.Fatalf("balance = %v", bal)
	}
	list, err := f.srv.ListCoupons(c, &mcv1.ListCouponsRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	// The big-basket campaign issued C10 #1 and #3; the claimed #2 is back.
	var states []string
	for _, cp := range list.GetCoupons() {
		states = append(states, cp.GetCode()[len(cp.GetCode())-1:]+":"+cp.GetState().String())
	}
	if got := fmt.Sprint(states); got != "[1:COUPON_STATE_ISSUED 2:COUPON_STATE_RESTORED 3:COUPON_STATE_ISSUED]" {
		t.Fatalf("coupons = %v", got)
	}
}

func TestTierStatusAndBenefits(t *testing.T) {
	f, c, m := beginWithMember(t)
	// A member who never changed tier has no tier_since (not year 1).
	if st, err := f.srv.GetTierStatus(c, &mcv1.GetTierStatusRequest{MemberId: m}); err != nil || st.GetTier() != "normal" || st.GetTierSince() != nil {
		t.Fatalf("a new member's tier status %v, %v; want normal with no tier_since", st, err)
	}
	// ¥2,500 in one basket: silver at once (spend over 12 months ≥ ¥2,000).
	commit, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 250_000), IdempotencyKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if commit.GetResult().GetTierBefore() != "normal" || commit.GetResult().GetTierAfter() != "silver" {
		t.Fatalf("tier %s → %s", commit.GetResult().GetTierBefore(), commit.GetResult().GetTierAfter())
	}
	st, err := f.srv.GetTierStatus(c, &mcv1.GetTierStatusRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetTier() != "silver" || st.GetNextTier() != "gold" || len(st.GetToReachNext()) != 2 || !strings.Contains(st.GetToReachNext()[0], "7500.00 more") ||
		!st.GetTierSince().AsTime().Equal(*f.clock) {
		t.Fatalf("status = %v; want silver since now (%s)", st, *f.clock)
	}
	ids := f.benefitIDs(t, c, m)
	if len(ids) != 2 || ids[0] != "priority_checkout" || ids[1] != "free_shipping" {
		t.Fatalf("benefits = %v", ids)
	}
	// A refund takes the spend back; the tier stays until month starts say
	// otherwise: grace at the first, downgrade at the second.
	if _, err := f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m, OrderId: "o1", IdempotencyKey: "r"}); err != nil {
		t.Fatal(err)
	}
	*f.clock = time.Date(2026, 5, 2, 0, 0, 0, 0, sh)
	st, err = f.srv.GetTierStatus(c, &mcv1.GetTierStatusRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetTier() != "normal" {
		t.Fatalf("after two month starts without qualifying: %v", st)
	}
	n, err := f.svc.Advance(c, 100)
	if err != nil || n != 1 {
		t.Fatalf("advance: %d, %v", n, err)
	}
	if ids := f.benefitIDs(t, c, m); len(ids) != 0 {
		t.Fatalf("benefits after the downgrade: %v", ids)
	}
	var moves int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM tier_history WHERE reason = 'downgrade'`).Scan(&moves); err != nil || moves != 1 {
		t.Fatalf("downgrades recorded: %d (%v)", moves, err)
	}
}

// TestAMonthStartAdvancesEveryMemberDueOnce: a sweep over more members
// than one of its transactions holds moves each member due exactly once —
// the silver ones whose spend was refunded down after two month starts
// without qualifying, the others only evaluated — and a second sweep finds
// nobody due.
func TestAMonthStartAdvancesEveryMemberDueOnce(t *testing.T) {
	f, c := begin(t)
	const n = 150 // more than one transaction's worth
	silver := map[string]bool{}
	for i := range n {
		m := f.member(t)
		total := int64(10_000)
		if i%2 == 0 {
			total, silver[m] = 250_000, true
		}
		f.commit(t, c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1-"+m, total), IdempotencyKey: "k-" + m})
		if silver[m] {
			if _, err := f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m, OrderId: "o1-" + m, IdempotencyKey: "r-" + m}); err != nil {
				t.Fatal(err)
			}
		}
	}
	*f.clock = time.Date(2026, 5, 2, 0, 0, 0, 0, sh)
	got, err := f.svc.Advance(c, 500)
	if err != nil || got != n {
		t.Fatalf("advance: %d members, %v; want %d", got, err, n)
	}
	rows, err := f.pool.Query(c, `SELECT member_id::text, count(*) FROM tier_history WHERE reason = 'downgrade' GROUP BY member_id`)
	if err != nil {
		t.Fatal(err)
	}
	down, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct {
		Member string
		N      int
	}])
	if err != nil {
		t.Fatal(err)
	}
	if len(down) != len(silver) {
		t.Fatalf("%d members downgraded; want the %d silver ones", len(down), len(silver))
	}
	for _, d := range down {
		if !silver[d.Member] || d.N != 1 {
			t.Fatalf("member %s downgraded %d times (silver: %v)", d.Member, d.N, silver[d.Member])
		}
	}
	var behind int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM loyalty_state WHERE evaluated < $1`, 2026*12+4).Scan(&behind); err != nil {
		t.Fatal(err)
	}
	if behind != 0 {
		t.Fatalf("%d members not evaluated up to May", behind)
	}
	if again, err := f.svc.Advance(c, 500); err != nil || again != 0 {
		t.Fatalf("a second sweep: %d members, %v; want none", again, err)
	}
}
