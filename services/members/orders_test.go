package members_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/tags"
)

// TestAnOrderIdOfAnotherMemberIsRefusedAlone: order ids are unique across
// members. A purchase under an order id another member holds (recorded
// before, or by a member before it in the same batch) is refused at once
// as a data error naming the order, and the batch's other events are
// applied: before, the order's insert failed the whole transaction, and
// the stage retried the batch until its retry limit while the partition
// waited.
func TestAnOrderIdOfAnotherMemberIsRefusedAlone(t *testing.T) {
	f, c := begin(t)
	owner, other := f.member(t, c), f.member(t, c)
	withOrder := func(ev *mcv1.MemberEvent, order string) *mcv1.MemberEvent {
		ev.GetTransaction().OrderId = order
		return ev
	}
	if rejected, err := f.a.ApplyBatch(c, []*mcv1.MemberEvent{withOrder(f.purchase(owner, 5000), "shared")}); err != nil || len(rejected) != 0 {
		t.Fatalf("the owner's purchase: %v, rejected %v", err, rejected)
	}
	ownerBefore := f.state(t, c, owner).balance

	checkRefused := func(what string, rejected map[int]error, i int, order string) {
		t.Helper()
		err := rejected[i]
		if !errors.Is(err, benefits.ErrOrderTaken) || !fault.IsData(err) || !strings.Contains(err.Error(), `"`+order+`"`) {
			t.Errorf("%s: event %d refused with %v (data error: %v); want a data error naming order %q as another member's", what, i, err, fault.IsData(err), order)
		}
	}
	// The other member's purchase under the owner's order id, and a good
	// one behind it in the same batch.
	refused, good := withOrder(f.purchase(other, 7000), "shared"), withOrder(f.purchase(other, 3000), "mine")
	rejected, err := f.a.ApplyBatch(c, []*mcv1.MemberEvent{refused, good})
	if err != nil {
		t.Fatalf("the batch failed (%v): the refused event should have been refused alone", err)
	}
	if len(rejected) != 1 {
		t.Fatalf("rejected %v, want the first event only", rejected)
	}
	checkRefused("an order recorded before", rejected, 0, "shared")
	// The tag stage left it out: its spend counts in no member's labels.
	if by := pgtest.Values[string](t, c, f.pool, `SELECT consumer FROM processed_events WHERE event_id = $1 AND consumer = $2`,
		refused.GetEventId(), tags.Stage); len(by) != 0 {
		t.Errorf("the refused purchase was applied by the tag stage")
	}
	if s := f.state(t, c, owner); s.balance != ownerBefore {
		t.Errorf("the owner's balance moved from %d to %d", ownerBefore, s.balance)
	}
	// Ledger causes are the event id and the effect's number (ev-3#0).
	causes := pgtest.Values[string](t, c, f.pool, `SELECT DISTINCT split_part(cause_id, '#', 1) FROM ledger_transactions WHERE member_id = $1`, other)
	if strings.Join(causes, ",") != good.GetEventId() {
		t.Errorf("the other member's ledger holds the causes %v, want its good purchase's (%s) only", causes, good.GetEventId())
	}
	holders := pgtest.Values[string](t, c, f.pool, `SELECT order_id || ' ' || member_id FROM orders ORDER BY order_id`)
	if want := []string{"mine " + other, "shared " + owner}; strings.Join(holders, ",") != strings.Join(want, ",") {
		t.Errorf("orders %v, want %v", holders, want)
	}

	// Two members' purchases under one new order id in one batch: the
	// first member applied takes it, the other is refused.
	a, b := f.member(t, c), f.member(t, c)
	rejected, err = f.a.ApplyBatch(c, []*mcv1.MemberEvent{withOrder(f.purchase(a, 4000), "twice"), withOrder(f.purchase(b, 4000), "twice")})
	if err != nil {
		t.Fatalf("the batch failed (%v): one of the two should have been refused alone", err)
	}
	if len(rejected) != 1 {
		t.Fatalf("rejected %v, want one of the two events", rejected)
	}
	for i := range rejected {
		checkRefused("an order recorded earlier in the batch", rejected, i, "twice")
	}
	got := pgtest.Values[string](t, c, f.pool, `SELECT member_id::text FROM orders WHERE order_id = 'twice'`)
	sa, sb := f.state(t, c, a), f.state(t, c, b)
	switch {
	case len(got) != 1:
		t.Errorf("order twice recorded %d times", len(got))
	case got[0] == a && (sa.balance <= 0 || sb.balance != 0), got[0] == b && (sb.balance <= 0 || sa.balance != 0):
		t.Errorf("order twice is %s's, but the balances are %d and %d", got[0], sa.balance, sb.balance)
	}
	if err := pgtest.CheckLedger(c, f.pool); err != nil {
		t.Fatal(err)
	}
}

