package changefeed

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

func testHub(buffer int) *Hub {
	h := NewHub(kafka.Config{}, kafka.Telemetry{Logger: slog.New(slog.DiscardHandler)})
	h.buffer = buffer
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

// TestSlowSubscriberIsCutOffAloneWithAReason: a subscriber whose buffer is
// full is ended with ErrTooSlow; the others keep receiving everything.
func TestSlowSubscriberIsCutOffAloneWithAReason(t *testing.T) {
	h := testHub(2)
	ctx := context.Background()
	slow, _, _ := h.Subscribe(ctx, Filter{})
	fast, _, _ := h.Subscribe(ctx, Filter{})
	got := 0
	for i := range 5 {
		h.fanOut(change("m", uint64(i+1)), 0, int64(i))
		select {
		case <-fast.C():
			got++
		default:
		}
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
	// It had received the changes before its buffer filled, in order.
	for want := uint64(1); want <= 2; want++ {
		if d := <-slow.C(); d.Change.GetSequence() != want {
			t.Errorf("slow subscriber got %d, want %d", d.Change.GetSequence(), want)
		}
	}
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
	d := <-all.C()
	if d.After[0] != 42 {
		t.Errorf("position after offset 41 = %v, want 42", d.After)
	}
	if d = <-all.C(); d.Change.GetSequence() != 2 || d.After[0] != 43 {
		t.Errorf("second delivery %v at %v", d.Change, d.After)
	}
	select {
	case d := <-all.C():
		t.Errorf("republished change delivered again: %v", d.Change)
	default:
	}
	c := <-coffee.C()
	if ls := c.Change.GetLabelsChanged().GetLabels(); len(ls) != 1 || ls[0].GetLabelId() != "affinity_coffee" {
		t.Errorf("label subscriber got %v", ls)
	}
	select {
	case d := <-coffee.C():
		t.Errorf("label subscriber got a change without its label: %v", d.Change)
	default:
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
