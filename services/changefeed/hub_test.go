package changefeed

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

func testHub(queue int) *Hub {
	h := NewHub(kafka.Config{}, kafka.Telemetry{Logger: slog.New(slog.DiscardHandler)})
	h.queue = queue
	h.pos = Position{0: 0}
	close(h.ready)
	return h
}

func change(member string, seq uint64, labels ...string) Delivery {
	c := &mcv1.MemberChange{MemberId: member, Sequence: seq}
	if len(labels) > 0 {
		lc := &mcv1.LabelsChanged{}
		for _, l := range labels {
			lc.Labels = append(lc.Labels, &mcv1.LabelValue{LabelId: l, Value: &mcv1.LabelValue_BoolValue{BoolValue: true}})
		}
		c.Change = &mcv1.MemberChange_LabelsChanged{LabelsChanged: lc}
	}
	return Delivery{Ctx: context.Background(), Change: c}
}

// TestSlowSubscriberIsCutOffAloneWithAReason: a subscriber whose queue is
// full is ended with ErrTooSlow; the others keep receiving everything.
func TestSlowSubscriberIsCutOffAloneWithAReason(t *testing.T) {
	h := testHub(2)
	ctx := context.Background()
	slow, _, _ := h.Subscribe(ctx, Filter{})
	fast, _, _ := h.Subscribe(ctx, Filter{})
	got := 0
	for i := range 5 {
		h.fanOut(change("m", uint64(i+1)), 0, int64(i))
		got += len(fast.Take(nil))
	}
	if got != 5 {
		t.Errorf("the subscriber that kept up received %d of 5", got)
	}
	select {
	case <-slow.Done():
		if !errors.Is(slow.Err(), ErrTooSlow) {
			t.Errorf("slow subscriber ended with %v", slow.Err())
		}
	default:
		t.Fatal("the slow subscriber was not ended")
	}
	if n := h.Subscribers(); n != 1 {
		t.Errorf("%d subscribers left, want 1", n)
	}
	// What was queued before the queue filled can still be taken, in order.
	queued := slow.Take(nil)
	if len(queued) != 2 || queued[0].Change.GetSequence() != 1 || queued[1].Change.GetSequence() != 2 {
		t.Errorf("slow subscriber's queue held %v, want sequences 1 and 2", sequences(queued))
	}
}

// TestABurstLargerThanAnOldBufferKeepsTheSubscription: one poll of the
// change log can hand the hub thousands of changes at once, far faster than
// a subscriber sends them on. A subscriber that takes them only after the
// whole burst still gets every change, in order, and stays subscribed.
func TestABurstLargerThanAnOldBufferKeepsTheSubscription(t *testing.T) {
	h := NewHub(kafka.Config{}, kafka.Telemetry{Logger: slog.New(slog.DiscardHandler)})
	h.pos = Position{0: 0}
	close(h.ready)
	sub, _, _ := h.Subscribe(context.Background(), Filter{})
	const burst = 10000
	for i := range burst {
		h.fanOut(change("m", uint64(i+1)), 0, int64(i))
	}
	select {
	case <-sub.Done():
		t.Fatalf("a burst of %d changes ended the subscription: %v", burst, sub.Err())
	case <-sub.Ready():
	}
	got := sub.Take(nil)
	if len(got) != burst {
		t.Fatalf("took %d of %d changes", len(got), burst)
	}
	for i, d := range got {
		if d.Change.GetSequence() != uint64(i+1) || d.After[0] != int64(i+1) {
			t.Fatalf("change %d: sequence %d resuming at %v", i, d.Change.GetSequence(), d.After)
		}
	}
	select {
	case <-sub.Ready():
		t.Error("Ready signalled with nothing queued")
	default:
	}
	if n := h.Subscribers(); n != 1 {
		t.Errorf("%d subscribers, want 1", n)
	}
}

func sequences(ds []Delivery) []uint64 {
	var out []uint64
	for _, d := range ds {
		out = append(out, d.Change.GetSequence())
	}
	return out
}

// TestDeliveriesCarryTheirPositionAndFiltersShapeLabels: every delivery
// says where to resume after it; a label filter passes only changes of that
// label, carrying only it; a republished sequence is dropped.
func TestDeliveriesCarryTheirPositionAndFiltersShapeLabels(t *testing.T) {
	h := testHub(10)
	ctx := context.Background()
	all, start, _ := h.Subscribe(ctx, Filter{})
	coffee, _, _ := h.Subscribe(ctx, Filter{LabelID: "affinity_coffee"})
	if start[0] != 0 {
		t.Fatalf("start position %v", start)
	}
	h.fanOut(change("m", 1, "affinity_coffee", "active_7d"), 0, 41)
	h.fanOut(change("m", 2, "active_7d"), 0, 42)
	h.fanOut(change("m", 2, "active_7d"), 0, 43) // republished by a restarted relay
	ds := all.Take(nil)
	if len(ds) != 2 {
		t.Fatalf("delivered sequences %v, want 1 and 2 (the republished 2 dropped)", sequences(ds))
	}
	if ds[0].After[0] != 42 {
		t.Errorf("position after offset 41 = %v, want 42", ds[0].After)
	}
	if d := ds[1]; d.Change.GetSequence() != 2 || d.After[0] != 43 {
		t.Errorf("second delivery %v at %v", d.Change, d.After)
	}
	cs := coffee.Take(nil) // the change without its label is not queued
	if len(cs) != 1 {
		t.Fatalf("label subscriber got sequences %v, want 1 only", sequences(cs))
	}
	if ls := cs[0].Change.GetLabelsChanged().GetLabels(); len(ls) != 1 || ls[0].GetLabelId() != "affinity_coffee" {
		t.Errorf("label subscriber got %v", ls)
	}
}

