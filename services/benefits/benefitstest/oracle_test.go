package benefitstest

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

var cst = func() *time.Location {
	l, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		panic(err)
	}
	return l
}()

func at(y int, mo time.Month, d, h, mi, s int) time.Time {
	return time.Date(y, mo, d, h, mi, s, 0, cst).UTC()
}

func defaultYAML(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("../program.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const minimalHead = `version: test
currency: CNY
timezone: Asia/Shanghai
rounding: floor
redemption: {points_per_unit: 100, max_share: 0.5}
`

type harness struct {
	t *testing.T
	o *Oracle
	n int
}

func newHarness(t *testing.T, programYAML string) *harness {
	t.Helper()
	o, err := New([]byte(programYAML))
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, o: o}
}

func (h *harness) apply(ev *mcv1.MemberEvent) {
	h.t.Helper()
	h.n++
	ev.EventId = fmt.Sprintf("e%d", h.n)
	if err := h.o.Apply(ev); err != nil {
		h.t.Fatal(err)
	}
}

func event(member string, when time.Time) *mcv1.MemberEvent {
	return &mcv1.MemberEvent{MemberId: member, OccurredAt: timestamppb.New(when), Channel: mcv1.Channel_CHANNEL_POS, StoreId: "s1"}
}

type txOpt func(*mcv1.Transaction)

func coffee() txOpt {
	return func(tx *mcv1.Transaction) { tx.Items[0].Category = "coffee" }
}

func withCoupons(codes ...string) txOpt {
	return func(tx *mcv1.Transaction) { tx.CouponCodes = codes }
}

func redeem(p int64) txOpt {
	return func(tx *mcv1.Transaction) { tx.PointsRedeemed = p }
}

func cny(v int64) *mcv1.Money { return &mcv1.Money{Currency: "CNY", AmountMinor: v} }

func (h *harness) buy(member, orderID string, when time.Time, total int64, opts ...txOpt) {
	h.t.Helper()
	tx := &mcv1.Transaction{OrderId: orderID, Total: cny(total), Items: []*mcv1.LineItem{
		{Sku: "SKU-1", Category: "grocery", Quantity: 1, Amount: cny(total)},
	}}
	for _, f := range opts {
		f(tx)
	}
	ev := event(member, when)
	ev.Payload = &mcv1.MemberEvent_Transaction{Transaction: tx}
	h.apply(ev)
}

func (h *harness) refund(member, orderID string, when time.Time, amount int64) {
	h.t.Helper()
	ev := event(member, when)
	ev.Payload = &mcv1.MemberEvent_Refund{Refund: &mcv1.Refund{OrderId: orderID, Amount: cny(amount)}}
	h.apply(ev)
}

func (h *harness) checkIn(member string, when time.Time) {
	h.t.Helper()
	ev := event(member, when)
	ev.Payload = &mcv1.MemberEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
	h.apply(ev)
}

func (h *harness) referral(member string, when time.Time) {
	h.t.Helper()
	ev := event(member, when)
	ev.Payload = &mcv1.MemberEvent_Referral{Referral: &mcv1.Referral{ReferralCode: "r"}}
	h.apply(ev)
}

func (h *harness) signUp(member string, when time.Time, birth time.Time) {
	h.t.Helper()
	ev := event(member, when)
	ev.Payload = &mcv1.MemberEvent_SignUp{SignUp: &mcv1.SignUp{BirthDate: timestamppb.New(birth)}}
	h.apply(ev)
}

func (h *harness) earned(member string) []int64 {
	var out []int64
	for _, l := range h.o.Lots(member) {
		out = append(out, l.Earned)
	}
	return out
}

func (h *harness) remaining(member string) []int64 {
	var out []int64
	for _, l := range h.o.Lots(member) {
		out = append(out, l.Remaining)
	}
	return out
}

func (h *harness) order(id string) OrderInfo {
	h.t.Helper()
	info, ok := h.o.Order(id)
	if !ok {
		h.t.Fatalf("order %s not recorded", id)
	}
	return info
}

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// checkInvariants asserts the ledger invariants of §2. Every member must
// have been advanced to (or have operated at) a time after which no lot has
// expired unprocessed, i.e. call AdvanceAll first when in doubt.
func checkInvariants(t *testing.T, o *Oracle) {
	t.Helper()
	l := o.Ledger()
	var sum, balances int64
	for _, v := range l {
		sum += v
	}
	if sum != 0 {
		t.Errorf("ledger entries sum to %d, want 0", sum)
	}
	for _, id := range o.Members() {
		var rem int64
		for _, lot := range o.Lots(id) {
			if lot.Remaining < 0 || lot.Remaining > lot.Earned {
				t.Fatalf("member %s: lot %+v out of range", id, lot)
			}
			rem += lot.Remaining
		}
		bal, avail, pend := o.Balance(id, o.Clock(id))
		if bal != rem || avail+pend != bal || bal < 0 {
			t.Fatalf("member %s: balance %d (avail %d, pending %d), lots hold %d", id, bal, avail, pend, rem)
		}
		if l["member:"+id] != bal {
			t.Fatalf("member %s: ledger %d, balance %d", id, l["member:"+id], bal)
		}
		balances += bal
	}
	tot := o.Totals()
	if got, want := l[AccountLiability], -(tot[KindEarn] - tot[KindReverse] - tot[KindExpire]); got != want {
		t.Errorf("liability = %d, want -(earned - reversed - expired) = %d", got, want)
	}
	if got, want := l[AccountRedemptions], tot[KindRedeem]-tot[KindRestore]; got != want {
		t.Errorf("redemptions = %d, want redeemed - restored = %d", got, want)
	}
	if l[AccountAdjustments] != 0 {
		t.Errorf("adjustments = %d, want 0", l[AccountAdjustments])
	}
	if got := -(l[AccountLiability] + l[AccountRedemptions]); got != balances {
		t.Errorf("-(liability + redemptions) = %d, sum of balances %d", got, balances)
	}
}

func TestBasePointsAndTierMultiplierRounding(t *testing.T) {
	for _, tc := range []struct {
		rounding string
		want     []int64
	}{
		{"floor", []int64{2010, 148, 148, 100}},
		{"round", []int64{2010, 148, 149, 100}},
		{"ceil", []int64{2010, 149, 149, 100}},
	} {
		t.Run(tc.rounding, func(t *testing.T) {
			h := newHarness(t, strings.Replace(defaultYAML(t), "rounding: floor", "rounding: "+tc.rounding, 1))
			p1 := at(2025, 1, 6, 10, 0, 0) // Monday
			// ¥2,000 at normal: 2000 base + 10 big-basket; then silver at once.
			h.buy("m", "o1", p1, 200000)
			// Silver ×1.2: 123.45 × 1.2 = 148.14; 123.75 × 1.2 = 148.5.
			h.buy("m", "o2", at(2025, 1, 7, 10, 0, 0), 12345)
			h.buy("m", "o3", at(2025, 1, 8, 10, 0, 0), 12375) // third order: +100 mission
			eq(t, "earned", h.earned("m"), tc.want)
			lots := h.o.Lots("m")
			eq(t, "available_at", lots[0].AvailableAt, p1.Add(168*time.Hour))
			eq(t, "expires_at", lots[0].ExpiresAt, p1.Add(8760*time.Hour))
			eq(t, "mission lot available at once", lots[3].AvailableAt, at(2025, 1, 8, 10, 0, 0))
			eq(t, "history", h.o.TierHistory("m"), []TierMove{{From: "normal", To: "silver", At: p1, Reason: "upgrade"}})
			eq(t, "grants", h.o.Grants("m"), []string{"free_shipping", "priority_checkout"})
			eq(t, "coupons", h.o.Coupons("m"), map[string]map[string]int{"C10": {"issued": 1}})
			eq(t, "o1 extras", h.order("o1").Extras, map[string]int64{"big-basket": 10})
			checkInvariants(t, h.o)
		})
	}
}

func TestWeekendDoubleDailyCap(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	// 00:30 on Saturday in Shanghai is Friday 16:30 UTC: still the weekend.
	h.buy("w", "o1", at(2025, 1, 4, 0, 30, 0), 30000) // 300 + 300
	h.buy("w", "o2", at(2025, 1, 4, 15, 0, 0), 40000) // 400 + min(400, 200)
	h.buy("w", "o3", at(2025, 1, 4, 18, 0, 0), 10000) // 100 + 0 (cap used), +100 mission
	h.buy("w", "o4", at(2025, 1, 5, 10, 0, 0), 10000) // Sunday: 100 + 100
	h.buy("w", "o5", at(2025, 1, 6, 10, 0, 0), 10000) // Monday: 100
	eq(t, "earned", h.earned("w"), []int64{600, 600, 100, 100, 200, 100})
	eq(t, "o2 extras", h.order("o2").Extras, map[string]int64{"weekend-double": 200})
	eq(t, "o3 extras", h.order("o3").Extras, map[string]int64{})
	checkInvariants(t, h.o)
}

func TestCoffeeBonusMonthlyCap(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	days := []int{6, 7, 8, 9, 10, 13, 14, 15, 16, 17, 20} // weekdays of January 2025
	for i, d := range days {
		h.buy("c", fmt.Sprintf("o%d", i), at(2025, 1, d, 9, 0, 0), 1000, coffee())
	}
	h.buy("c", "feb", at(2025, 2, 3, 9, 0, 0), 1000, coffee())
	var got []int64
	for i := range days {
		got = append(got, h.order(fmt.Sprintf("o%d", i)).Earned)
	}
	got = append(got, h.order("feb").Earned)
	// 10 base + 20 coffee until 200 are given in the month.
	eq(t, "earned per order", got, []int64{30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 10, 30})
	eq(t, "o10 extras", h.order("o10").Extras, map[string]int64{})
	checkInvariants(t, h.o)
}

const bestOfProgram = minimalHead + `tiers:
  ladder:
    - {id: normal, multiplier: 1.0}
stacking: best_of
campaigns:
  - {id: weekend, weekdays: [0, 6], multiplier: 2.0}
  - {id: coffee, condition: 'basket.items.exists(i, i.category == "coffee")', bonus: 20, coupon: C10}
  - {id: big, condition: 'basket.total >= 50000', bonus: 100, cap_per_member_month: 150}
coupons:
  - {id: C10, amount_off: 1000, min_spend: 5000, valid_days: 30, per_member_limit: 5}
`

func TestBestOfStacking(t *testing.T) {
	h := newHarness(t, bestOfProgram)
	h.buy("b", "o1", at(2025, 1, 4, 10, 0, 0), 10000, coffee()) // weekend 100 beats coffee 20
	eq(t, "coupons after o1", h.o.Coupons("b"), map[string]map[string]int{})
	h.buy("b", "o2", at(2025, 1, 4, 11, 0, 0), 1000, coffee()) // coffee 20 beats weekend 10
	eq(t, "coupons after o2", h.o.Coupons("b"), map[string]map[string]int{"C10": {"issued": 1}})
	h.buy("b", "o3", at(2025, 1, 6, 10, 0, 0), 60000, coffee()) // big 100 beats coffee 20
	h.buy("b", "o4", at(2025, 1, 7, 10, 0, 0), 60000, coffee()) // big capped to 50 still beats 20
	h.buy("b", "o5", at(2025, 1, 8, 10, 0, 0), 60000, coffee()) // big capped to 0: coffee 20
	eq(t, "earned", h.earned("b"), []int64{200, 30, 700, 650, 620})
	eq(t, "o1 extras", h.order("o1").Extras, map[string]int64{"weekend": 100})
	eq(t, "o4 extras", h.order("o4").Extras, map[string]int64{"big": 50})
	eq(t, "o5 extras", h.order("o5").Extras, map[string]int64{"coffee": 20})
	eq(t, "coupons", h.o.Coupons("b"), map[string]map[string]int{"C10": {"issued": 2}})

	// Ties: the first in programme order counts; the other's coupon does
	// not fire.
	h = newHarness(t, minimalHead+`tiers: {ladder: [{id: normal}]}
stacking: best_of
campaigns:
  - {id: a, bonus: 50}
  - {id: b, bonus: 50, coupon: C10}
coupons:
  - {id: C10, amount_off: 1000, min_spend: 5000, valid_days: 30}
`)
	h.buy("t", "o1", at(2025, 1, 6, 10, 0, 0), 1000)
	eq(t, "tie extras", h.order("o1").Extras, map[string]int64{"a": 50})
	eq(t, "tie earned", h.order("o1").Earned, int64(60))
	eq(t, "tie coupons", h.o.Coupons("t"), map[string]map[string]int{})
}

func TestBudgetExhaustionAcrossMembers(t *testing.T) {
	h := newHarness(t, minimalHead+`tiers: {ladder: [{id: normal}]}
campaigns:
  - {id: promo, bonus: 30, budget: 70}
`)
	for i, m := range []string{"m1", "m2", "m3", "m4"} {
		h.buy(m, "o-"+m, at(2025, 1, 6, 10, i, 0), 1000)
	}
	var got []int64
	for _, m := range []string{"m1", "m2", "m3", "m4"} {
		got = append(got, h.order("o-"+m).Earned)
	}
	eq(t, "earned", got, []int64{40, 40, 20, 10})
	eq(t, "m4 extras", h.order("o-m4").Extras, map[string]int64{})
	checkInvariants(t, h.o)
}

func TestRedemption(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	h.buy("r", "r1", at(2025, 1, 6, 10, 0, 0), 49900) // 499, available Jan 13
	h.buy("r", "r2", at(2025, 1, 8, 10, 0, 0), 40000) // 400, available Jan 15
	jan14 := at(2025, 1, 14, 10, 0, 0)
	// 600 > 499 available (the 400 are pending): refused, nothing changes.
	h.buy("r", "r3", jan14, 20000, redeem(600))
	h.buy("r", "r3", jan14, 20000, redeem(150)) // not a multiple of 100
	h.buy("r", "r3", jan14, 300, redeem(200))   // ¥2 > half of ¥3
	eq(t, "refused", h.o.Refused(), map[string]int{"insufficient_points": 1, "redeem_not_multiple": 1, "redeem_over_share": 1})
	if _, ok := h.o.Order("r3"); ok {
		t.Fatal("refused order recorded")
	}
	eq(t, "clock after refusals", h.o.Clock("r"), at(2025, 1, 8, 10, 0, 0))
	bal, avail, pend := h.o.Balance("r", jan14)
	eq(t, "balance after refusals", []int64{bal, avail, pend}, []int64{899, 499, 400})

	// The same order id succeeds later: 700 spent from the earliest-expiring
	// lot first; paid 19300 earns 193; third order of January earns 100.
	jan16 := at(2025, 1, 16, 10, 0, 0)
	h.buy("r", "r3", jan16, 20000, redeem(700))
	eq(t, "earned", h.earned("r"), []int64{499, 400, 193, 100})
	eq(t, "remaining", h.remaining("r"), []int64{0, 199, 193, 100})
	bal, avail, pend = h.o.Balance("r", jan16)
	eq(t, "balance", []int64{bal, avail, pend}, []int64{492, 299, 193})
	eq(t, "r3 paid", h.order("r3").Paid, int64(19300))
	l := h.o.Ledger()
	eq(t, "ledger", []int64{l["member:r"], l[AccountRedemptions], l[AccountLiability]}, []int64{492, 700, -1192})
	checkInvariants(t, h.o)
}

func TestRefundReversal(t *testing.T) {
	h := newHarness(t, defaultYAML(t))

	// Two partial refunds add up exactly to the full reversal.
	h.buy("f", "f1", at(2025, 1, 6, 10, 0, 0), 9999) // 99
	h.refund("f", "f1", at(2025, 1, 7, 10, 0, 0), 3000)
	eq(t, "first reversal", h.order("f1").Reversed, int64(29)) // floor(99*3000/9999)
	h.refund("f", "f1", at(2025, 1, 8, 10, 0, 0), 6999)
	o := h.order("f1")
	eq(t, "reversed", []any{o.Reversed, o.Unrecovered, o.FullyRefunded}, []any{99, 0, true})
	eq(t, "remaining", h.remaining("f"), []int64{0})
	h.refund("f", "f1", at(2025, 1, 9, 10, 0, 0), 0) // nothing left: refused
	h.buy("f", "f2", at(2025, 1, 9, 10, 0, 0), 5000)
	h.refund("f", "f2", at(2025, 1, 9, 11, 0, 0), 6000) // more than paid: refused
	eq(t, "refused", h.o.Refused(), map[string]int{"refund_already_full": 1, "refund_exceeds_paid": 1})

	// Redeemed points come back in proportion, as new available lots.
	for d := 1; d <= 3; d++ {
		h.referral("g", at(2025, 1, d, 10, 0, 0))
	}
	h.buy("g", "g1", at(2025, 1, 6, 10, 0, 0), 20000, redeem(500)) // paid 19500, earns 195
	h.refund("g", "g1", at(2025, 1, 7, 10, 0, 0), 6500)            // reverse 65, restore 166
	h.refund("g", "g1", at(2025, 1, 8, 10, 0, 0), 0)               // reverse 130, restore 334
	eq(t, "g lots", h.earned("g"), []int64{200, 200, 200, 195, 166, 334})
	eq(t, "g remaining", h.remaining("g"), []int64{0, 0, 100, 0, 166, 334})
	g1 := h.order("g1")
	eq(t, "g1", []int64{g1.Reversed, g1.Restored, g1.Unrecovered}, []int64{195, 500, 0})

	// Reversal beyond what the member holds: pending lots are taken too,
	// the rest is unrecovered, the balance never goes negative.
	h.buy("u", "u1", at(2025, 1, 6, 10, 0, 0), 10000)             // 100
	h.buy("u", "u2", at(2025, 1, 14, 10, 0, 0), 200, redeem(100)) // spends the 100, earns 1 (pending)
	h.refund("u", "u1", at(2025, 1, 15, 10, 0, 0), 0)
	u1 := h.order("u1")
	eq(t, "u1", []int64{u1.Reversed, u1.Unrecovered}, []int64{1, 99})
	bal, _, _ := h.o.Balance("u", at(2025, 1, 15, 10, 0, 0))
	eq(t, "u balance", bal, int64(0))
	eq(t, "totals", h.o.Totals()[KindReverse], int64(99+195+1))
	checkInvariants(t, h.o)
}

func TestCouponRestoredOnlyOnFullRefund(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	h.buy("k", "k1", at(2025, 1, 6, 10, 0, 0), 50000) // 500 + 10, issues C10
	code := CouponCode("k", "C10", 1)
	cl := h.o.CouponList("k")
	eq(t, "coupon", []any{cl[0].Code, cl[0].ValidUntil}, []any{code, at(2025, 2, 5, 10, 0, 0)})
	h.buy("k", "k2", at(2025, 1, 7, 10, 0, 0), 6000, withCoupons(code))
	eq(t, "k2", []int64{h.order("k2").CouponDiscount, h.order("k2").Paid, h.order("k2").Earned}, []int64{1000, 5000, 50})
	eq(t, "after use", h.o.Coupons("k"), map[string]map[string]int{"C10": {"used": 1}})
	h.refund("k", "k2", at(2025, 1, 8, 10, 0, 0), 2000)
	eq(t, "after partial refund", h.o.Coupons("k"), map[string]map[string]int{"C10": {"used": 1}})
	h.refund("k", "k2", at(2025, 1, 9, 10, 0, 0), 0)
	eq(t, "after full refund", h.o.Coupons("k"), map[string]map[string]int{"C10": {"restored": 1}})
	h.buy("k", "k3", at(2025, 1, 10, 10, 0, 0), 5000, withCoupons(code)) // usable again
	eq(t, "k3 paid", h.order("k3").Paid, int64(4000))
	h.refund("k", "k3", at(2025, 2, 6, 10, 0, 0), 0) // coupon no longer valid: stays used
	eq(t, "after late full refund", h.o.Coupons("k"), map[string]map[string]int{"C10": {"used": 1}})
	h.buy("k", "k4", at(2025, 2, 6, 11, 0, 0), 6000, withCoupons(code))
	eq(t, "refused", h.o.Refused(), map[string]int{"coupon_invalid": 1})
	checkInvariants(t, h.o)
}

func TestPercentCouponRounding(t *testing.T) {
	h := newHarness(t, strings.Replace(minimalHead, "rounding: floor", "rounding: round", 1)+`tiers: {ladder: [{id: normal}]}
campaigns:
  - {id: give, bonus: 1, coupon: P}
coupons:
  - {id: P, percent_off: 12.5, min_spend: 1000, valid_days: 14}
`)
	h.buy("p", "p1", at(2025, 1, 6, 10, 0, 0), 1000)
	// 1004 × 12.5% = 125.5 → 126 off; paid 878 → 8.78 → 9 points, + 1.
	h.buy("p", "p2", at(2025, 1, 7, 10, 0, 0), 1004, withCoupons(CouponCode("p", "P", 1)))
	p2 := h.order("p2")
	eq(t, "p2", []int64{p2.CouponDiscount, p2.Paid, p2.Earned}, []int64{126, 878, 10})
	h.buy("p", "p3", at(2025, 1, 8, 10, 0, 0), 999, withCoupons(CouponCode("p", "P", 2))) // below min_spend
	eq(t, "refused", h.o.Refused(), map[string]int{"coupon_min_spend": 1})
}

func TestExpiryAtExactlyExpiresAt(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	h.referral("x", at(2025, 1, 6, 10, 0, 0))
	exp := at(2026, 1, 6, 10, 0, 0)
	eq(t, "expires_at", h.o.Lots("x")[0].ExpiresAt, exp)
	h.checkIn("x", exp.Add(-time.Second))
	bal, _, _ := h.o.Balance("x", exp.Add(-time.Second))
	eq(t, "balance one second before", bal, int64(200))
	eq(t, "ledger before", h.o.Ledger()["member:x"], int64(200))
	bal, _, _ = h.o.Balance("x", exp)
	eq(t, "view at expires_at", bal, int64(0))
	h.checkIn("x", exp)
	eq(t, "remaining", h.remaining("x"), []int64{0})
	eq(t, "expired", h.o.Totals()[KindExpire], int64(200))
	eq(t, "ledger after", h.o.Ledger()["member:x"], int64(0))
	checkInvariants(t, h.o)
}

const eachMonthProgram = minimalHead + `tiers:
  grace_months: 1
  ladder:
    - {id: normal, multiplier: 1.0}
    - {id: silver, multiplier: 1.2, criteria: [{spend_12m: 200000}]}
    - {id: gold, multiplier: 1.5, criteria: [{each_month_spend: {months: 3, min: 500000}}]}
`

func TestEachMonthSpendUpgradeAndGrace(t *testing.T) {
	h := newHarness(t, eachMonthProgram)
	jan := at(2025, 1, 15, 10, 0, 0)
	h.buy("e", "e1", jan, 500000) // silver at once
	h.buy("e", "e2", at(2025, 2, 14, 10, 0, 0), 500000)
	h.buy("e", "e3", at(2025, 3, 14, 10, 0, 0), 500000) // Dec was empty: no gold yet
	eq(t, "tier in March", h.o.Tier("e"), "silver")
	h.o.AdvanceTo("e", at(2025, 4, 2, 0, 0, 0)) // Jan, Feb, Mar all ≥ ¥5,000
	eq(t, "tier in April", h.o.Tier("e"), "gold")
	h.o.AdvanceTo("e", at(2025, 5, 1, 0, 0, 0)) // April empty: grace until June 1
	end, in := h.o.Grace("e")
	eq(t, "grace", []any{h.o.Tier("e"), in, end}, []any{"gold", true, at(2025, 6, 1, 0, 0, 0)})
	h.o.AdvanceTo("e", at(2025, 6, 1, 0, 0, 0))
	eq(t, "tier in June", h.o.Tier("e"), "silver")
	// March 2025 leaves the 12-month window at the start of March 2026;
	// grace until April 2026.
	h.o.AdvanceTo("e", at(2026, 5, 2, 0, 0, 0))
	eq(t, "history", h.o.TierHistory("e"), []TierMove{
		{From: "normal", To: "silver", At: jan, Reason: "upgrade"},
		{From: "silver", To: "gold", At: at(2025, 4, 1, 0, 0, 0), Reason: "upgrade"},
		{From: "gold", To: "silver", At: at(2025, 6, 1, 0, 0, 0), Reason: "downgrade"},
		{From: "silver", To: "normal", At: at(2026, 4, 1, 0, 0, 0), Reason: "downgrade"},
	})

	// Qualifying again during grace clears it.
	h.buy("q", "q1", jan, 200000)
	h.o.AdvanceTo("q", at(2026, 1, 1, 0, 0, 0)) // window Feb 2025..Jan 2026 is empty
	_, in = h.o.Grace("q")
	eq(t, "in grace", in, true)
	h.buy("q", "q2", at(2026, 1, 10, 10, 0, 0), 200000)
	h.o.AdvanceTo("q", at(2026, 2, 1, 0, 0, 0))
	_, in = h.o.Grace("q")
	eq(t, "grace cleared", []any{in, h.o.Tier("q"), len(h.o.TierHistory("q"))}, []any{false, "silver", 1})
}

func TestDefaultProgramDowngradeAfterGrace(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	p1 := at(2025, 1, 6, 10, 0, 0)
	h.buy("d", "d1", p1, 300000) // ¥3,000: silver
	h.buy("d", "d2", at(2025, 1, 7, 10, 0, 0), 300000)
	h.buy("d", "d3", at(2025, 1, 8, 10, 0, 0), 300000)
	h.buy("d", "d4", at(2025, 1, 9, 10, 0, 0), 300000) // ¥12,000: gold
	eq(t, "tier", h.o.Tier("d"), "gold")
	eq(t, "grants", h.o.Grants("d"), []string{"free_shipping", "priority_checkout", "vip_parking"})
	h.o.AdvanceTo("d", at(2026, 3, 1, 0, 0, 0))
	// January 2025 leaves the window at the start of January 2026: grace,
	// then down to normal at February 1 2026; immediate benefits go with it.
	eq(t, "history", h.o.TierHistory("d"), []TierMove{
		{From: "normal", To: "silver", At: p1, Reason: "upgrade"},
		{From: "silver", To: "gold", At: at(2025, 1, 9, 10, 0, 0), Reason: "upgrade"},
		{From: "gold", To: "normal", At: at(2026, 2, 1, 0, 0, 0), Reason: "downgrade"},
	})
	eq(t, "grants", h.o.Grants("d"), []string{})
	checkInvariants(t, h.o)
}

func TestCheckInStreak(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	for d := 1; d <= 14; d++ {
		switch d {
		case 5:
			h.checkIn("s", at(2025, 1, 5, 23, 30, 0))
		case 6:
			h.checkIn("s", at(2025, 1, 6, 0, 10, 0)) // next calendar day in Shanghai
		default:
			h.checkIn("s", at(2025, 1, d, 8, 0, 0))
		}
		if d == 3 {
			h.checkIn("s", at(2025, 1, 3, 20, 0, 0)) // same day: unchanged
		}
	}
	eq(t, "after 14 days", h.earned("s"), []int64{50, 50})
	for d := 16; d <= 22; d++ { // a gap on the 15th restarts the streak
		h.checkIn("s", at(2025, 1, d, 8, 0, 0))
	}
	var when []time.Time
	for _, l := range h.o.Lots("s") {
		when = append(when, l.EarnedAt)
	}
	eq(t, "bonus times", when, []time.Time{at(2025, 1, 7, 8, 0, 0), at(2025, 1, 14, 8, 0, 0), at(2025, 1, 22, 8, 0, 0)})
	checkInvariants(t, h.o)
}

func TestPurchasesInMonthOnce(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	for i, d := range []int{6, 7, 8} {
		h.buy("p", fmt.Sprintf("j%d", i), at(2025, 1, d, 10, 0, 0), 1000)
	}
	h.refund("p", "j2", at(2025, 1, 9, 10, 0, 0), 0)  // count 2
	h.buy("p", "j3", at(2025, 1, 10, 10, 0, 0), 1000) // count 3 again: no second bonus
	h.buy("p", "j4", at(2025, 1, 13, 10, 0, 0), 1000)
	for i, d := range []int{3, 4, 5} {
		h.buy("p", fmt.Sprintf("f%d", i), at(2025, 2, d, 10, 0, 0), 1000)
	}
	var bonus []time.Time
	for _, l := range h.o.Lots("p") {
		if l.Earned == 100 {
			bonus = append(bonus, l.EarnedAt)
		}
	}
	eq(t, "bonuses", bonus, []time.Time{at(2025, 1, 8, 10, 0, 0), at(2025, 2, 5, 10, 0, 0)})
	checkInvariants(t, h.o)
}

func TestReferralCap(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	for d := 2; d <= 8; d++ {
		h.referral("ref", at(2025, 1, d, 10, 0, 0))
	}
	h.referral("ref", at(2025, 2, 1, 10, 0, 0))
	eq(t, "lots", h.earned("ref"), []int64{200, 200, 200, 200, 200, 200})
	eq(t, "february lot", h.o.Lots("ref")[5].EarnedAt, at(2025, 2, 1, 10, 0, 0))
	checkInvariants(t, h.o)
}

func TestBirthdayBenefit(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	h.signUp("b1", at(2025, 1, 10, 10, 0, 0), time.Date(1990, 3, 15, 12, 0, 0, 0, time.UTC))
	eq(t, "grants in January", h.o.Grants("b1"), []string{})
	h.checkIn("b1", at(2025, 3, 10, 10, 0, 0)) // processes Feb 1 and Mar 1
	eq(t, "grants in March", h.o.Grants("b1"), []string{"birthday_gift"})
	cl := h.o.CouponList("b1")
	eq(t, "BDAY coupon", []any{len(cl), cl[0].Code, cl[0].ValidFrom, cl[0].ValidUntil},
		[]any{1, CouponCode("b1", "BDAY", 1), at(2025, 3, 1, 0, 0, 0), at(2025, 4, 1, 0, 0, 0)})
	h.buy("b1", "b1-1", at(2025, 3, 10, 11, 0, 0), 10000) // 100 + birthday triple 200
	eq(t, "birthday purchase", h.order("b1-1").Extras, map[string]int64{"birthday-triple": 200})
	h.o.AdvanceTo("b1", at(2025, 4, 1, 0, 0, 0))
	eq(t, "grants in April", h.o.Grants("b1"), []string{})
	eq(t, "coupons in April", h.o.Coupons("b1"), map[string]map[string]int{"BDAY": {"expired": 1}})

	// Signing up inside the birthday month grants at once; the coupon pays
	// the whole basket (paid 0), and any refund of it is full.
	h.signUp("b2", at(2025, 3, 5, 10, 0, 0), time.Date(1992, 3, 20, 12, 0, 0, 0, time.UTC))
	eq(t, "b2 grants", h.o.Grants("b2"), []string{"birthday_gift"})
	h.buy("b2", "b2-1", at(2025, 3, 6, 10, 0, 0), 2000, withCoupons(CouponCode("b2", "BDAY", 1)))
	o := h.order("b2-1")
	eq(t, "b2 order", []int64{o.CouponDiscount, o.Paid, o.Earned}, []int64{2000, 0, 0})
	h.refund("b2", "b2-1", at(2025, 3, 7, 10, 0, 0), 500)
	eq(t, "b2 coupon restored", h.o.Coupons("b2"), map[string]map[string]int{"BDAY": {"restored": 1}})
	h.o.AdvanceTo("b2", at(2025, 4, 1, 0, 0, 0))
	eq(t, "b2 grants in April", h.o.Grants("b2"), []string{})
	eq(t, "b2 coupon in April", h.o.Coupons("b2"), map[string]map[string]int{"BDAY": {"restored": 1}})
	checkInvariants(t, h.o)
}

func TestNoOpsAndEffectiveTime(t *testing.T) {
	h := newHarness(t, defaultYAML(t))
	fri := at(2025, 1, 10, 10, 0, 0)
	h.buy("n", "n1", fri, 10000)
	h.buy("n", "n1", fri.Add(time.Hour), 99999)              // duplicate order id
	h.refund("n", "legacy-1", fri.Add(2*time.Hour), 500)     // unknown order
	h.refund("ghost", "legacy-2", fri.Add(2*time.Hour), 500) // unknown order, unknown member
	h.buy("n", "n2", at(2025, 1, 4, 12, 0, 0), 10000)        // a Saturday, but processed at Friday's time
	eq(t, "earned", h.earned("n"), []int64{100, 100})
	eq(t, "n2 at", h.order("n2").At, fri)
	eq(t, "members", h.o.Members(), []string{"n"})
	eq(t, "clock", h.o.Clock("n"), fri)
	ev := event("n", fri)
	ev.EventId = "dup"
	ev.Payload = &mcv1.MemberEvent_Referral{Referral: &mcv1.Referral{}}
	for range 2 {
		if err := h.o.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	eq(t, "one referral", len(h.o.Lots("n")), 3)
	if err := h.o.Apply(&mcv1.MemberEvent{EventId: "bad", MemberId: "n", OccurredAt: timestamppb.New(fri)}); err == nil {
		t.Error("event without payload accepted")
	}
	checkInvariants(t, h.o)
}

func TestProgramErrors(t *testing.T) {
	bad := minimalHead + `tiers: {ladder: [{id: normal}]}
campaigns:
  - {id: broken, condition: 'basket.total >', bonus: 1}
`
	if _, err := New([]byte(bad)); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("bad condition: err = %v, want one naming the campaign", err)
	}
	if _, err := New([]byte(strings.Replace(bad, "basket.total >", "basket.total", 1))); err != nil {
		t.Errorf("dyn condition refused: %v", err)
	}
	if _, err := New([]byte(minimalHead + "tiers: {ladder: [{id: normal, multiplier: 1.23456}]}\n")); err == nil {
		t.Error("five decimal places accepted")
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestGenerateDeterministic(t *testing.T) {
	start := at(2025, 1, 1, 0, 0, 0)
	a := Generate(7, 200, 3000, start)
	b := Generate(7, 200, 3000, start)
	if len(a) != 3000 || len(b) != 3000 {
		t.Fatalf("len = %d, %d", len(a), len(b))
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			t.Fatalf("event %d differs", i)
		}
	}
	// Without an oracle, the guessed coupon codes still work often enough.
	o, err := New([]byte(defaultYAML(t)))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range a {
		if err := o.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	used := 0
	for _, id := range o.Members() {
		for _, states := range o.Coupons(id) {
			used += states[CouponUsed]
		}
	}
	if used == 0 {
		t.Error("no guessed coupon was usable")
	}

	o1, _ := New([]byte(defaultYAML(t)))
	o2, _ := New([]byte(defaultYAML(t)))
	c, err1 := GenerateWith(o1, 9, 200, 3000, start)
	d, err2 := GenerateWith(o2, 9, 200, 3000, start)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	for i := range c {
		if !proto.Equal(c[i], d[i]) {
			t.Fatalf("GenerateWith event %d differs", i)
		}
	}
	if fmt.Sprint(o1.Ledger()) != fmt.Sprint(o2.Ledger()) {
		t.Error("ledgers differ")
	}
}

func TestSmoke100k(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	start := at(2025, 1, 1, 0, 0, 0)
	o, err := New([]byte(defaultYAML(t)))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	evs, err := GenerateWith(o, 42, 10000, 100000, start)
	if err != nil {
		t.Fatal(err)
	}
	end := start.In(cst).AddDate(0, 14, 0)
	o.AdvanceAll(end)
	elapsed := time.Since(t0) // logged: speed is the benchmarks' to judge
	if len(evs) != 100000 {
		t.Fatalf("%d events", len(evs))
	}

	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	kinds := map[string]int{}
	var prev time.Time
	for i, ev := range evs {
		if ids[ev.EventId] {
			t.Fatalf("duplicate event id %s", ev.EventId)
		}
		ids[ev.EventId] = true
		if !uuidRE.MatchString(ev.MemberId) {
			t.Fatalf("member id %q", ev.MemberId)
		}
		ts := ev.OccurredAt.AsTime()
		if ts.Before(prev) {
			t.Fatalf("event %d out of order", i)
		}
		prev = ts
		if err := v.Validate(ev); err != nil {
			t.Fatalf("event %d invalid: %v", i, err)
		}
		kinds[fmt.Sprintf("%T", ev.Payload)]++
	}
	if span := prev.Sub(evs[0].OccurredAt.AsTime()); span < 400*24*time.Hour {
		t.Errorf("stream spans only %v", span)
	}
	if !prev.Before(end) || evs[0].OccurredAt.AsTime().Before(start) {
		t.Errorf("stream runs from %v to %v, outside [%v, %v)", evs[0].OccurredAt.AsTime(), prev, start, end)
	}

	checkInvariants(t, o)

	var upgrades, downgrades, diamonds, grants, lots, couponsUsed, couponsRestored, birthday int
	tiers := map[string]int{}
	for _, id := range o.Members() {
		for _, mv := range o.TierHistory(id) {
			switch mv.Reason {
			case "upgrade":
				upgrades++
			case "downgrade":
				downgrades++
			}
			if mv.To == "diamond" {
				diamonds++
			}
		}
		tiers[o.Tier(id)]++
		grants += len(o.Grants(id))
		lots += len(o.Lots(id))
		for tmpl, st := range o.Coupons(id) {
			couponsUsed += st[CouponUsed]
			couponsRestored += st[CouponRestored]
			if tmpl == "BDAY" {
				birthday += st[CouponIssued] + st[CouponUsed] + st[CouponRestored] + st[CouponExpired]
			}
		}
	}
	refused := o.Refused()
	var nRefused int
	for _, n := range refused {
		nRefused += n
	}
	tot := o.Totals()
	t.Logf("%v for %d events over %d members; payloads %v", elapsed, len(evs), len(o.Members()), kinds)
	t.Logf("tier moves: %d up, %d down; final tiers %v; grants held %d; lots %d", upgrades, downgrades, tiers, grants, lots)
	t.Logf("coupons: used %d, restored %d, BDAY issued %d; totals %v; refused %v", couponsUsed, couponsRestored, birthday, tot, refused)

	switch {
	case upgrades < 100:
		t.Errorf("only %d upgrades", upgrades)
	case downgrades < 5 || diamonds == 0:
		t.Errorf("only %d downgrades, %d moves to diamond", downgrades, diamonds)
	case grants < 50:
		t.Errorf("only %d grants held", grants)
	case tot[KindExpire] == 0 || tot[KindReverse] == 0 || tot[KindRestore] == 0 || tot[KindRedeem] == 0:
		t.Errorf("totals %v", tot)
	case nRefused < 50 || refused["insufficient_points"] == 0 || refused["redeem_over_share"] == 0:
		t.Errorf("refusals %v", refused)
	case couponsUsed < 50 || birthday < 100:
		t.Errorf("coupons used %d, BDAY %d", couponsUsed, birthday)
	}
	if !slices.Contains(o.Members(), evs[0].MemberId) {
		t.Error("first member unknown")
	}
}
