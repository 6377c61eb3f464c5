package ingest_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// gatedResolver holds the first resolution of one event until released.
type gatedResolver struct {
	*stubResolver
	gateID           string
	once             sync.Once
	entered, release chan struct{}
}

func (g *gatedResolver) ResolveEvent(ctx context.Context, ev *mcv1.ChannelEvent) (ingest.Resolution, error) {
	if ev.GetEventId() == g.gateID {
		first := false
		g.once.Do(func() { first = true; close(g.entered) })
		if first {
			select {
			case <-g.release:
			case <-ctx.Done():
				return ingest.Resolution{}, ctx.Err()
			}
		}
	}
	return g.stubResolver.ResolveEvent(ctx, ev)
}

// A transaction the broker aborts under ingest (it outlived the
// transaction timeout: a resolution held up by a database, a long pause)
// is redone: every event is converted once, none lost with the aborted
// transaction, and ingest goes on.
func TestIngestRedoesATransactionTheBrokerAborted(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	events := []*mcv1.ChannelEvent{event("ev-before", "13800000001"), event("ev-held", "13800000002"), event("ev-after", "13800000003")}
	producer, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.DefaultProduceTopic(kcfg.Topics.ChannelEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	for _, ev := range events {
		// One key: one partition, in this order.
		if err := producer.ProduceSync(ctx, &kgo.Record{Key: []byte("shopper"), Value: binary(t, ev)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	res := &gatedResolver{stubResolver: &stubResolver{calls: map[string]int{}}, gateID: "ev-held",
		entered: make(chan struct{}), release: make(chan struct{})}
	runIngest(t, ctx, kcfg, res, options())

	select {
	case <-res.entered:
	case <-ctx.Done():
		t.Fatal("ingest never reached the held event")
	}
	// The broker aborts the open transaction once it outlives its timeout.
	adm := kadm.NewClient(producer)
	txnID := kcfg.Group(ingest.Stage) + "-" + kcfg.Instance()
	for ongoing := false; ; {
		described, err := adm.DescribeTransactions(ctx, txnID)
		if err != nil {
			t.Fatal(err)
		}
		d, ok := described[txnID]
		if ok && d.State == "Ongoing" {
			ongoing = true // ev-before's output is in it
		} else if ok && ongoing {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the broker never aborted the held transaction")
		case <-time.After(200 * time.Millisecond):
		}
	}
	close(res.release)

	kafkatest.WaitCommitted(t, ctx, adm, kcfg.Group(ingest.Stage), kcfg.Topics.ChannelEvents)
	seen := map[string]int{}
	for _, r := range kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.MemberEvents) {
		seen[kafka.Header(r, "mc-event-id")]++
	}
	for _, ev := range events {
		if seen[ev.GetEventId()] != 1 {
			t.Errorf("%s converted %d times, want once", ev.GetEventId(), seen[ev.GetEventId()])
		}
	}
	if len(seen) != len(events) {
		t.Errorf("member events %v, want exactly the %d published", seen, len(events))
	}
}
