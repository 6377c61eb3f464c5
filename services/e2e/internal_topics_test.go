package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// TestBadRecordsOnTheInternalTopics: records that are not what the stages
// write, published straight to member.events.v1 and member.changes.v1
// (bytes that are no protobuf, an empty value, an event whose member id
// is no UUID, an event of a member nobody knows, a change of a real member
// without an id or a change and a sequence far ahead), are each dead-lettered
// with a reason by a stage that consumes them (the member stage, the
// ClickHouse sink), and block nothing: a purchase published after them on
// the same partition earns its points, and its change reaches a Subscribe
// stream, which is sent none of the bad changes.
func TestBadRecordsOnTheInternalTopics(t *testing.T) {
	e, ctx := startWithin(t, 3*time.Minute)
	member := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "internal-topics", "13712340001", "")
	stream := e.subscribe(t, ctx, &mcv1.SubscribeRequest{})
	at := timestamppb.New(e.clock.Now())
	event := func(id, memberID string) []byte {
		b, err := proto.Marshal(&mcv1.MemberEvent{EventId: id, MemberId: memberID, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-001", OccurredAt: at,
			Payload: &mcv1.MemberEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-" + id, Total: &mcv1.Money{Currency: "CNY", AmountMinor: 12000},
				Items: []*mcv1.LineItem{{Sku: "TEA-L", Category: "tea", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 12000}}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	change := func(c *mcv1.MemberChange) []byte {
		b, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	type bad struct {
		topic, what string
		value       []byte
	}
	bads := []bad{
		{e.cfg.Kafka.Topics.MemberEvents, "no protobuf", []byte{0xff, 0xff, 0xff, 0x0f, 0x01}},
		{e.cfg.Kafka.Topics.MemberEvents, "an empty value", nil},
		{e.cfg.Kafka.Topics.MemberEvents, "a member id that is no UUID", event("internal-bad-id", "not-a-uuid")},
		{e.cfg.Kafka.Topics.MemberEvents, "a member nobody knows", event("internal-ghost", uuid.Must(uuid.NewV7()).String())},
		{e.cfg.Kafka.Topics.MemberChanges, "no protobuf", []byte{0xff, 0xff, 0xff, 0x0f, 0x01}},
		{e.cfg.Kafka.Topics.MemberChanges, "an empty value", nil},
		// A stream that took it would drop the member's real changes as
		// ones it had already sent.
		{e.cfg.Kafka.Topics.MemberChanges, "a sequence far ahead, no change", change(&mcv1.MemberChange{MemberId: member, Sequence: 1 << 40})},
	}
	type where struct {
		topic     string
		partition int32
		offset    int64
	}
	want := map[where]string{}
	for _, b := range bads {
		r, err := e.kafka.ProduceSync(ctx, &kgo.Record{Topic: b.topic, Key: []byte(member), Value: b.value}).First()
		if err != nil {
			t.Fatal(err)
		}
		want[where{r.Topic, r.Partition, r.Offset}] = b.topic + ": " + b.what
	}
	if err := e.kafka.ProduceSync(ctx, &kgo.Record{Topic: e.cfg.Kafka.Topics.MemberEvents, Key: []byte(member), Value: event("internal-good", member)}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	// The good purchase, after the bad records of both topics; none of
	// the bad changes on the stream.
	for {
		c := nextChange(t, stream)
		if c.GetMemberId() == "" || c.GetChange() == nil {
			t.Fatalf("the stream sent a change published by hand: %v", c)
		}
		if c.GetMemberId() == member && c.GetPointsChanged() != nil {
			break
		}
	}
	// Every bad record dead-lettered, with a reason.
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cfg.Kafka.Brokers...), kgo.ConsumeTopics(e.cfg.Kafka.Topics.DLQ), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for len(want) > 0 {
		fs := cl.PollFetches(lctx)
		if lctx.Err() != nil {
			t.Fatalf("no dead letter for %v", want)
		}
		for _, r := range fs.Records() {
			l := openLetter(t, e.pool, r)
			w := where{l.Topic, l.Partition, l.Offset}
			if what, ok := want[w]; ok {
				if l.Reason == "" || l.Stage == "" {
					t.Errorf("%s: dead letter without a reason or a stage: %+v", what, l)
				}
				t.Logf("%s: dead-lettered by %s: %s", what, l.Stage, l.Reason)
				delete(want, w)
			}
		}
	}
}
