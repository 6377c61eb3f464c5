package benefits_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
)

// Group commit (group.go): concurrent mutating calls are applied together
// in one transaction. Each test here holds the committers, queues calls in
// a known order, lets them go as one group and checks that every call gets
// what it gets alone, on the single path.

type answer struct {
	resp proto.Message
	err  error
}

type rpc func(ctx context.Context) (proto.Message, error)

func commitCall(f *fixture, m string, b *mcv1.Basket, key string) rpc {
	return func(c context.Context) (proto.Message, error) {
		return f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: b, IdempotencyKey: key})
	}
}

func redeemCall(f *fixture, m string, points int64, key string) rpc {
	return func(c context.Context) (proto.Message, error) {
		return f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: points, IdempotencyKey: key})
	}
}

func adjustCall(f *fixture, m string, points int64, key string) rpc {
	return func(c context.Context) (proto.Message, error) {
		return f.srv.Adjust(c, &mcv1.AdjustRequest{MemberId: m, Points: points, Reason: "goodwill", IdempotencyKey: key})
	}
}

func refundCall(f *fixture, m, order string, amount int64, key string) rpc {
	return func(c context.Context) (proto.Message, error) {
		req := &mcv1.RefundRequest{MemberId: m, OrderId: order, IdempotencyKey: key}
		if amount != 0 {
			req.Amount = &mcv1.Money{Currency: "CNY", AmountMinor: amount}
		}
		return f.srv.Refund(c, req)
	}
}

func claimCall(f *fixture, m, template, key string) rpc {
	return func(c context.Context) (proto.Message, error) {
		return f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: m, TemplateId: template, IdempotencyKey: key})
	}
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// together makes the calls, each from its own goroutine, in order (each
// queued before the next is made), while the committers are held; then
// releases them, so they are taken as one group, and returns the answers.
// A call answered without being queued (a validation error) is fine.
func together(t *testing.T, f *fixture, calls []rpc) []answer {
	t.Helper()
	c := ctx(t)
	release := benefits.HoldGroups(f.svc)
	out := make([]answer, len(calls))
	var wg sync.WaitGroup
	queued := benefits.QueuedCalls(f.svc)
	for i, call := range calls {
		done := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			r, err := call(c)
			out[i] = answer{r, err}
		}()
		waitUntil(t, fmt.Sprintf("call %d queued", i), func() bool {
			select {
			case <-done:
				return true
			default:
				return benefits.QueuedCalls(f.svc) == queued+1
			}
		})
		queued = benefits.QueuedCalls(f.svc)
	}
	release()
	wg.Wait()
	return out
}

// alone makes the calls one after the other on the single path.
func alone(t *testing.T, f *fixture, calls []rpc) []answer {
	t.Helper()
	f.svc.SetGroupCommit(0, 0)
	defer f.svc.SetGroupCommit(3, 128)
	out := make([]answer, len(calls))
	for i, call := range calls {
		r, err := call(ctx(t))
		out[i] = answer{r, err}
	}
	return out
}

// sameAnswers fails unless a and b answered alike: equal responses, or
// errors with the same text.
// sameDatabases holds the grouped path's database to the single path's.
func sameDatabases(t *testing.T, grouped, single *fixture) {
	t.Helper()
	if a, b := grouped.snapshot(t), single.snapshot(t); a != b {
		t.Errorf("grouped and single-path databases differ at %s", diff(a, b))
	}
}

func sameAnswers(t *testing.T, what string, a, b []answer) {
	t.Helper()
	for i := range a {
		switch {
		case (a[i].err == nil) != (b[i].err == nil):
			t.Errorf("%s call %d: %v / %v; one failed, one did not", what, i, a[i].err, b[i].err)
		case a[i].err != nil && a[i].err.Error() != b[i].err.Error():
			t.Errorf("%s call %d: error %q; alone %q", what, i, a[i].err, b[i].err)
		case a[i].err == nil && !proto.Equal(a[i].resp, b[i].resp):
			t.Errorf("%s call %d answered\n  %v\nalone\n  %v", what, i, a[i].resp, b[i].resp)
		}
	}
}

