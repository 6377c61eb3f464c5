package benefits_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/membercenter/membercenter/services/benefits"
)

func program(t *testing.T, edit func(string) string) *benefits.Program {
	t.Helper()
	src := string(benefits.DefaultProgramSource())
	if edit != nil {
		src = edit(src)
	}
	p, err := benefits.ParseProgram([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var sh = func() *time.Location { l, _ := time.LoadLocation("Asia/Shanghai"); return l }()

// A Wednesday, 10:00 in Shanghai.
var wed = time.Date(2026, 3, 11, 10, 0, 0, 0, sh)

func apply(t *testing.T, e benefits.Engine, s *benefits.State, op benefits.Op) *benefits.Effects {
	t.Helper()
	fx, err := e.Apply(s, op)
	if err != nil {
		t.Fatalf("apply %+v: %v", op, err)
	}
	return fx
}

func buy(at time.Time, order string, total int64) benefits.Op {
	return benefits.Op{Kind: benefits.OpPurchase, At: at, OrderID: order, Total: total, Cause: order, Channel: "pos"}
}

func TestBasePointsTierAndRounding(t *testing.T) {
	e := benefits.Engine{P: program(t, nil)}
	s := benefits.NewState("m1")
	fx := apply(t, e, s, buy(wed, "o1", 12_399)) // ¥123.99 → 123 points (floor)
	if fx.Earned != 123 {
		t.Fatalf("earned %d, want 123", fx.Earned)
	}
	bal, avail, pending := s.Balance(wed)
	if bal != 123 || avail != 0 || pending != 123 {
		t.Fatalf("balance %d/%d/%d, want 123 pending", bal, avail, pending)
	}
	if _, avail, _ := s.Balance(wed.Add(7 * 24 * time.Hour)); avail != 123 {
		t.Fatalf("after the return window %d available, want 123", avail)
	}
	// round and ceil.
	for mode, want := range map[string]int64{"round": 124, "ceil": 124} {
		e := benefits.Engine{P: program(t, func(y string) string { return strings.Replace(y, "rounding: floor", "rounding: "+mode, 1) })}
		if fx := apply(t, e, benefits.NewState("m"), buy(wed, "o", 12_399)); fx.Earned != want {
			t.Errorf("%s: earned %d, want %d", mode, fx.Earned, want)
		}
	}
}

func TestWeekendDoubleCapAndCoffeeBonus(t *testing.T) {
	e := benefits.Engine{P: program(t, nil)}
	s := benefits.NewState("m1")
	sat := time.Date(2026, 3, 14, 15, 0, 0, 0, sh)
	fx := apply(t, e, s, buy(sat, "o1", 40_000)) // 400 base + 400 weekend
	if fx.Earned != 800 {
		t.Fatalf("earned %d, want 800", fx.Earned)
	}
	fx = apply(t, e, s, buy(sat.Add(time.Hour), "o2", 40_000)) // weekend capped at 500 a day: 100 left
	if fx.Earned != 500 {
		t.Fatalf("second weekend order earned %d, want 400+100", fx.Earned)
	}
	coffee := buy(wed, "o3", 1_000)
	coffee.At = sat.Add(7 * 24 * time.Hour)
	coffee.Items = []benefits.Item{{SKU: "LATTE", Category: "coffee", Quantity: 1, Amount: 1_000}}
	if fx = apply(t, e, s, coffee); fx.Earned != 10+10+20 {
		t.Fatalf("coffee on a weekend earned %d, want 10 base + 10 weekend + 20 coffee", fx.Earned)
	}
}

func TestRedemptionAndRefunds(t *testing.T) {
	e := benefits.Engine{P: program(t, nil)}
	s := benefits.NewState("m1")
	apply(t, e, s, buy(wed, "o1", 100_000)) // 1000 points, pending for 7 days
	later := wed.Add(8 * 24 * time.Hour)
	spend := buy(later, "o2", 100_000)
	spend.RedeemPoints = 2_000
	if _, err := e.Apply(s, spend); !errors.Is(err, benefits.ErrRefused) {
		t.Fatalf("overspend: %v", err)
	}
	s = benefits.NewState("m1")
	apply(t, e, s, buy(wed, "o1", 100_000))
	spend.RedeemPoints = 500 // ¥5 off: paid 99,500 → 995 points, +10 big-basket bonus
	fx := apply(t, e, s, spend)
	if fx.RedemptionValue != 500 || fx.Paid != 99_500 || fx.Earned != 1005 {
		t.Fatalf("redeem: value %d paid %d earned %d", fx.RedemptionValue, fx.Paid, fx.Earned)
	}
	// Two partial refunds reverse exactly what the order earned.
	r1 := benefits.Op{Kind: benefits.OpRefund, At: later.Add(time.Hour), OrderID: "o2", Amount: 33_333, Cause: "r1"}
	r2 := benefits.Op{Kind: benefits.OpRefund, At: later.Add(2 * time.Hour), OrderID: "o2", Cause: "r2"}
	apply(t, e, s, r1)
	fx = apply(t, e, s, r2)
	o := fx.Order
	if o.Reversed != 1005 || o.Restored != 500 || o.Refunded != 99_500 {
		t.Fatalf("after full refund: reversed %d restored %d refunded %d", o.Reversed, o.Restored, o.Refunded)
	}
	if bal, _, _ := s.Balance(later.Add(3 * time.Hour)); bal != 1010 {
		t.Fatalf("balance %d, want the first order's 1010", bal)
	}
	if _, err := e.Apply(s, benefits.Op{Kind: benefits.OpRefund, At: later.Add(4 * time.Hour), OrderID: "o2", Amount: 1, Cause: "r3"}); !errors.Is(err, benefits.ErrRefused) {
		t.Fatalf("refund beyond paid: %v", err)
	}
}

func TestExpiryTiersAndGrace(t *testing.T) {
	e := benefits.Engine{P: program(t, nil)}
	s := benefits.NewState("m1")
	for i, m := range []time.Month{1, 2, 3} {
		apply(t, e, s, buy(time.Date(2026, m, 5, 12, 0, 0, 0, sh), "o"+string(rune('a'+i)), 500_000))
	}
	// ¥15,000 over 12 months: gold at once by spend.
	if s.Tier != "gold" {
		t.Fatalf("tier %s, want gold", s.Tier)
	}
	// A year later nothing qualifies; grace first, then downgrade.
	fx := apply(t, e, s, benefits.Op{Kind: benefits.OpAdvance, At: time.Date(2027, 3, 2, 0, 0, 0, 0, sh)})
	var moves []string
	for _, m := range fx.TierMoves {
		moves = append(moves, m.From+"→"+m.To+"@"+m.At.In(sh).Format("2006-01"))
	}
	if got := strings.Join(moves, " "); got != "gold→normal@2027-03" {
		t.Fatalf("moves %q", got)
	}
	if bal, _, _ := s.Balance(time.Date(2027, 3, 6, 0, 0, 0, 0, sh)); bal != 0 {
		t.Fatalf("balance %d after every lot expired", bal)
	}
}

// TestCampaignGrantsABenefitForTheMonth: a campaign's benefit effect grants
// the benefit (with its cause) though the benefit's own condition does not
// hold; it lasts until the next month start, where it is revoked.
func TestCampaignGrantsABenefitForTheMonth(t *testing.T) {
	p := program(t, func(src string) string {
		return strings.Replace(src, "    condition: basket.total >= 50000\n", "    condition: basket.total >= 50000\n    benefit: free_shipping\n", 1)
	})
	e := benefits.Engine{P: p}
	s := benefits.NewState("m1")
	fx := apply(t, e, s, buy(wed, "o1", 60_000))
	if len(fx.Granted) != 1 || fx.Granted[0] != "free_shipping" || s.Grants["free_shipping"] == nil {
		t.Fatalf("granted %v, grants %v; want free_shipping from the campaign", fx.Granted, s.Grants)
	}
	if c := s.Grants["free_shipping"].Cause; !strings.HasPrefix(c, "campaign:big-basket:") {
		t.Errorf("grant cause %q", c)
	}
	traced := false
	for _, r := range fx.Trace {
		traced = traced || (r.GetRuleId() == "benefit:free_shipping" && r.GetApplied())
	}
	if !traced {
		t.Error("no trace line for the granted benefit")
	}
	// Later in the month it stays (the member is not silver).
	if fx := apply(t, e, s, buy(wed.Add(48*time.Hour), "o2", 1_000)); len(fx.Revoked) != 0 || s.Grants["free_shipping"] == nil {
		t.Fatalf("revoked %v within the month", fx.Revoked)
	}
	// The next month start revokes it.
	fx = apply(t, e, s, benefits.Op{Kind: benefits.OpAdvance, At: time.Date(2026, 4, 1, 0, 30, 0, 0, sh), Cause: "tick"})
	if len(fx.Revoked) != 1 || s.Grants["free_shipping"] != nil {
		t.Errorf("at the month start: revoked %v, grants %v", fx.Revoked, s.Grants)
	}
	// An unknown benefit is refused when the programme loads.
	_, err := benefits.ParseProgram([]byte(strings.Replace(string(benefits.DefaultProgramSource()),
		"    condition: basket.total >= 50000\n", "    condition: basket.total >= 50000\n    benefit: jetpack\n", 1)))
	if err == nil || !strings.Contains(err.Error(), `benefit: unknown benefit "jetpack"`) {
		t.Errorf("programme with an unknown campaign benefit: %v", err)
	}
}

// TestRecomputeIssuesCouponsWithAnOrigin: a benefit granted when a merge
// recomputes the member (here the birthday gift) issues its coupon with the
// member as origin, like any other issuance (found by the load generator: an
// empty origin broke the merge's transaction).
func TestRecomputeIssuesCouponsWithAnOrigin(t *testing.T) {
	e := benefits.Engine{P: program(t, nil)}
	s := benefits.NewState("01a20000-0000-7000-8000-000000000009")
	s.BirthDate = wed.Format("2006-01-02")
	fx := e.Recompute(s, wed, "merge:m1")
	if len(fx.Issued) != 1 {
		t.Fatalf("issued %v; want the birthday coupon", fx.Issued)
	}
	if o := fx.Issued[0].Origin; o != s.MemberID {
		t.Errorf("coupon origin %q, want the member", o)
	}
}
