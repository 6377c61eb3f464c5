package benefitstest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

func labelYAML(t *testing.T) string {
	t.Helper()
	src, err := LabelProgramme([]byte(defaultYAML(t)))
	if err != nil {
		t.Fatal(err)
	}
	return string(src)
}

func (h *harness) share(member string, when time.Time) {
	h.t.Helper()
	ev := event(member, when)
	ev.Payload = &mcv1.MemberEvent_Share{Share: &mcv1.Share{ContentId: "post", Target: "wechat"}}
	h.apply(ev)
}

// history is the member's grants and revocations of benefits that name
// labels.
func history(o *Oracle, member string) []string {
	var out []string
	for _, c := range o.BenefitHistory(member) {
		if !strings.HasSuffix(c.Benefit, "_perk") && c.Benefit != "influencer_badge" {
			continue
		}
		sign := "-"
		if c.Granted {
			sign = "+"
		}
		out = append(out, sign+c.Benefit+"@"+c.At.In(cst).Format("2006-01-02T15:04:05"))
	}
	return out
}

// Three shares in 90 days make a sharer at the third; the perk and its
// coupon follow at once, though the programme ignores shares, and go when
// the first share leaves the 90 days, at that instant.
func TestSharerPerkFollowsShares(t *testing.T) {
	h := newHarness(t, labelYAML(t))
	d0 := at(2025, 1, 5, 10, 0, 0)
	h.share("s", d0)
	h.share("s", d0.Add(24*time.Hour))
	eq(t, "members after two shares", h.o.Members(), []string{})
	h.share("s", d0.Add(40*24*time.Hour))
	eq(t, "labels at the third share", h.o.Labels("s", d0.Add(40*24*time.Hour)), []string{"sharer"})
	eq(t, "grants at the third share", h.o.Grants("s"), []string{"sharer_perk"})
	eq(t, "coupon", h.o.Coupons("s"), map[string]map[string]int{"P10": {"issued": 1}})
	end := d0.Add(90 * 24 * time.Hour)
	eq(t, "edges", h.o.LabelEdges(), []time.Time{end})
	h.o.AdvanceTo("s", end.Add(-time.Second))
	eq(t, "grants just before", h.o.Grants("s"), []string{"sharer_perk"})
	h.o.AdvanceTo("s", end.Add(time.Hour))
	eq(t, "grants after", h.o.Grants("s"), []string{})
	eq(t, "history", history(h.o, "s"), []string{"+sharer_perk@2025-02-14T10:00:00", "-sharer_perk@2025-04-05T10:00:00"})
	eq(t, "clock", h.o.Clock("s"), end.Add(time.Hour))
	// A redelivered share counts once (the other shares have left the 90
	// days by then).
	later := end.Add(50 * 24 * time.Hour)
	ev := event("s", later)
	ev.EventId = "again"
	ev.Payload = &mcv1.MemberEvent_Share{Share: &mcv1.Share{}}
	for range 3 {
		if err := h.o.Apply(proto.Clone(ev).(*mcv1.MemberEvent)); err != nil {
			t.Fatal(err)
		}
	}
	eq(t, "labels after a redelivered share", h.o.Labels("s", later), []string(nil))
}

