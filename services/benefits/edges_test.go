package benefits_test

import (
	"context"
	"encoding/base64"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/server/servertest"
)

// TestConcurrentDuplicatesGetTheFirstAnswer: a till that retries before
// its first call answered sends the same key twice at once; every copy gets
// the first answer, and the effect happens once.
func TestConcurrentDuplicatesGetTheFirstAnswer(t *testing.T) {
	f, c, m := beginWithMember(t)
	f.adjust(t, c, &mcv1.AdjustRequest{MemberId: m, Points: 100, Reason: "goodwill", IdempotencyKey: "adj"})
	const copies = 6
	type answer struct {
		resp proto.Message
		err  error
	}
	concurrently := func(call func() (proto.Message, error)) []answer {
		out := make([]answer, copies)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range out {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r, err := call()
				out[i] = answer{r, err}
			}()
		}
		close(start)
		wg.Wait()
		return out
	}
	same := func(what string, as []answer) {
		t.Helper()
		for i, a := range as {
			if a.err != nil {
				t.Errorf("%s copy %d: %v; want the first answer", what, i, a.err)
				continue
			}
			if !proto.Equal(a.resp, as[0].resp) {
				t.Errorf("%s copy %d answered %v, copy 0 %v", what, i, a.resp, as[0].resp)
			}
		}
	}
	same("Redeem", concurrently(func() (proto.Message, error) {
		return f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: 100, IdempotencyKey: "till-9-redeem"})
	}))
	same("Commit", concurrently(func() (proto.Message, error) {
		return f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o-dup", 20_000), IdempotencyKey: "till-9-commit"})
	}))
	same("ClaimCoupon", concurrently(func() (proto.Message, error) {
		return f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: m, TemplateId: "C10", IdempotencyKey: "app-claim"})
	}))
	same("Adjust", concurrently(func() (proto.Message, error) {
		return f.srv.Adjust(c, &mcv1.AdjustRequest{MemberId: m, Points: 7, Reason: "goodwill", IdempotencyKey: "adj-2"})
	}))
	var redeems, coupons, adjusts int
	if err := f.pool.QueryRow(c, `SELECT (SELECT count(*) FROM ledger_transactions WHERE kind = 'redeem'),
		(SELECT count(*) FROM coupons), (SELECT count(*) FROM ledger_transactions WHERE kind = 'adjust')`).Scan(&redeems, &coupons, &adjusts); err != nil {
		t.Fatal(err)
	}
	if redeems != 1 || coupons != 1 || adjusts != 2 {
		t.Errorf("%d redemptions, %d coupons, %d adjustments; want 1, 1 and 2", redeems, coupons, adjusts)
	}
}

// TestCommitAnswersEveryMovementItCaused: the third purchase of a month
// earns the mission bonus; Commit's answer counts it, traces it, and the
// ledger holds exactly what the answer says.
func TestCommitAnswersEveryMovementItCaused(t *testing.T) {
	f, c, m := beginWithMember(t)
	var last *mcv1.CommitResponse
	for i, key := range []string{"k1", "k2", "k3"} {
		b := basket("order-"+key, 10_000+int64(i)*1_000)
		r, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: b, IdempotencyKey: key})
		if err != nil {
			t.Fatal(err)
		}
		last = r
	}
	var ledger int64
	if err := f.pool.QueryRow(c, `SELECT coalesce(sum(e.delta), 0) FROM ledger_transactions t JOIN ledger_entries e USING (transaction_id)
		WHERE t.cause_id LIKE 'rpc:benefits.Commit:k3#%' AND e.member_id = $1`, m).Scan(&ledger); err != nil {
		t.Fatal(err)
	}
	got := last.GetResult().GetPointsEarned()
	if got != 120+100 || ledger != got {
		t.Errorf("third Commit answered %d points, the ledger holds %d under its cause; want 220 (120 for the basket, 100 for the mission) in both", got, ledger)
	}
	found := false
	for _, tr := range last.GetResult().GetTrace() {
		found = found || (tr.GetRuleId() == "mission:purchases_in_month" && tr.GetApplied() && tr.GetPoints() == 100)
	}
	if !found {
		t.Errorf("the trace does not show the mission bonus: %v", last.GetResult().GetTrace())
	}
	if last.GetBalance() != 100+110+220 {
		t.Errorf("balance %d, want 430", last.GetBalance())
	}
	// A retry gets the same answer.
	again, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("order-k3", 12_000), IdempotencyKey: "k3"})
	if err != nil || again.GetResult().GetPointsEarned() != got {
		t.Errorf("retry: %v, %v", again, err)
	}
}