// TestWhatTheProgrammeRefusesIsDeadLettered: a channel event the loyalty
// programme refuses from the member's state — a refund of more than is
// left of its order, points the member does not have — is refused as a
// data error giving the programme's reason (the stage dead-letters it, so
// the channel hears of it), changes no points, and holds back none of the
// batch's other events. Before, the benefit stage logged it and passed
// over it: nothing reached dlq.v1.
func TestWhatTheProgrammeRefusesIsDeadLettered(t *testing.T) {
	f, c := begin(t)
	m := f.member(t, c)
	bought := f.purchase(m, 10000)
	if rejected, err := f.a.ApplyBatch(c, []*mcv1.MemberEvent{bought}); err != nil || len(rejected) != 0 {
		t.Fatalf("the purchase: %v, rejected %v", err, rejected)
	}
	refund := func(amount int64) *mcv1.MemberEvent {
		ev := f.event(m)
		ev.Payload = &mcv1.MemberEvent_Refund{Refund: &mcv1.Refund{OrderId: bought.GetTransaction().GetOrderId(),
			Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount}}}
		return ev
	}
	first, second := refund(6000), refund(6000)
	overspend := f.purchase(m, 200000)
	overspend.GetTransaction().PointsRedeemed = 5000
	good := f.purchase(m, 3000)
	before := f.state(t, c, m).balance
	rejected, err := f.a.ApplyBatch(c, []*mcv1.MemberEvent{first, second, overspend, good})
	if err != nil {
		t.Fatalf("the batch failed (%v): the refused events should have been refused alone", err)
	}
	if len(rejected) != 2 || rejected[1] == nil || rejected[2] == nil {
		t.Fatalf("rejected %v, want events 1 (the second refund) and 2 (the overspend)", rejected)
	}
	for i, want := range map[int]string{1: "refund", 2: "available"} {
		err := rejected[i]
		if !errors.Is(err, benefits.ErrRefused) || !fault.IsData(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("event %d refused with %v (data error: %v); want a data error from the programme naming %q", i, err, fault.IsData(err), want)
		}
	}
	// The first refund and the good purchase applied, the refused ones
	// nothing: the ledger's causes say which.
	causes := pgtest.Values[string](t, c, f.pool, `SELECT DISTINCT split_part(cause_id, '#', 1) FROM ledger_transactions WHERE member_id = $1 ORDER BY 1`, m)
	for _, ev := range []*mcv1.MemberEvent{second, overspend} {
		if slices.Contains(causes, ev.GetEventId()) {
			t.Errorf("the refused event %s moved points (ledger causes %v)", ev.GetEventId(), causes)
		}
	}
	for _, ev := range []*mcv1.MemberEvent{first, good} {
		if !slices.Contains(causes, ev.GetEventId()) {
			t.Errorf("event %s was not applied (ledger causes %v)", ev.GetEventId(), causes)
		}
	}
	after := f.state(t, c, m).balance
	if after >= before+30 || after <= 0 {
		t.Errorf("balance %d → %d: want the first refund's reversal and the good purchase's points only", before, after)
	}
	// The batch delivered again (a process that died after the commit,
	// before the letters went out): the refused events are refused again,
	// with the same reasons, so that their letters are sent; nothing is
	// applied twice.
	again, err := f.a.ApplyBatch(c, []*mcv1.MemberEvent{first, second, overspend, good})
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 2 || again[1] == nil || again[2] == nil || again[1].Error() != rejected[1].Error() || again[2].Error() != rejected[2].Error() || !fault.IsData(again[1]) {
		t.Errorf("the batch delivered again: refused %v; want events 1 and 2 refused as before (%v)", again, rejected)
	}
	if s := f.state(t, c, m).balance; s != after {
		t.Errorf("the batch delivered again moved the balance from %d to %d", after, s)
	}
	if err := pgtest.CheckLedger(c, f.pool); err != nil {
		t.Fatal(err)
	}
}