// memberWithID inserts a member with a chosen id, so two databases can
// hold the same members.
func (f *fixture) memberWithID(t *testing.T, id string) string {
	t.Helper()
	if err := postgres.InsertMember(context.Background(), f.pool, uuid.MustParse(id), *f.clock); err != nil {
		t.Fatal(err)
	}
	return id
}

// snapshot is everything the loyalty programme stored, without generated
// ids and wall-clock times: lots name the cause of their transaction,
// changes are decoded with their ids and times cleared.
func (f *fixture) snapshot(t *testing.T) string {
	t.Helper()
	c := ctx(t)
	var b strings.Builder
	for _, q := range []string{
		`SELECT member_id, change_seq, merged_into FROM members`,
		`SELECT member_id, balance, lifetime_earned FROM points_accounts`,
		`SELECT t.member_id, t.origin_member_id, t.kind, t.reason, t.cause_id, t.created_at, e.account, e.delta, e.member_id
		   FROM ledger_transactions t JOIN ledger_entries e USING (transaction_id)`,
		`SELECT l.member_id, l.origin_member_id, l.earned, l.remaining, l.earned_at, l.available_at, l.expires_at, l.order_id, l.kind, t.cause_id
		   FROM point_lots l LEFT JOIN ledger_transactions t USING (transaction_id)`,
		`SELECT o.order_id, o.member_id, o.origin_member_id, o.at, o.total, o.paid, o.coupon_discount, o.redeemed, o.earned, o.refunded,
		        o.reversed, o.restored, o.unrecovered, o.fully_refunded, o.coupon_codes, o.extras, o.cause, l.order_id, l.kind, l.earned
		   FROM orders o LEFT JOIN point_lots l USING (lot_id)`,
		`SELECT code, member_id, origin_member_id, template_id, state, valid_from, valid_until, order_id, issued_at, cause FROM coupons`,
		`SELECT * FROM member_activity`,
		`SELECT * FROM campaign_usage`,
		`SELECT * FROM campaign_budgets`,
		`SELECT * FROM coupon_template_counts`,
		`SELECT member_id, benefit_id, granted_at, cause, pending_revoke FROM benefit_grants`,
		`SELECT member_id, benefit_id, granted, at, cause FROM benefit_history`,
		`SELECT member_id, from_tier, to_tier, at, reason, cause FROM tier_history`,
		`SELECT member_id, state FROM loyalty_state`,
		`SELECT scope, key, response FROM idempotency_keys`,
	} {
		rows, err := f.pool.Query(c, `SELECT x::text FROM (`+q+`) x ORDER BY 1`)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s\n  %s\n", q, strings.Join(lines, "\n  "))
	}
	rows, err := f.pool.Query(c, `SELECT member_id, sequence, payload FROM outbox ORDER BY member_id, sequence`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var m uuid.UUID
		var seq int64
		var payload []byte
		if err := rows.Scan(&m, &seq, &payload); err != nil {
			t.Fatal(err)
		}
		var ch mcv1.MemberChange
		if err := proto.Unmarshal(payload, &ch); err != nil {
			t.Fatal(err)
		}
		ch.ChangeId, ch.OccurredAt = "", nil
		fmt.Fprintf(&b, "outbox %s %d %v\n", m, seq, &ch)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// diff names the first line where a and b differ.
func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d:\n  %s\nvs\n  %s", i, al[i], bl[i])
		}
	}
	return fmt.Sprintf("%d lines vs %d", len(al), len(bl))
}

