package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// oddResolver fails one event with an error nothing recognises, for as
// long as the test wants.
type oddResolver struct {
	stubResolver
	oddID string
}

func (o *oddResolver) ResolveEvent(ctx context.Context, ev *mcv1.ChannelEvent) (ingest.Resolution, error) {
	if ev.GetEventId() == o.oddID {
		o.mu.Lock()
		o.calls[ev.GetEventId()]++
		o.mu.Unlock()
		return ingest.Resolution{}, errors.New("identity answered something odd")
	}
	return o.stubResolver.ResolveEvent(ctx, ev)
}

func runIngest(t *testing.T, ctx context.Context, kcfg kafka.Config, res ingest.Resolver, o ingest.Options) {
	t.Helper()
	runIngestWith(t, ctx, kcfg, telemetry(), res, o)
}

// runIngestWith is runIngest with the telemetry tel.
func runIngestWith(t *testing.T, ctx context.Context, kcfg kafka.Config, tel kafka.Telemetry, res ingest.Resolver, o ingest.Options) {
	t.Helper()
	in, err := ingest.New(kcfg, tel, res, o)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- in.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		in.Close()
	})
}

// Each record of the poison list, followed by a good purchase of the same
// shopper (same key, so the same partition), is dead-lettered with a reason
// naming what is wrong, and the good purchase goes through.
func TestPoisonRecordsAreRefusedAndBlockNothing(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	now := clocktest.Start()
	usd := func(ev *mcv1.ChannelEvent) error {
		if c := ev.GetTransaction().GetTotal().GetCurrency(); c != "" && c != "CNY" {
			return fmt.Errorf("transaction.total.currency %q: the programme runs in CNY", c)
		}
		return nil
	}
	type poison struct {
		name   string
		edit   func(*mcv1.ChannelEvent)
		reason string
	}
	list := []poison{
		{"NUL in event_id", func(e *mcv1.ChannelEvent) { e.EventId = "p\x00-1" }, "eventId: contains a NUL byte"},
		{"NUL in order_id", func(e *mcv1.ChannelEvent) { e.GetTransaction().OrderId = "O\x00" }, "transaction.orderId"},
		{"NUL in store_id", func(e *mcv1.ChannelEvent) { e.StoreId = "S\x00" }, "storeId"},
		{"NUL in sku", func(e *mcv1.ChannelEvent) { e.GetTransaction().Items[0].Sku = "L\x00" }, "transaction.items[0].sku"},
		{"NUL in category", func(e *mcv1.ChannelEvent) { e.GetTransaction().Items[0].Category = "c\x00" }, "transaction.items[0].category"},
		{"occurred_at 10^13 s", func(e *mcv1.ChannelEvent) { e.OccurredAt = &timestamppb.Timestamp{Seconds: 1e13} }, "occurred_at"},
		{"occurred_at year 1", func(e *mcv1.ChannelEvent) { e.OccurredAt = &timestamppb.Timestamp{Seconds: -62135596800} }, "occurred_at"},
		{"occurred_at 2100", func(e *mcv1.ChannelEvent) {
			e.OccurredAt = timestamppb.New(time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC))
		}, "occurred_at"},
		{"occurred_at 9999-12-31", func(e *mcv1.ChannelEvent) {
			e.OccurredAt = timestamppb.New(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC))
		}, "occurred_at"},
		{"nanos 2e9", func(e *mcv1.ChannelEvent) { e.OccurredAt = &timestamppb.Timestamp{Seconds: now.Unix(), Nanos: 2e9} }, "occurred_at"},
		{"a purchase in USD", func(e *mcv1.ChannelEvent) { e.GetTransaction().Total.Currency = "USD" }, `currency "USD"`},
		{"birth date in the future", func(e *mcv1.ChannelEvent) {
			e.Payload = &mcv1.ChannelEvent_SignUp{SignUp: &mcv1.SignUp{BirthDate: timestamppb.New(now.AddDate(1, 0, 0))}}
		}, "birth_date"},
		{"amount MaxInt64 fails the programme's bound", func(e *mcv1.ChannelEvent) { e.GetTransaction().Total.AmountMinor = math.MaxInt64 }, "amount"},
	}
	bound := func(ev *mcv1.ChannelEvent) error {
		if a := ev.GetTransaction().GetTotal().GetAmountMinor(); a > 100_000_000 {
			return fmt.Errorf("transaction.total.amount_minor %d is above the programme's maximum", a)
		}
		return nil
	}
	huge := event("p-huge", "13800009999")
	huge.GetTransaction().Items[0].Brand = strings.Repeat("b", 10<<20) // also over the brand's max_len

	var input []*kgo.Record
	for i, p := range list {
		phone := fmt.Sprintf("1380000%04d", i)
		ev := event(fmt.Sprintf("p-%d", i), phone)
		p.edit(ev)
		good := event(fmt.Sprintf("good-%d", i), phone)
		input = append(input, &kgo.Record{Key: []byte(phone), Value: binary(t, ev)}, &kgo.Record{Key: []byte(phone), Value: binary(t, good)})
	}
	input = append(input, &kgo.Record{Key: []byte("13800009999"), Value: binary(t, huge)},
		&kgo.Record{Key: []byte("13800009999"), Value: binary(t, event("good-huge", "13800009999"))})
	producer, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.DefaultProduceTopic(kcfg.Topics.ChannelEvents),
		kgo.ProducerBatchMaxBytes(16<<20), kgo.ProducerBatchCompression(kgo.ZstdCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if err := producer.ProduceSync(ctx, input...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	o := options()
	o.Checks = []ingest.Check{usd, bound}
	tel, meters := kafkatest.Metered()
	tel.Logger = telemetry().Logger
	runIngestWith(t, ctx, kcfg, tel, &stubResolver{calls: map[string]int{}}, o)
	kafkatest.WaitCommitted(t, ctx, kadm.NewClient(producer), kcfg.Group(ingest.Stage), kcfg.Topics.ChannelEvents)
	if got := kafkatest.StageRecords(t, ctx, meters, ingest.Stage); got["ok"] != int64(len(list)+1) || got["dlq"] != int64(len(list)+1) || len(got) != 2 {
		t.Errorf("mc.stage.records of ingest by outcome: %v, want ok %d, dlq %d", got, len(list)+1, len(list)+1)
	}

	published := map[string]bool{}
	for _, r := range kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.MemberEvents) {
		published[kafka.Header(r, "mc-event-id")] = true
	}
	for i := range list {
		if !published[fmt.Sprintf("good-%d", i)] {
			t.Errorf("the good purchase behind %q was not published", list[i].name)
		}
		if published[fmt.Sprintf("p-%d", i)] {
			t.Errorf("%s was published", list[i].name)
		}
	}
	if !published["good-huge"] || len(published) != len(list)+1 {
		t.Errorf("published %d member events (good-huge: %v), want the %d good ones only", len(published), published["good-huge"], len(list)+1)
	}
	letters := map[string]dlq.Letter{}
	for _, r := range kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ) {
		letters[string(r.Key)] = dlq.Parse(r)
	}
	for i, p := range list {
		l, ok := letters[fmt.Sprintf("1380000%04d", i)]
		if !ok {
			t.Errorf("%s: no dead letter", p.name)
			continue
		}
		if !strings.Contains(l.Reason, p.reason) {
			t.Errorf("%s: reason %q, want it to name %q", p.name, l.Reason, p.reason)
		}
	}
	l, ok := letters["13800009999"]
	if !ok || !l.Truncated || l.OriginalSize < 10<<20 || !strings.Contains(l.Reason, "larger than the largest event") {
		t.Errorf("10 MB record: letter %+v, want it kept by reference with the size as the reason", l)
	}
	if len(letters) != len(list)+1 {
		t.Errorf("%d dead letters, want %d", len(letters), len(list)+1)
	}
}

