package changefeed

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// TestATokenWithinTheLogIsToldApartFromOneBeyondIt: after CatchUpWait, a
// resume token this replica's hub has not reached is answered
// ErrFeedBehind (Unavailable: reconnect) when the change log holds it —
// the hub stalls, the token is valid — and refused as ahead of the log
// only when it is beyond what the log holds.
func TestATokenWithinTheLogIsToldApartFromOneBeyondIt(t *testing.T) {
	cfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for range 3 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: cfg.Topics.MemberChanges, Partition: 0, Value: []byte("c")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	h := NewHub(cfg, kafkatest.Telemetry())
	for p, want := range map[int64]bool{0: true, 3: true, 4: false, 1 << 40: false} {
		got, err := h.withinLog(ctx, Position{0: p})
		if err != nil || got != want {
			t.Errorf("a token at %d of a log of 3: within %v (%v), want %v", p, got, err, want)
		}
	}
}