// TestGroupAnswersAsAlone: a group mixing members, RPCs, refusals of every
// kind, a member merged away and a call for a member that does not exist
// answers every call as the single path does, one call after the other,
// and leaves the same rows, in one transaction.
func TestGroupAnswersAsAlone(t *testing.T) {
	const (
		m1, m2, m3 = "0190a000-0000-7000-8000-000000000001", "0190a000-0000-7000-8000-000000000002", "0190a000-0000-7000-8000-000000000003"
		m4, m5     = "0190a000-0000-7000-8000-000000000004", "0190a000-0000-7000-8000-000000000005"
		nobody     = "0190a000-0000-7000-8000-0000000000ff"
	)
	setup := func(t *testing.T) (*fixture, string) {
		f := newFixture(t)
		c := ctx(t)
		for _, m := range []string{m1, m2, m3, m4, m5} {
			f.memberWithID(t, m)
		}
		f.commit(t, c, &mcv1.CommitRequest{MemberId: m1, Basket: basket("o1", 100_000), IdempotencyKey: "k1"})
		coupon, err := f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: m1, TemplateId: "C10", IdempotencyKey: "claim"})
		if err != nil {
			t.Fatal(err)
		}
		f.commit(t, c, &mcv1.CommitRequest{MemberId: m4, Basket: basket("q0", 30_000), IdempotencyKey: "k4"})
		if _, err := f.pool.Exec(c, `UPDATE members SET status = 'merged', merged_into = $2 WHERE member_id = $1`, m4, m5); err != nil {
			t.Fatal(err)
		}
		*f.clock = wed.Add(8 * 24 * time.Hour) // the first order's points are available now
		return f, coupon.GetCoupon().GetCode()
	}
	scenario := func(f *fixture, code string) []rpc {
		withCoupon := func(order string, total, points int64) *mcv1.Basket {
			b := basket(order, total)
			b.CouponCodes, b.RedeemPoints = []string{code}, points
			return b
		}
		coffee := basket("p2", 4_000)
		coffee.Items = append(coffee.Items, &mcv1.LineItem{Sku: "LATTE", Category: "coffee", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 3_000}})
		redeem150 := basket("o5", 10_000)
		redeem150.RedeemPoints = 150
		beyondHalf := basket("o6", 1_000)
		beyondHalf.RedeemPoints = 1_000
		return []rpc{
			commitCall(f, m1, withCoupon("o2", 50_000, 1_000), "a"), // coupon and points
			commitCall(f, m2, basket("p1", 30_000), "b"),            //
			redeemCall(f, m1, 5_000, "c"),                           // refused: more than available after "a"
			commitCall(f, m1, withCoupon("o3", 60_000, 0), "d"),     // refused: the coupon "a" used
			refundCall(f, m3, "nope", 0, "e"),                       // not found
			refundCall(f, m1, "o2", 10_000, "f"),                    // of the order "a" made
			adjustCall(f, m2, 500, "g"),                             //
			redeemCall(f, m2, 700, "h"),                             // what "b" and "g" gave... not all available: refused
			redeemCall(f, m2, 500, "i"),                             // what "g" gave
			commitCall(f, m1, redeem150, "j"),                       // refused: not a multiple of 100
			claimCall(f, m2, "C10", "k"),                            //
			commitCall(f, nobody, basket("z1", 1_000), "l"),         // no such member
			commitCall(f, m1, basket("o2", 50_000), "m"),            // the order "a" made: its result
			commitCall(f, m3, basket("q1", 60_000), "n"),            // issues a campaign coupon
			commitCall(f, m4, basket("r1", 20_000), "o"),            // merged into m5: applied to m5
			commitCall(f, m5, coffee, "p"),                          //
			refundCall(f, m4, "q0", 0, "q"),                         // m4's order before the merge, now m5's to refund? as alone
			claimCall(f, m3, "BDAY", "r"),                           // refused: not claimable
			redeemCall(f, "not-a-uuid", 100, "s"),                   // invalid: answered before queuing
			adjustCall(f, m3, 1, "t"),                               //
			commitCall(f, m1, beyondHalf, "u"),                      // refused: points beyond half the basket
			// Repeated keys hold their members' later calls: last.
			commitCall(f, m2, basket("p1", 30_000), "b"), // the key of "b" again: its answer
			commitCall(f, m3, basket("p9", 30_000), "b"), // the key of "b", another request: refused
		}
	}

	grouped, code := setup(t)
	got := together(t, grouped, scenario(grouped, code))
	groups, calls, fallbacks := benefits.GroupStats(grouped.svc)

	single, code2 := setup(t)
	if code2 != code {
		t.Fatalf("setups differ: coupon %s vs %s", code, code2)
	}
	want := alone(t, single, scenario(single, code2))
	sameAnswers(t, "grouped", got, want)

	var ok, refused, notFound, invalid, reused int
	for _, a := range want {
		switch {
		case a.err == nil:
			ok++
		case errors.Is(a.err, benefits.ErrRefused):
			refused++
		case errors.Is(a.err, postgres.ErrNotFound):
			notFound++
		case errors.Is(a.err, benefits.ErrInvalid):
			invalid++
		case errors.Is(a.err, changes.ErrKeyReused):
			reused++
		default:
			t.Errorf("unexpected error %v", a.err)
		}
	}
	if ok < 10 || refused < 5 || notFound < 2 || invalid != 1 || reused != 1 {
		t.Errorf("the scenario answered %d ok, %d refused, %d not found, %d invalid, %d key reused: not what it is meant to test\n%v",
			ok, refused, notFound, invalid, reused, want)
	}
	// The setup's calls (3 groups of one), then the scenario's in one group
	// (all but the invalid call; the repeated key rides along).
	if groups != 4 || calls != 3+len(got)-1 || fallbacks != 0 {
		t.Errorf("%d groups of %d calls in all, %d fallbacks; want the scenario in one group", groups, calls, fallbacks)
	}
	sameDatabases(t, grouped, single)
}