// A purchase gives bought_365d and bought_90d, a refused one too (the tag
// engine counts every purchase); the label ends 365 days later and the
// perk with it, acted on at that instant by the next event.
func TestBuyerPerkFollowsPurchases(t *testing.T) {
	h := newHarness(t, labelYAML(t))
	d0 := at(2025, 1, 6, 10, 0, 0)
	h.buy("r", "r1", d0, 10000, redeem(500)) // refused: no points
	eq(t, "refused", h.o.Refused(), map[string]int{"insufficient_points": 1})
	eq(t, "grants after a refused purchase", h.o.Grants("r"), []string{"buyer_perk"})
	eq(t, "lots", len(h.o.Lots("r")), 0)

	h.buy("b", "b1", d0, 10000)
	eq(t, "grants after a purchase", h.o.Grants("b"), []string{"buyer_perk"})
	end := d0.Add(365 * 24 * time.Hour)
	// Months later, silver: regular_perk needs a purchase in 90 days too.
	h.buy("b", "b2", at(2025, 3, 3, 10, 0, 0), 250000)
	eq(t, "tier", h.o.Tier("b"), "silver")
	eq(t, "grants as a silver buyer", h.o.Grants("b"), []string{"buyer_perk", "free_shipping", "priority_checkout", "regular_perk"})
	h.checkIn("b", at(2025, 6, 1, 10, 0, 1)) // bought_90d ended at 10:00:00
	eq(t, "grants 90 days on", h.o.Grants("b"), []string{"buyer_perk", "free_shipping", "priority_checkout"})
	h.checkIn("b", end.Add(24*time.Hour).Add(365*24*time.Hour)) // long after
	eq(t, "grants two years on", h.o.Grants("b"), []string{})
	// The refused purchase's 365 days end at end, the second purchase's
	// 90 days on 1 June: both change a label with time alone.
	edges := h.o.LabelEdges()
	eq(t, "edges", []bool{slices.Contains(edges, end), slices.Contains(edges, at(2025, 6, 1, 10, 0, 0))}, []bool{true, true})
	eq(t, "history", history(h.o, "b"), []string{
		"+buyer_perk@2025-01-06T10:00:00",
		"+regular_perk@2025-03-03T10:00:00",
		"-regular_perk@2025-06-01T10:00:00",
		"-buyer_perk@2026-03-03T10:00:00", // the second purchase's 365 days
	})
	checkInvariants(t, h.o)
}

// social_influencer: three referrals in 90 days; end_of_month keeps the
// badge until the month start after the label ends.
func TestInfluencerBadgeEndOfMonth(t *testing.T) {
	h := newHarness(t, labelYAML(t))
	for i := range 3 {
		h.referral("i", at(2025, 1, 10+i, 10, 0, 0))
	}
	eq(t, "grants", h.o.Grants("i"), []string{"influencer_badge"})
	h.o.AdvanceTo("i", at(2025, 5, 1, 0, 0, 0))
	eq(t, "history", history(h.o, "i"), []string{"+influencer_badge@2025-01-12T10:00:00", "-influencer_badge@2025-05-01T00:00:00"})
}

func TestUnknownLabelRefused(t *testing.T) {
	src := strings.Replace(labelYAML(t), "labels: [sharer]", "labels: [coffee_lover]", 1)
	if _, err := New([]byte(src)); err == nil || !strings.Contains(err.Error(), "coffee_lover") {
		t.Fatalf("err = %v, want one naming the label", err)
	}
	if _, err := LabelProgramme([]byte("version: x\n")); err == nil {
		t.Error("a programme without benefits accepted")
	}
}

// GenerateWith's stream for a programme with label benefits makes every
// one of them granted and revoked, by events and by time alone; the
// default programme's streams are what they were.
func TestGenerateWithLabels(t *testing.T) {
	start := at(2025, 1, 1, 0, 0, 0)
	o, err := New([]byte(labelYAML(t)))
	if err != nil {
		t.Fatal(err)
	}
	evs, err := GenerateWith(o, 11, 300, 3000, start)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, ev := range evs {
		kinds[fmt.Sprintf("%T", ev.Payload)]++
	}
	edges := o.LabelEdges()
	o.AdvanceAll(start.In(cst).AddDate(0, 14, 0))
	granted, revoked := map[string]int{}, map[string]int{}
	for _, id := range o.Members() {
		for _, c := range o.BenefitHistory(id) {
			if c.Granted {
				granted[c.Benefit]++
			} else {
				revoked[c.Benefit]++
			}
		}
	}
	t.Logf("payloads %v; %d label edges; granted %v; revoked %v", kinds, len(edges), granted, revoked)
	for _, b := range []string{"sharer_perk", "buyer_perk", "regular_perk", "influencer_badge"} {
		if granted[b] == 0 || revoked[b] == 0 {
			t.Errorf("%s granted %d times, revoked %d", b, granted[b], revoked[b])
		}
	}
	if kinds["*membercenterv1.MemberEvent_Share"] == 0 || len(edges) == 0 {
		t.Error("no shares or no label edges")
	}
	checkInvariants(t, o)
}
