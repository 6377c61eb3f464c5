package plausible_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/plausible"
)

func purchase() *mcv1.ChannelEvent {
	return &mcv1.ChannelEvent{
		EventId: "e-1", StoreId: "SH-001",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13800000000"}},
		Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-1",
			Items: []*mcv1.LineItem{{Sku: "A", Category: "coffee"}, {Sku: "B", Category: "tea"}}}},
	}
}

func TestTextFindsNULAnywhere(t *testing.T) {
	if err := plausible.Text(purchase()); err != nil {
		t.Fatalf("clean event refused: %v", err)
	}
	cases := []struct {
		field string
		edit  func(*mcv1.ChannelEvent)
	}{
		{"eventId", func(e *mcv1.ChannelEvent) { e.EventId = "e\x00" }},
		{"storeId", func(e *mcv1.ChannelEvent) { e.StoreId = "\x00" }},
		{"identifiers[0].value", func(e *mcv1.ChannelEvent) { e.Identifiers[0].Value = "138\x0000" }},
		{"transaction.orderId", func(e *mcv1.ChannelEvent) { e.GetTransaction().OrderId = "O\x00" }},
		{"transaction.items[1].sku", func(e *mcv1.ChannelEvent) { e.GetTransaction().Items[1].Sku = "B\x00" }},
		{"transaction.items[0].category", func(e *mcv1.ChannelEvent) { e.GetTransaction().Items[0].Category = "\x00coffee" }},
		{"transaction.items[0].sku", func(e *mcv1.ChannelEvent) { e.GetTransaction().Items[0].Sku = "\xff" }},
	}
	for _, c := range cases {
		ev := purchase()
		c.edit(ev)
		err := plausible.Text(ev)
		var fe *plausible.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: Text = %v, want a FieldError naming %s", c.field, err, c.field)
		}
	}
	// Map keys and values too.
	req := &mcv1.UpdateAttributesRequest{MemberId: "m", Attributes: map[string]string{"city": "Shang\x00hai"}}
	var fe *plausible.FieldError
	if err := plausible.Text(req); !errors.As(err, &fe) || fe.Field != `attributes["city"]` || !strings.Contains(fe.Reason, "NUL byte at byte 5") {
		t.Errorf("map value: %v", err)
	}
	req.Attributes = map[string]string{"ci\x00ty": "x"}
	if err := plausible.Text(req); !errors.As(err, &fe) || fe.Field != `attributes["ci\x00ty"] (key)` {
		t.Errorf("map key: %v", err)
	}
}

func TestTimeWindow(t *testing.T) {
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	w := plausible.Window{Past: 30 * 24 * time.Hour, Future: 10 * time.Minute}
	ok := []time.Time{now, now.Add(-29 * 24 * time.Hour), now.Add(9 * time.Minute)}
	for _, at := range ok {
		if err := w.Time("occurred_at", timestamppb.New(at), now, true); err != nil {
			t.Errorf("%s refused: %v", at, err)
		}
	}
	bad := map[string]*timestamppb.Timestamp{
		"year 1":               {Seconds: -62135596800},
		"year 2100":            timestamppb.New(time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)),
		"9999-12-31":           timestamppb.New(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)),
		"10^13 s":              {Seconds: 1e13},
		"nanos 2e9":            {Seconds: now.Unix(), Nanos: 2e9},
		"negative nanos":       {Seconds: now.Unix(), Nanos: -1},
		"31 days old":          timestamppb.New(now.Add(-31 * 24 * time.Hour)),
		"11 minutes in future": timestamppb.New(now.Add(11 * time.Minute)),
	}
	for name, ts := range bad {
		err := w.Time("occurred_at", ts, now, true)
		var fe *plausible.FieldError
		if !errors.As(err, &fe) || fe.Field != "occurred_at" {
			t.Errorf("%s: Time = %v, want a refusal naming occurred_at", name, err)
		}
	}
	if err := w.Time("occurred_at", nil, now, true); err == nil {
		t.Error("missing required time accepted")
	}
	if err := w.Time("at", nil, now, false); err != nil {
		t.Errorf("missing optional time refused: %v", err)
	}
}