// TestGroupSharesLimitsAcrossMembers: members of one group draw on the same
// campaign budget and coupon template total; the group counts what each
// takes for the next, as one transaction after the other would, without
// falling back.
func TestGroupSharesLimitsAcrossMembers(t *testing.T) {
	src := benefits.DefaultProgramSource()
	src = bytes.Replace(src, []byte("version: default-1"), []byte("version: tight-limits"), 1)
	src = bytes.Replace(src, []byte("    bonus: 20\n    cap_per_member_month: 200\n"), []byte("    bonus: 20\n    cap_per_member_month: 200\n    budget: 50\n"), 1)
	src = bytes.Replace(src, []byte("total_limit: 100000}"), []byte("total_limit: 2}"), 1)
	coffee := func(order string) *mcv1.Basket {
		b := basket(order, 4_000)
		b.Items = append(b.Items, &mcv1.LineItem{Sku: "LATTE", Category: "coffee", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 3_000}})
		return b
	}
	ids := []string{"0190a000-0000-7000-8000-000000000011", "0190a000-0000-7000-8000-000000000012", "0190a000-0000-7000-8000-000000000013"}
	setup := func(t *testing.T) *fixture {
		f := newFixture(t)
		c := ctx(t)
		f.useProgram(t, c, src)
		for _, id := range ids {
			f.memberWithID(t, id)
		}
		return f
	}
	scenario := func(f *fixture) []rpc {
		var calls []rpc
		for i, m := range ids {
			calls = append(calls, commitCall(f, m, coffee(fmt.Sprint("c", i)), fmt.Sprint("c", i)), claimCall(f, m, "P10", fmt.Sprint("p", i)))
		}
		return calls
	}
	grouped := setup(t)
	got := together(t, grouped, scenario(grouped))
	single := setup(t)
	want := alone(t, single, scenario(single))
	sameAnswers(t, "grouped", got, want)
	if want[5].err == nil || !strings.Contains(want[5].err.Error(), "all 2 have been issued") {
		t.Errorf("the third claim of P10: %v; want the template total reached", want[5].err)
	}
	var bonus []int64
	for _, i := range []int{0, 2, 4} {
		if want[i].err != nil {
			t.Fatalf("commit %d: %v", i, want[i].err)
		}
		var b int64
		for _, tr := range want[i].resp.(*mcv1.CommitResponse).GetResult().GetTrace() {
			if tr.GetRuleId() == "campaign:coffee-bonus" {
				b += tr.GetPoints()
			}
		}
		bonus = append(bonus, b)
	}
	if fmt.Sprint(bonus) != "[20 20 10]" {
		t.Errorf("coffee bonuses %v; want [20 20 10] from a budget of 50", bonus)
	}
	if groups, _, fallbacks := benefits.GroupStats(grouped.svc); groups != 1 || fallbacks != 0 {
		t.Errorf("%d groups, %d fallbacks; want one group", groups, fallbacks)
	}
	sameDatabases(t, grouped, single)
}

