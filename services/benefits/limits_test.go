package benefits_test

import (
	"errors"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
)

func cny(v int64) *mcv1.Money { return &mcv1.Money{Currency: "CNY", AmountMinor: v} }

// TestCheckEvent: what ingest asks before it lets a channel event reach any
// stage; each refusal names the field, as the benefit stage would.
func TestCheckEvent(t *testing.T) {
	svc := benefits.New(nil, changes.Writer{}, slog.New(slog.DiscardHandler))
	svc.SetClock(func() time.Time { return wed })
	purchase := func(edit func(*mcv1.Transaction)) *mcv1.ChannelEvent {
		tx := &mcv1.Transaction{OrderId: "o1", Total: cny(12_345),
			Items: []*mcv1.LineItem{{Sku: "TEA", Quantity: 1, UnitPrice: cny(12_345), Amount: cny(12_345)}}}
		if edit != nil {
			edit(tx)
		}
		return &mcv1.ChannelEvent{EventId: "e1", Channel: mcv1.Channel_CHANNEL_POS, OccurredAt: timestamppb.New(wed.Add(-time.Hour)),
			Payload: &mcv1.ChannelEvent_Transaction{Transaction: tx}}
	}
	refund := func(m *mcv1.Money) *mcv1.ChannelEvent {
		return &mcv1.ChannelEvent{EventId: "e2", Channel: mcv1.Channel_CHANNEL_POS, OccurredAt: timestamppb.New(wed),
			Payload: &mcv1.ChannelEvent_Refund{Refund: &mcv1.Refund{OrderId: "o1", Amount: m}}}
	}
	at := func(ts *timestamppb.Timestamp) *mcv1.ChannelEvent { ev := purchase(nil); ev.OccurredAt = ts; return ev }
	checkIn := &mcv1.ChannelEvent{EventId: "e3", Channel: mcv1.Channel_CHANNEL_APP, OccurredAt: timestamppb.New(wed),
		Payload: &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}}
	for _, tc := range []struct {
		name string
		ev   *mcv1.ChannelEvent
		want string // the message's start; "" accepts
	}{
		{"an ordinary purchase", purchase(nil), ""},
		{"a purchase of exactly ¥1,000,000", purchase(func(tx *mcv1.Transaction) { tx.Total = cny(100_000_000); tx.Items = nil }), ""},
		{"a check-in", checkIn, ""},
		{"a refund of part", refund(cny(500)), ""},
		{"a refund of zero (the rest)", refund(cny(0)), ""},
		{"a purchase in USD", purchase(func(tx *mcv1.Transaction) { tx.Total.Currency = "USD" }),
			`transaction.total.currency "USD": the programme runs in CNY`},
		{"a purchase of 10^15", purchase(func(tx *mcv1.Transaction) { tx.Total = cny(1_000_000_000_000_000) }),
			"transaction.total.amount_minor 1000000000000000 is above the programme's maximum of 100000000 CNY"},
		{"a purchase of MaxInt64", purchase(func(tx *mcv1.Transaction) { tx.Total = cny(math.MaxInt64) }), "transaction.total.amount_minor"},
		{"a negative total", purchase(func(tx *mcv1.Transaction) { tx.Total = cny(-1) }), "transaction.total.amount_minor -1 must not be negative"},
		{"no total", purchase(func(tx *mcv1.Transaction) { tx.Total = nil }), "transaction.total is required"},
		{"a discount in EUR", purchase(func(tx *mcv1.Transaction) { tx.Discount = &mcv1.Money{Currency: "EUR", AmountMinor: 1} }),
			`transaction.discount.currency "EUR"`},
		{"a basket line of MaxInt64", purchase(func(tx *mcv1.Transaction) { tx.Items[0].Amount = cny(math.MaxInt64) }),
			"transaction.items[0].amount.amount_minor"},
		{"a negative basket line", purchase(func(tx *mcv1.Transaction) { tx.Items[0].Amount = cny(-100) }),
			"transaction.items[0].amount.amount_minor -100 must not be negative"},
		{"a unit price in USD", purchase(func(tx *mcv1.Transaction) { tx.Items[0].UnitPrice.Currency = "USD" }),
			`transaction.items[0].unit_price.currency "USD"`},
		{"2^50 points redeemed", purchase(func(tx *mcv1.Transaction) { tx.PointsRedeemed = 1 << 50 }), "transaction.points_redeemed"},
		{"points redeemed in a whole unit, within what points may pay", purchase(func(tx *mcv1.Transaction) { tx.PointsRedeemed = 100 }), ""},
		{"points redeemed not in whole units", purchase(func(tx *mcv1.Transaction) { tx.PointsRedeemed = 999 }),
			"transaction.points_redeemed 999: points to redeem must be a multiple of 100"},
		{"points paying more of the basket than points may", purchase(func(tx *mcv1.Transaction) { tx.PointsRedeemed = 100_000 }),
			"transaction.points_redeemed 100000 points would pay"},
		{"a refund of MaxInt64", refund(cny(math.MaxInt64)), "refund.amount.amount_minor"},
		{"a negative refund", refund(cny(-5)), "refund.amount.amount_minor -5 must not be negative"},
		{"a refund in USD", refund(&mcv1.Money{Currency: "USD", AmountMinor: 5}), `refund.amount.currency "USD"`},
		{"a refund without an amount", refund(nil), "refund.amount is required"},
		{"no occurred_at", at(nil), "occurred_at is required"},
		{"occurred_at in 2100", at(timestamppb.New(time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC))), "occurred_at 2100-01-01"},
		{"occurred_at 0001-01-01", at(timestamppb.New(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC))), "occurred_at 0001-01-01"},
		{"occurred_at of 10^13 seconds", at(&timestamppb.Timestamp{Seconds: 1e13}), "occurred_at is not a valid timestamp"},
		{"nanos of 2e9", at(&timestamppb.Timestamp{Seconds: wed.Unix(), Nanos: 2e9}), "occurred_at is not a valid timestamp"},
		{"an hour ahead of the clock", at(timestamppb.New(wed.Add(time.Hour))), "occurred_at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := svc.CheckEvent(tc.ev)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error starting %q", err, tc.want)
			}
			if !errors.Is(err, benefits.ErrInvalid) || fault.Classify(err) != fault.Data {
				t.Errorf("%v: not ErrInvalid or not a data error", err)
			}
		})
	}
}

