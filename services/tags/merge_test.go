package tags_test

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/identity/identitytest"
	"github.com/membercenter/membercenter/services/tags"
)

// TestMergeActivityUnmerge: identity merges two members, both keep buying
// through their own phones, then the merge is undone. While merged the
// surviving member's labels come from both histories; after the unmerge
// each member's labels equal what the events its identifiers caused give on
// their own, as if the merge had never happened.
func TestMergeActivityUnmerge(t *testing.T) {
	f, c := begin(t)
	ids := identitytest.New(t, f.pool)
	ids.AddMemberData(f.svc)
	phone := func(v string) []*mcv1.Identifier {
		return []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: v}}
	}
	member := func(p string) string {
		r, err := ids.Resolve(c, &mcv1.ResolveRequest{Identifiers: phone(p), Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: p})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMemberId()
	}
	a, b := member("13900000001"), member("13900000002")
	caused := map[string][]*mcv1.MemberEvent{} // by the member whose phone caused it
	buy := func(id, p, owner string, at time.Time, amount int64, cat string) {
		t.Helper()
		ev := &mcv1.ChannelEvent{EventId: id, Channel: mcv1.Channel_CHANNEL_POS, OccurredAt: timestamppb.New(at), Identifiers: phone(p),
			Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-" + id,
				Total: &mcv1.Money{Currency: "CNY", AmountMinor: amount},
				Items: []*mcv1.LineItem{{Sku: "X", Category: cat, Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount}}}}}}
		res, err := ids.ResolveEvent(c, ev)
		if err != nil {
			t.Fatal(err)
		}
		me := &mcv1.MemberEvent{EventId: id, MemberId: res.MemberID, Channel: ev.GetChannel(), OccurredAt: ev.GetOccurredAt(),
			Resolution: res.Detail, Payload: &mcv1.MemberEvent_Transaction{Transaction: ev.GetTransaction()}}
		f.apply(t, c, me)
		caused[owner] = append(caused[owner], me)
	}
	buy("a-before", "13900000001", a, t0.Add(-5*24*time.Hour), 2000, "coffee")
	buy("b-before", "13900000002", b, t0.Add(-4*24*time.Hour), 5000, "tea")
	merged, err := ids.Merge(c, &mcv1.MergeRequest{SourceMemberId: a, TargetMemberId: b, Reason: "same shopper", IdempotencyKey: "m"})
	if err != nil {
		t.Fatal(err)
	}
	buy("a-after", "13900000001", a, t0.Add(-2*24*time.Hour), 3000, "coffee")
	buy("b-after", "13900000002", b, t0.Add(-1*24*time.Hour), 1000, "tea")

	labels := func(m string) map[string]any { return f.labels(t, uuid.MustParse(m)) }
	if got := labels(b)["spend_30d_value"]; got != 110.0 {
		t.Errorf("merged member's 30-day spend %v, want 110 (both histories)", got)
	}
	if got := labels(a); len(got) != 0 {
		t.Errorf("merged-away member still has labels %v", got)
	}
	if _, err := ids.Unmerge(c, &mcv1.UnmergeRequest{MergeId: merged.GetMergeId(), Reason: "two people", IdempotencyKey: "u"}); err != nil {
		t.Fatal(err)
	}
	cat := f.svc.Catalog()
	for _, m := range []string{a, b} {
		st := &tags.State{}
		for _, ev := range caused[m] {
			st.Fold(tags.FactFromEvent(ev))
		}
		want := cat.Evaluate(tags.Compute(tags.Inputs{State: st}, *f.clock, cat.Location, cat.Filters, cat.FilterKey()).Values, nil, nil, false)
		got := labels(m)
		if !maps.EqualFunc(got, want, func(x, y any) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) {
			t.Errorf("member %s after unmerge:\n got %v\nwant %v (its own events only)", m, got, want)
		}
	}
	if labels(a)["coffee_lover"] != true || labels(b)["coffee_lover"] != false {
		t.Errorf("coffee_lover after unmerge: a %v, b %v; want true, false", labels(a)["coffee_lover"], labels(b)["coffee_lover"])
	}
}

// TestSweepLetsMergedMembersGo: a merged-away member whose features are
// still due for the sweep — rows an earlier release left so: the
// benchmark's long-lived databases held 413 of them at 100,000 members,
// and the sweeper recomputed their survivors every second, for good — is
// swept once: its survivor recomputed, and its features off the list.
func TestSweepLetsMergedMembersGo(t *testing.T) {
	f, c := begin(t)
	ids := identitytest.New(t, f.pool)
	ids.AddMemberData(f.svc)
	resolve := func(p string) string {
		r, err := ids.Resolve(c, &mcv1.ResolveRequest{Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: p}},
			Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: p})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMemberId()
	}
	a, b := resolve("13900000011"), resolve("13900000012")
	for i, m := range []string{a, b} {
		f.apply(t, c, purchase(fmt.Sprintf("due-%d", i), uuid.MustParse(m), t0.Add(-30*24*time.Hour+30*time.Second), 1000))
	}
	if _, err := ids.Merge(c, &mcv1.MergeRequest{SourceMemberId: a, TargetMemberId: b, Reason: "same shopper", IdempotencyKey: "m"}); err != nil {
		t.Fatal(err)
	}
	// As an earlier release left it: the merged-away member's features due.
	if _, err := f.pool.Exec(c, `UPDATE member_features SET due_at = $2 WHERE member_id = $1`, uuid.MustParse(a), t0); err != nil {
		t.Fatal(err)
	}
	*f.clock = t0.Add(time.Minute) // b's window has ended, a is due
	first, err := f.svc.Sweep(c, 100)
	if err != nil || first == 0 {
		t.Fatalf("first sweep: %d members, %v; want the due ones", first, err)
	}
	for i := range 3 {
		if n, err := f.svc.Sweep(c, 100); err != nil || n != 0 {
			t.Fatalf("sweep %d after the first: %d members, %v; want nothing left to do", i+2, n, err)
		}
	}
}