// TestGroupIdempotencyKeys: a key repeated within a group takes the first
// call's answer (or ErrKeyReused); when the first call is refused, the
// repeat runs after it, before the member's later calls; a retry after the
// group replays the stored answer.
func TestGroupIdempotencyKeys(t *testing.T) {
	f, c, m := beginWithMember(t)
	f.adjust(t, c, &mcv1.AdjustRequest{MemberId: m, Points: 1_000, Reason: "start", IdempotencyKey: "start"})
	got := together(t, f, []rpc{
		redeemCall(f, m, 100, "dup"),
		redeemCall(f, m, 100, "dup"),
		redeemCall(f, m, 200, "dup"),
		redeemCall(f, m, 1_000_000, "refused-first"),
		redeemCall(f, m, 300, "refused-first"), // another request under the key: runs, as it would after the refusal
		adjustCall(f, m, 1, "after"),           // after it
	})
	if got[0].err != nil || !proto.Equal(got[0].resp, got[1].resp) || got[1].err != nil {
		t.Errorf("repeat in the group: %v, %v; want the first answer %v", got[1].resp, got[1].err, got[0].resp)
	}
	if !errors.Is(got[2].err, changes.ErrKeyReused) {
		t.Errorf("same key, other request: %v; want ErrKeyReused", got[2].err)
	}
	if !errors.Is(got[3].err, benefits.ErrRefused) {
		t.Errorf("overspend: %v", got[3].err)
	}
	if got[4].err != nil || got[4].resp.(*mcv1.RedeemResponse).GetBalance() != 600 {
		t.Errorf("redeem after the refused first call: %v, %v; want balance 600", got[4].resp, got[4].err)
	}
	if got[5].err != nil || got[5].resp.(*mcv1.AdjustResponse).GetBalance() != 601 {
		t.Errorf("the member's next call: %v, %v; want balance 601 (after the redemption)", got[5].resp, got[5].err)
	}
	// The adjustment; the first two calls (a repeated key holds the
	// member's later calls); the next three; the repeat of the refused
	// call with the call after it.
	if groups, _, _ := benefits.GroupStats(f.svc); groups != 4 {
		t.Errorf("%d groups; want 4", groups)
	}
	// Retries after the group replay.
	for i, key := range []string{"dup", "refused-first"} {
		r, err := f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: []int64{100, 300}[i], IdempotencyKey: key})
		if err != nil || !proto.Equal(r, got[[]int{0, 4}[i]].resp) {
			t.Errorf("retry of %s: %v, %v", key, r, err)
		}
	}
	var redeems int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM ledger_transactions WHERE kind = 'redeem'`).Scan(&redeems); err != nil || redeems != 2 {
		t.Errorf("%d redemptions (%v); want 2", redeems, err)
	}
}

// TestGroupWaitsForAKeyInFlightElsewhere: a key whose first call is in a
// transaction of another process holds the group until that commits, then
// the call gets the stored answer.
func TestGroupWaitsForAKeyInFlightElsewhere(t *testing.T) {
	f, c, m := beginWithMember(t)
	other := f.member(t)
	f.adjust(t, c, &mcv1.AdjustRequest{MemberId: m, Points: 1_000, Reason: "start", IdempotencyKey: "start"})
	req := &mcv1.RedeemRequest{MemberId: m, Points: 100, IdempotencyKey: "elsewhere"}
	tx, err := f.pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(c) //nolint:errcheck
	// The other process's call: key locked, answer stored, not committed.
	var theirs mcv1.RedeemResponse
	if _, err := changes.Idempotent(c, tx, "benefits.Redeem", "elsewhere", req, &theirs, func() error {
		theirs.TransactionId, theirs.Balance = "theirs", 42
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan []answer)
	go func() {
		done <- together(t, f, []rpc{adjustCall(f, other, 5, "other"), redeemCall(f, m, 100, "elsewhere")})
	}()
	select {
	case got := <-done:
		t.Fatalf("the group did not wait for the key: %v", got)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(c); err != nil {
		t.Fatal(err)
	}
	got := <-done
	if got[0].err != nil {
		t.Fatal(got[0].err)
	}
	if got[1].err != nil || !proto.Equal(got[1].resp, &theirs) {
		t.Fatalf("call with the key: %v, %v; want the stored %v", got[1].resp, got[1].err, &theirs)
	}
	var redeems int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM ledger_transactions WHERE kind = 'redeem'`).Scan(&redeems); err != nil || redeems != 0 {
		t.Errorf("%d redemptions (%v); want none", redeems, err)
	}
}