// outboxChanges are the changes written for member, in order.
func (f *fixture) outboxChanges(t *testing.T, member string) []*mcv1.MemberChange {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT payload FROM outbox WHERE member_id = $1 ORDER BY sequence`, uuid.MustParse(member))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []*mcv1.MemberChange
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			t.Fatal(err)
		}
		ch := &mcv1.MemberChange{}
		if err := proto.Unmarshal(b, ch); err != nil {
			t.Fatal(err)
		}
		out = append(out, ch)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// outboxChannels lists the channel of each change written for member.
func (f *fixture) outboxChannels(t *testing.T, member string) []mcv1.Channel {
	t.Helper()
	var out []mcv1.Channel
	for _, ch := range f.outboxChanges(t, member) {
		out = append(out, ch.GetChannel())
	}
	return out
}

// TestEveryChangeCarriesTheCallersChannel: a subscriber that follows one
// channel sees the coupons claimed, the points redeemed and the refunds made
// through it; an authenticated client's own channel is the one recorded.
func TestEveryChangeCarriesTheCallersChannel(t *testing.T) {
	f, c, m := beginWithMember(t)
	f.adjust(t, c, &mcv1.AdjustRequest{MemberId: m, Points: 500, Reason: "welcome", IdempotencyKey: "adj"})
	f.commit(t, c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 10_000), IdempotencyKey: "c1"})
	seen := len(f.outboxChannels(t, m))
	app := mcv1.Channel_CHANNEL_APP
	if _, err := f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: m, TemplateId: "C10", IdempotencyKey: "claim", Channel: app}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: 100, IdempotencyKey: "redeem", Channel: app}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m, OrderId: "o1", IdempotencyKey: "refund", Channel: app}); err != nil {
		t.Fatal(err)
	}
	chans := f.outboxChannels(t, m)[seen:]
	if len(chans) < 3 {
		t.Fatalf("%d changes for a claim, a redemption and a refund", len(chans))
	}
	for i, ch := range chans {
		if ch != app {
			t.Errorf("change %d carries %s, want %s", i, ch, app)
		}
	}

	// Over gRPC with channel credentials: the client's channel wins.
	secret := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("m", 32)))
	a, err := auth.Parse([]byte("clients:\n  - {id: mini, channel: miniprogram, secret: " + secret + ", scopes: [\"*\"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	conn := f.grpc(t, a)
	tok, err := a.Mint("mini", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cc := metadata.AppendToOutgoingContext(c, "authorization", "Bearer "+tok)
	seen = len(f.outboxChannels(t, m))
	if _, err := mcv1.NewBenefitsServiceClient(conn).ClaimCoupon(cc, &mcv1.ClaimCouponRequest{MemberId: m, TemplateId: "C10",
		IdempotencyKey: "claim-2", Channel: mcv1.Channel_CHANNEL_POS}); err != nil {
		t.Fatal(err)
	}
	if _, err := mcv1.NewBenefitsServiceClient(conn).Redeem(cc, &mcv1.RedeemRequest{MemberId: m, Points: 100, IdempotencyKey: "redeem-2"}); err != nil {
		t.Fatal(err)
	}
	chans = f.outboxChannels(t, m)[seen:]
	if len(chans) < 2 {
		t.Fatalf("%d changes for a claim and a redemption", len(chans))
	}
	for i, ch := range chans {
		if ch != mcv1.Channel_CHANNEL_MINIPROGRAM {
			t.Errorf("authenticated change %d carries %s, want CHANNEL_MINIPROGRAM", i, ch)
		}
	}
}

// grpc serves the fixture's BenefitsService on the platform's gRPC edge,
// with the authenticator as its guard.
func (f *fixture) grpc(t *testing.T, guards ...server.Guard) *grpc.ClientConn {
	t.Helper()
	gs, _, err := server.NewGRPC(servertest.Telemetry(),
		[]server.ErrorCode{{Err: benefits.ErrInvalid, Code: codes.InvalidArgument}, {Err: benefits.ErrRefused, Code: codes.FailedPrecondition}}, guards...)
	if err != nil {
		t.Fatal(err)
	}
	mcv1.RegisterBenefitsServiceServer(gs, f.srv)
	conn := servertest.Serve(t, gs)
	return conn
}

// TestImplausibleRequestsAreRefusedNamingTheField: amounts, points and
// times beyond the programme's limits are InvalidArgument naming the field,
// over gRPC too, and change nothing.
func TestImplausibleRequestsAreRefusedNamingTheField(t *testing.T) {
	f, c, m := beginWithMember(t)
	f.commit(t, c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 10_000), IdempotencyKey: "ok"})
	before := f.rows(t)
	withTotal := func(v int64) *mcv1.Basket { return basket("big", v) }
	at := func(ts *timestamppb.Timestamp) *mcv1.Basket { b := basket("when", 100); b.At = ts; return b }
	bigLine := basket("line", 100)
	bigLine.Items = append(bigLine.Items, &mcv1.LineItem{Sku: "X", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: math.MaxInt64}})
	redeemAll := basket("redeem", 100)
	redeemAll.RedeemPoints = 1 << 40
	commit := func(b *mcv1.Basket) func() error {
		return func() error {
			_, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: b, IdempotencyKey: "k-" + b.GetOrderId()})
			return err
		}
	}
	quote := func(b *mcv1.Basket) func() error {
		return func() error { _, err := f.srv.Quote(c, &mcv1.QuoteRequest{MemberId: m, Basket: b}); return err }
	}
	for _, tc := range []struct {
		name  string
		call  func() error
		field string
	}{
		{"Commit of MaxInt64", commit(withTotal(math.MaxInt64)), "basket.total.amount_minor"},
		{"Commit of 10^15", commit(withTotal(1_000_000_000_000_000)), "basket.total.amount_minor"},
		{"Commit just above ¥1,000,000", commit(withTotal(100_000_001)), "basket.total.amount_minor"},
		{"Quote of MaxInt64", quote(withTotal(math.MaxInt64)), "basket.total.amount_minor"},
		{"a basket line of MaxInt64", commit(bigLine), "basket.items[1].amount.amount_minor"},
		{"2^40 points redeemed", commit(redeemAll), "basket.redeem_points"},
		{"a basket in 2100", commit(at(timestamppb.New(time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)))), "basket.at"},
		{"a basket in year 1", commit(at(timestamppb.New(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)))), "basket.at"},
		{"a basket two years old", commit(at(timestamppb.New(wed.AddDate(-2, 0, 0)))), "basket.at"},
		{"nanos of 2e9", commit(at(&timestamppb.Timestamp{Seconds: wed.Unix(), Nanos: 2e9})), "basket.at"},
		{"Adjust of 10^8", func() error {
			_, err := f.srv.Adjust(c, &mcv1.AdjustRequest{MemberId: m, Points: 100_000_000, Reason: "typo", IdempotencyKey: "adj"})
			return err
		}, "points"},
		{"Adjust of -10^8", func() error {
			_, err := f.srv.Adjust(c, &mcv1.AdjustRequest{MemberId: m, Points: -100_000_000, Reason: "typo", IdempotencyKey: "adj-neg"})
			return err
		}, "points"},
		{"Redeem of MaxInt64", func() error {
			_, err := f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: math.MaxInt64, IdempotencyKey: "red"})
			return err
		}, "points"},
		{"Refund of MaxInt64", func() error {
			_, err := f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m, OrderId: "o1", Amount: &mcv1.Money{Currency: "CNY", AmountMinor: math.MaxInt64}, IdempotencyKey: "ref"})
			return err
		}, "amount.amount_minor"},
		{"Refund in USD", func() error {
			_, err := f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m, OrderId: "o1", Amount: &mcv1.Money{Currency: "USD", AmountMinor: 1}, IdempotencyKey: "ref-usd"})
			return err
		}, "amount.currency"},
	} {
		err := tc.call()
		var fe *benefits.FieldError
		if !errors.Is(err, benefits.ErrInvalid) || !errors.As(err, &fe) || fe.Field != tc.field || !strings.HasPrefix(err.Error(), tc.field+" ") {
			t.Errorf("%s: %v; want ErrInvalid naming %s", tc.name, err, tc.field)
		}
		if fault.Classify(err) != fault.Data {
			t.Errorf("%s: %v is classified %s, want data", tc.name, err, fault.Classify(err))
		}
	}
	if after := f.rows(t); after != before {
		t.Fatalf("refused requests changed the database: %v → %v", before, after)
	}
	// Over gRPC: InvalidArgument with the field, not Internal "bigint out of range".
	_, err := mcv1.NewBenefitsServiceClient(f.grpc(t)).Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: withTotal(math.MaxInt64), IdempotencyKey: "grpc"})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "basket.total.amount_minor") {
		t.Errorf("Commit of MaxInt64 over gRPC: %v; want InvalidArgument naming basket.total.amount_minor", err)
	}
}