func TestResumeTokens(t *testing.T) {
	p := Position{0: 17, 3: 1 << 40, 5: 0}
	got, err := DecodeToken(EncodeToken(p))
	if err != nil || len(got) != 3 || got[0] != 17 || got[3] != 1<<40 || got[5] != 0 {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	tok := EncodeToken(p)
	for _, bad := range []string{"", "x", tok[:len(tok)-1], strings.ToUpper(tok), tok + "A"} {
		if _, err := DecodeToken(bad); !errors.Is(err, ErrBadToken) || !strings.Contains(err.Error(), "take a snapshot") {
			t.Errorf("token %q: %v", bad, err)
		}
	}
}

// stream is a Subscribe stream that hands what the server sends to sent.
type stream struct {
	grpc.ServerStream
	ctx  context.Context
	sent chan *mcv1.SubscribeResponse
}

func (s *stream) Context() context.Context { return s.ctx }
func (s *stream) Send(m *mcv1.SubscribeResponse) error {
	select {
	case s.sent <- m:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// TestSubscribeMatchesMemberIDsInAnyCase: a member id is a UUID in any
// case, as every RPC takes it; a subscriber that names its member in upper
// case gets that member's changes (which name it in lower case), not
// silence.
func TestSubscribeMatchesMemberIDsInAnyCase(t *testing.T) {
	h := testHub(10)
	srv := NewServer(h, nil, nil, noop.NewTracerProvider())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const member = "0190c1f4-0000-7000-8000-00000000000a"
	st := &stream{ctx: ctx, sent: make(chan *mcv1.SubscribeResponse, 10)}
	ended := make(chan error, 1)
	go func() {
		ended <- srv.Subscribe(&mcv1.SubscribeRequest{MemberIds: []string{strings.ToUpper(member)}}, st)
	}()
	recv := func() *mcv1.SubscribeResponse {
		t.Helper()
		select {
		case m := <-st.sent:
			return m
		case err := <-ended:
			t.Fatalf("Subscribe ended: %v", err)
		case <-ctx.Done():
			t.Fatal("nothing sent within 30s")
		}
		return nil
	}
	if m := recv(); m.GetReady() == nil {
		t.Fatalf("first message %v, want Ready", m)
	}
	h.fanOut(change("0190c1f4-0000-7000-8000-00000000000b", 1), 0, 0)
	h.fanOut(change(member, 1), 0, 1)
	if m := recv(); m.GetChange().GetMemberId() != member {
		t.Errorf("delivered %v, want the change of %s", m, member)
	}
	cancel()
	if err := <-ended; err != nil {
		t.Errorf("Subscribe: %v", err)
	}
}

// TestCatchUpWaitsForTheHubToReachAToken: a client that reconnects to
// another replica may hold a resume token ahead of that replica's hub.
// Subscribe waits (CatchUp) until the hub has read that far, instead of
// refusing the token as ahead of the change log; a token the hub never
// reaches is given up on after the wait.
func TestCatchUpWaitsForTheHubToReachAToken(t *testing.T) {
	h := testHub(16)
	ctx := context.Background()
	if h.CatchUp(ctx, Position{0: 3}, time.Millisecond) {
		t.Fatal("caught up with a token the hub has not reached")
	}
	reached := make(chan bool, 1)
	go func() { reached <- h.CatchUp(ctx, Position{0: 3}, time.Minute) }()
	for off := range int64(3) {
		h.fanOut(change("m", uint64(off+1)), 0, off)
	}
	select {
	case ok := <-reached:
		if !ok {
			t.Fatal("CatchUp gave up before its wait was over, though the hub reached the token")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("CatchUp did not return once the hub reached the token")
	}
	if !h.CatchUp(ctx, Position{0: 3, 7: 100}, time.Millisecond) {
		t.Error("a partition the hub does not follow held the wait (Replay refuses it)")
	}
}

// TestAnIdleHubPassesChangesByAndASubscriptionStartsAfterThem: with no one
// subscribed the hub moves past a change without decoding it; a
// subscription made then starts after it, and receives the next.
func TestAnIdleHubPassesChangesByAndASubscriptionStartsAfterThem(t *testing.T) {
	h := testHub(16)
	if !h.passIfIdle(0, 0) {
		t.Fatal("a hub with no subscriber did not pass the change by")
	}
	sub, at, err := h.Subscribe(context.Background(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if at[0] != 1 {
		t.Errorf("the subscription starts at %v, want after the change passed by (1)", at)
	}
	if h.passIfIdle(0, 1) {
		t.Fatal("a hub with a subscriber passed a change by")
	}
	h.fanOut(change("m", 2), 0, 1)
	if got := sub.Take(nil); len(got) != 1 || got[0].After[0] != 2 {
		t.Errorf("the subscriber received %v, want the change after it subscribed", sequences(got))
	}
}