// TestGroupFailures: a group whose transaction fails is retried (a
// serialization failure) or its calls run one by one (any other error,
// including a commit whose outcome was lost): every call is applied once.
func TestGroupFailures(t *testing.T) {
	for _, tc := range []struct {
		name              string
		fault             func(stage string, attempt int) error
		fallback, retried bool
	}{
		{"serialization failure", func(stage string, attempt int) error {
			if stage == "commit" && attempt == 0 {
				return &pgconn.PgError{Code: "40001", Message: "could not serialize access"}
			}
			return nil
		}, false, true},
		{"deadlock", func(stage string, attempt int) error {
			if stage == "commit" && attempt < 2 {
				return &pgconn.PgError{Code: "40P01", Message: "deadlock detected"}
			}
			return nil
		}, false, true},
		{"connection lost before commit", func(stage string, attempt int) error {
			if stage == "commit" {
				return errors.New("connection lost")
			}
			return nil
		}, true, false},
		{"commit outcome lost", func(stage string, attempt int) error {
			if stage == "committed" {
				return errors.New("connection lost after COMMIT was sent")
			}
			return nil
		}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			c := ctx(t)
			m1, m2 := f.member(t), f.member(t)
			f.adjust(t, c, &mcv1.AdjustRequest{MemberId: m1, Points: 1_000, Reason: "start", IdempotencyKey: "start"})
			attempts := 0
			benefits.SetGroupFault(f.svc, func(stage string, attempt int) error {
				if stage == "commit" {
					attempts++
				}
				return tc.fault(stage, attempt)
			})
			got := together(t, f, []rpc{
				commitCall(f, m1, basket("o1", 10_000), "a"),
				redeemCall(f, m1, 300, "b"),
				redeemCall(f, m2, 300, "c"), // refused
				commitCall(f, m2, basket("o2", 20_000), "d"),
			})
			benefits.SetGroupFault(f.svc, nil)
			if got[0].err != nil || got[1].err != nil || got[3].err != nil || !errors.Is(got[2].err, benefits.ErrRefused) {
				t.Fatalf("answers %v", got)
			}
			if b := got[1].resp.(*mcv1.RedeemResponse).GetBalance(); b != 800 {
				t.Errorf("balance after the redemption %d; want 800 (1,000 + 100 pending - 300)", b)
			}
			if _, _, fallbacks := benefits.GroupStats(f.svc); (fallbacks == 1) != tc.fallback || (attempts > 1) != tc.retried {
				t.Errorf("%d fallbacks after %d attempts", fallbacks, attempts)
			}
			var txns, orders, keys int
			if err := f.pool.QueryRow(c, `SELECT (SELECT count(*) FROM ledger_transactions), (SELECT count(*) FROM orders),
				(SELECT count(*) FROM idempotency_keys)`).Scan(&txns, &orders, &keys); err != nil {
				t.Fatal(err)
			}
			// start, two earns, one redemption; two orders; four keys.
			if txns != 4 || orders != 2 || keys != 4 {
				t.Errorf("%d ledger transactions, %d orders, %d keys; want 4, 2, 4", txns, orders, keys)
			}
			for i, r := range []rpc{commitCall(f, m1, basket("o1", 10_000), "a"), redeemCall(f, m1, 300, "b")} {
				again, err := r(c)
				if err != nil || !proto.Equal(again, got[i].resp) {
					t.Errorf("retry of call %d: %v, %v; want %v", i, again, err, got[i].resp)
				}
			}
		})
	}
}

