package benefits_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/identity/identitytest"
)

// TestOpenLotsAnswerAsBefore: loads read a member's open lots only, no
// longer the named orders' lots beside them (a union PostgreSQL planned
// again on every call). After purchases, redemptions that spend orders'
// lots, partial and full refunds and a merge, every order's lot is either
// spent or an open lot of the order's member, and for every member and
// every order a Quote (of the order again, of a new basket with and without
// points) and a partial and a full refund answer exactly as with the lots
// the union read.
func TestOpenLotsAnswerAsBefore(t *testing.T) {
	f, c := begin(t)
	ids := identitytest.New(t, f.pool)
	ids.SetClock(func() time.Time { return *f.clock })
	ids.AddMemberData(f.svc)
	m1, m2, m3, m4 := f.member(t), f.member(t), f.member(t), f.member(t)
	now := *f.clock
	commit := func(m, order string, total int64, daysAgo int) {
		t.Helper()
		*f.clock = now.Add(-time.Duration(daysAgo) * 24 * time.Hour)
		f.commit(t, c, &mcv1.CommitRequest{MemberId: m, Basket: basket(order, total), IdempotencyKey: "c-" + order})
	}
	commit(m1, "a1", 50_000, 60)
	commit(m2, "b1", 40_000, 50)
	commit(m1, "a2", 30_000, 40)
	commit(m4, "d1", 20_000, 30)
	commit(m2, "b2", 25_000, 20)
	commit(m1, "a3", 20_000, 10)
	*f.clock = now
	do := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m1, Points: 600, IdempotencyKey: "r1"}) // a1's lot, then part of a2's
	do("redeem m1", err)
	_, err = f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m4, Points: 200, IdempotencyKey: "r4"}) // all of d1's lot
	do("redeem m4", err)
	_, err = f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m2, Points: 300, IdempotencyKey: "r2"})
	do("redeem m2", err)
	_, err = f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m1, OrderId: "a2", Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 10_000}, IdempotencyKey: "f1"})
	do("refund a2", err)
	_, err = f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m1, OrderId: "a1", IdempotencyKey: "f2"})
	do("refund a1", err)
	_, err = f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m2, OrderId: "b1", Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 5_000}, IdempotencyKey: "f3"})
	do("refund b1", err)
	_, err = ids.Merge(c, &mcv1.MergeRequest{SourceMemberId: m2, TargetMemberId: m1, Reason: "same person", IdempotencyKey: "merge"})
	do("merge", err)
	_, err = f.srv.Refund(c, &mcv1.RefundRequest{MemberId: m1, OrderId: "b2", Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 5_000}, IdempotencyKey: "f4"})
	do("refund b2 after the merge", err)

	var strays int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM orders o JOIN point_lots l ON l.lot_id = o.lot_id
		WHERE l.remaining > 0 AND l.member_id <> o.member_id`).Scan(&strays); err != nil || strays != 0 {
		t.Fatalf("%d open order lots held by another member than the order's (%v)", strays, err)
	}

	orders := pgtest.Values[string](t, c, f.pool, `SELECT order_id FROM orders ORDER BY 1`)
	orders = append(orders, "new")
	p := f.svc.Program()
	extra := 0
	for _, m := range []string{m1, m3, m4} {
		member := uuid.MustParse(m)
		for _, o := range orders {
			load := postgres.LoyaltyLoad{Member: member, ActivityFrom: 0, Orders: []string{o}}
			now, err := postgres.LoadLoyalty(c, f.pool, load)
			if err != nil {
				t.Fatal(err)
			}
			// What the union read besides: the named order's lot, by the
			// order of this member, whatever its state.
			before := now
			before.Lots = slices.Clone(now.Lots)
			rows, err := f.pool.Query(c, `SELECT l.lot_id, l.earned, l.remaining, l.earned_at, l.available_at, l.expires_at,
				coalesce(l.order_id, ''), l.origin_member_id, l.kind
				FROM orders o JOIN point_lots l ON l.lot_id = o.lot_id WHERE o.order_id = $2 AND o.member_id = $1`, member, o)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var l postgres.LotRow
				if err := rows.Scan(&l.ID, &l.Earned, &l.Remaining, &l.EarnedAt, &l.AvailableAt, &l.ExpiresAt, &l.OrderID, &l.Origin, &l.Kind); err != nil {
					t.Fatal(err)
				}
				if !slices.ContainsFunc(before.Lots, func(x postgres.LotRow) bool { return x.ID == l.ID }) {
					before.Lots = append(before.Lots, l)
					extra++
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(before.Lots, func(a, b postgres.LotRow) int { return int(a.ID - b.ID) })

			for _, redeem := range []int64{0, 100, 1_000_000} {
				b := basket(o, 20_000)
				b.RedeemPoints = redeem
				got, gotErr := quoteOn(t, f, member, now, b)
				want, wantErr := quoteOn(t, f, member, before, b)
				if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || !proto.Equal(got, want) {
					t.Errorf("member %s, order %s, redeeming %d: quote %v, %v; with the union's lots %v, %v", m, o, redeem, got, gotErr, want, wantErr)
				}
			}
			for _, amount := range []int64{3_000, 0} {
				op := benefits.Op{Kind: benefits.OpRefund, At: *f.clock, OrderID: o, Amount: amount, Origin: m, Cause: "test"}
				got, want := refundOn(t, p, member, now, op), refundOn(t, p, member, before, op)
				if got != want {
					t.Errorf("member %s, order %s, refunding %d:\n  %s\nwith the union's lots\n  %s", m, o, amount, got, want)
				}
			}
		}
	}
	if extra == 0 {
		t.Fatal("the union read no lot beyond the open ones: the scenario tests nothing")
	}
	t.Logf("%d (member, order) loads where the union read a spent lot besides the open ones", extra)
	// And the service's Quote is the open-lots one.
	resp, err := f.srv.Quote(c, &mcv1.QuoteRequest{MemberId: m1, Basket: basket("a2", 1_000)})
	do("quote", err)
	if resp.GetTrace()[0].GetRuleId() != "order" {
		t.Errorf("quote of a committed order: %v", resp)
	}
}

func quoteOn(t *testing.T, f *fixture, member uuid.UUID, rows postgres.LoyaltyRows, b *mcv1.Basket) (*mcv1.QuoteResponse, error) {
	t.Helper()
	st, err := benefits.ToState(member, rows, f.svc.Program())
	if err != nil {
		t.Fatal(err)
	}
	return benefits.QuoteOn(f.svc, st, b)
}

// refundOn applies op to the rows and describes what it did.
func refundOn(t *testing.T, p *benefits.Program, member uuid.UUID, rows postgres.LoyaltyRows, op benefits.Op) string {
	t.Helper()
	st, err := benefits.ToState(member, rows, p)
	if err != nil {
		t.Fatal(err)
	}
	fx, err := benefits.Engine{P: p}.Apply(st, op)
	if err != nil {
		return "refused: " + err.Error()
	}
	out := fmt.Sprintf("no-op %v; ledger %+v; changes %d", fx.NoOp, fx.Ledger, len(fx.Changes(p)))
	if o := fx.Order; o != nil {
		out += fmt.Sprintf("; order refunded %d reversed %d restored %d unrecovered %d full %v", o.Refunded, o.Reversed, o.Restored, o.Unrecovered, o.FullyRefunded)
	}
	bal, avail, pend := st.Balance(op.At)
	out += fmt.Sprintf("; balance %d/%d/%d; lots", bal, avail, pend)
	for _, l := range st.Lots {
		if l.Remaining > 0 {
			out += fmt.Sprintf(" %d:%d", l.ID, l.Remaining)
		}
	}
	return out
}