// An event whose resolution keeps failing with an error nothing recognises
// holds back only its partition, and only for the retry limit: then it is
// dead-lettered with the last error and the events behind it go on. The
// order is the one ingest produced the records in (their timestamps, set
// when produced), not the order a reader happens to meet them in: one
// fetch may return both topics' records together. The limit leaves the
// other partition seconds to go through on a busy machine.
func TestOddFailureHoldsBackOnlyItsPartitionForTheLimit(t *testing.T) {
	kcfg := kafkatest.Config(t)
	kcfg.RecordRetryLimit = 8 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res := &oddResolver{stubResolver: stubResolver{calls: map[string]int{}}, oddID: "odd"}
	cl, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.DefaultProduceTopic(kcfg.Topics.ChannelEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	produce := func(p int32, evs ...*mcv1.ChannelEvent) {
		t.Helper()
		for _, ev := range evs {
			if err := cl.ProduceSync(ctx, &kgo.Record{Partition: p, Key: []byte(ev.GetEventId()), Value: binary(t, ev)}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	produce(0, event("odd", "13800000001"), event("behind-odd", "13800000001"))
	runIngest(t, ctx, kcfg, res, options())
	waitFor(t, ctx, "the odd event retried", func() bool { return res.callsOf("odd") >= 4 })
	produce(1, event("other-partition", "13800000002"))
	var mu sync.Mutex
	seen := map[string]time.Time{}
	reader, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.ConsumeTopics(kcfg.Topics.MemberEvents, kcfg.Topics.DLQ),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	for len(seen) < 3 {
		fs := reader.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("seen %v", seen)
		}
		fs.EachRecord(func(r *kgo.Record) {
			mu.Lock()
			defer mu.Unlock()
			id := kafka.Header(r, "mc-event-id")
			if r.Topic == kcfg.Topics.DLQ {
				id = "dlq:" + string(r.Key)
				if l := dlq.Parse(r); !strings.Contains(l.Reason, "retried for") || !strings.Contains(l.Reason, "something odd") {
					t.Errorf("letter reason %q, want the limit and the last error", l.Reason)
				}
			}
			seen[id] = r.Timestamp
		})
	}
	if seen["other-partition"].IsZero() || seen["dlq:odd"].IsZero() || seen["behind-odd"].IsZero() {
		t.Fatalf("seen %v, want other-partition, the odd event's letter and behind-odd", seen)
	}
	if !seen["other-partition"].Before(seen["dlq:odd"]) {
		t.Errorf("the other partition's event came after the odd one was dead-lettered: it waited for it")
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reached", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