// TestGroupRefusesAnOrderIdTakenWithinIt: two members committing the same
// order id in one group: the first member applied takes it and the
// other's call is refused with ErrOrderTaken within the group (order ids
// are unique across members), as it is on the single path; the group
// commits without falling back to calls one by one (before, the order's
// key conflicted at the insert and the group rolled back).
func TestGroupRefusesAnOrderIdTakenWithinIt(t *testing.T) {
	ids := []string{"0190a000-0000-7000-8000-000000000021", "0190a000-0000-7000-8000-000000000022"}
	setup := func(t *testing.T) *fixture {
		f := newFixture(t)
		for _, id := range ids {
			f.memberWithID(t, id)
		}
		return f
	}
	scenario := func(f *fixture) []rpc {
		return []rpc{commitCall(f, ids[0], basket("same", 10_000), "a"), commitCall(f, ids[1], basket("same", 10_000), "b"),
			commitCall(f, ids[1], basket("own", 10_000), "c")}
	}
	grouped := setup(t)
	got := together(t, grouped, scenario(grouped))
	single := setup(t)
	want := alone(t, single, scenario(single))
	sameAnswers(t, "grouped", got, want)
	if got[0].err != nil || !errors.Is(got[1].err, benefits.ErrOrderTaken) || got[2].err != nil {
		t.Errorf("answers %v; want the second call refused with ErrOrderTaken, the others applied", got)
	}
	if _, _, fallbacks := benefits.GroupStats(grouped.svc); fallbacks != 0 {
		t.Errorf("%d fallbacks; want none", fallbacks)
	}
	sameDatabases(t, grouped, single)
}

// TestGroupCancellation: a call whose caller gives up while it is queued is
// not applied; one already taken into a group is applied, its answer
// stored under its key, while its caller gets the context's error at once.
func TestGroupCancellation(t *testing.T) {
	f, c, m := beginWithMember(t)

	release := benefits.HoldGroups(f.svc)
	qctx, cancel := context.WithCancel(c)
	errc := make(chan error, 1)
	go func() {
		_, err := f.srv.Commit(qctx, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 10_000), IdempotencyKey: "queued"})
		errc <- err
	}()
	waitUntil(t, "queued", func() bool { return benefits.QueuedCalls(f.svc) == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled while queued: %v", err)
	}
	release()
	waitUntil(t, "queue empty", func() bool { return benefits.QueuedCalls(f.svc) == 0 })

	inGroup := make(chan struct{})
	proceed := make(chan struct{})
	benefits.SetGroupFault(f.svc, func(stage string, attempt int) error {
		if stage == "commit" {
			close(inGroup)
			<-proceed
		}
		return nil
	})
	gctx, cancel2 := context.WithCancel(c)
	go func() {
		_, err := f.srv.Commit(gctx, &mcv1.CommitRequest{MemberId: m, Basket: basket("o2", 20_000), IdempotencyKey: "taken"})
		errc <- err
	}()
	<-inGroup
	cancel2()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled while in a group: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a caller cancelled while its call was in a group waited for the group")
	}
	close(proceed)
	waitUntil(t, "group done", func() bool {
		var n int
		_ = f.pool.QueryRow(c, `SELECT count(*) FROM idempotency_keys WHERE key = 'taken'`).Scan(&n)
		return n == 1
	})
	benefits.SetGroupFault(f.svc, nil)
	r, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o2", 20_000), IdempotencyKey: "taken"})
	if err != nil || r.GetTransactionId() != "o2" || r.GetResult().GetPointsEarned() == 0 {
		t.Fatalf("retry of the call taken into a group: %v, %v", r, err)
	}
	var orders []string
	rows, _ := f.pool.Query(c, `SELECT order_id FROM orders ORDER BY 1`)
	orders, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || fmt.Sprint(orders) != "[o2]" {
		t.Fatalf("orders %v (%v); want only o2", orders, err)
	}
}