// TestProgramLimits: a programme's limits are read and checked when it is
// loaded; one whose rates could mint an overflowing number of points is
// refused, naming the limit.
func TestProgramLimits(t *testing.T) {
	p := program(t, nil)
	if l := p.Limits; l.MaxAmount != 100_000_000 || l.MaxAdjustPoints != 10_000_000 || l.MaxRedeemPoints != 10_000_000 || l.AdjustApprovalPoints != 10_000 ||
		l.Window.Past != 9600*time.Hour || l.Window.Future != 10*time.Minute {
		t.Errorf("default programme limits: %+v", l)
	}
	without := func(src string) string {
		i := strings.Index(src, "limits:")
		j := strings.Index(src, "redemption:")
		return src[:i] + src[j:]
	}
	if p := program(t, without); p.Limits.MaxAmount != 100_000_000 {
		t.Errorf("a programme without limits gets %+v, want the defaults", p.Limits)
	}
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"no maximum for the programme's currency", "max_amount: {CNY: 100000000}", "max_amount: {USD: 100000000}",
			"limits.max_amount has no maximum for the programme's currency CNY"},
		{"a maximum of zero", "max_amount: {CNY: 100000000}", "max_amount: {CNY: 0}", "limits.max_amount.CNY 0: must be 1.."},
		{"a maximum past the ceiling", "max_amount: {CNY: 100000000}", "max_amount: {CNY: 9000000000000000000}", "limits.max_amount.CNY"},
		{"a negative adjust maximum", "max_adjust_points: 10000000", "max_adjust_points: -1", "limits.max_adjust_points -1"},
		{"a negative approval threshold", "adjust_approval_points: 10000", "adjust_approval_points: -1", "limits.adjust_approval_points -1"},
		{"an approval threshold past the ceiling", "adjust_approval_points: 10000", "adjust_approval_points: 1000000000001",
			"limits.adjust_approval_points 1000000000001"},
		{"a bad window", "event_window: {past: 9600h, future: 10m}", "event_window: {past: 0s, future: 10m}", "limits.event_window"},
		{"rates that could overflow at the largest amount", "max_amount: {CNY: 100000000}  #", "max_amount: {CNY: 1000000000000}  #",
			"limits.max_amount.CNY 1000000000000: a purchase of that amount could earn"},
		{"a coupon template id longer than the API takes", "{id: C10,  name:", "{id: C" + strings.Repeat("0", 64) + ",  name:",
			"id longer than 64 bytes"},
		{"a multiplier of a thousand", "multiplier: 2.0\n    cap_per_member_day: 500", "multiplier: 1000\n    cap_per_member_day: 500",
			"campaigns[0] (weekend-double).multiplier: at most 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(string(benefits.DefaultProgramSource()), "points_per_unit: 1 ", "points_per_unit: 100 ", 1)
			if !strings.Contains(src, tc.from) {
				t.Fatalf("programme has no %q", tc.from)
			}
			_, err := benefits.ParseProgram([]byte(strings.Replace(src, tc.from, tc.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestEngineRefusesWhatCouldOverflow: whatever adapter builds an operation,
// the engine refuses amounts and points beyond the limits instead of
// computing with them.
func TestEngineRefusesWhatCouldOverflow(t *testing.T) {
	e := benefits.Engine{P: program(t, nil)}
	for _, op := range []benefits.Op{
		buy(wed, "o1", math.MaxInt64),
		{Kind: benefits.OpPurchase, At: wed, OrderID: "o2", Total: 100, Items: []benefits.Item{{SKU: "X", Quantity: 1, Amount: math.MaxInt64}}},
		{Kind: benefits.OpPurchase, At: wed, OrderID: "o3", Total: 100, RedeemPoints: math.MaxInt64},
		{Kind: benefits.OpAdjust, At: wed, Points: math.MinInt64, Reason: "x"},
		{Kind: benefits.OpRedeem, At: wed, Points: math.MaxInt64, Reason: "x"},
		{Kind: benefits.OpRefund, At: wed, OrderID: "o1", Amount: math.MaxInt64},
	} {
		s := benefits.NewState("m1")
		if _, err := e.Apply(s, op); !errors.Is(err, benefits.ErrInvalid) {
			t.Errorf("%+v: %v; want ErrInvalid", op, err)
		}
	}
	// The largest accepted purchase earns a plausible number of points.
	fx := apply(t, e, benefits.NewState("m2"), buy(wed, "max", 100_000_000))
	if fx.Earned != 1_000_010 {
		t.Errorf("¥1,000,000 on a Wednesday earned %d, want 1,000,010 (base and the big-basket bonus)", fx.Earned)
	}
}