// TestGroupValidatesBeforeQueuing: a request the service cannot take is
// answered at once, even while the committers are held.
func TestGroupValidatesBeforeQueuing(t *testing.T) {
	f, c, m := beginWithMember(t)
	release := benefits.HoldGroups(f.svc)
	defer release()
	future := basket("o1", 100)
	future.At = timestamppb.New(f.clock.Add(time.Hour))
	for _, call := range []rpc{
		commitCall(f, "x", basket("o1", 100), "a"),
		commitCall(f, m, future, "b"),
		redeemCall(f, m, -5, "c"),
		refundCall(f, m, "o1", -1, "d"),
	} {
		if _, err := call(c); !errors.Is(err, benefits.ErrInvalid) {
			t.Errorf("invalid request: %v; want ErrInvalid", err)
		}
	}
	if n := benefits.QueuedCalls(f.svc); n != 0 {
		t.Errorf("%d calls queued", n)
	}
}

// TestGroupsUnderLoad: many callers at once, several calls per member in
// flight, through the committers: every call answered, each member's
// calls in the order each caller made them, the ledger balanced (checked at
// cleanup).
func TestGroupsUnderLoad(t *testing.T) {
	f, c := begin(t)
	members := make([]string, 8)
	for i := range members {
		members[i] = f.member(t)
		f.adjust(t, c, &mcv1.AdjustRequest{MemberId: members[i], Points: 10_000, Reason: "start", IdempotencyKey: "start-" + members[i]})
	}
	const callers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, callers*each)
	for w := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := members[w%len(members)]
			for i := range each {
				key := fmt.Sprintf("w%d-%d", w, i)
				var err error
				switch i % 4 {
				case 0, 1:
					_, err = f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket(key, int64(1_000+i*100)), IdempotencyKey: key})
				case 2:
					_, err = f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: 100, IdempotencyKey: key})
				case 3:
					_, err = f.srv.Adjust(c, &mcv1.AdjustRequest{MemberId: m, Points: 7, Reason: "load", IdempotencyKey: key})
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", key, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	groups, calls, fallbacks := benefits.GroupStats(f.svc)
	t.Logf("%d calls in %d groups, %d fallbacks", calls, groups, fallbacks)
	var orders, redeems, adjusts int
	if err := f.pool.QueryRow(c, `SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM ledger_transactions WHERE kind = 'redeem'),
		(SELECT count(*) FROM ledger_transactions WHERE kind = 'adjust')`).Scan(&orders, &redeems, &adjusts); err != nil {
		t.Fatal(err)
	}
	if orders != callers*each/2 || redeems != callers*each/4 || adjusts != callers*each/4+len(members) {
		t.Errorf("%d orders, %d redemptions, %d adjustments", orders, redeems, adjusts)
	}
}
