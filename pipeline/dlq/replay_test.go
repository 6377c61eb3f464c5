package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

func TestScanAndReplay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := kafkatest.Config(t)
	// Letters written in a transaction, as the ingest stage writes them: the
	// log then ends in a transaction marker, not a letter.
	tx, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.TransactionalID(cfg.InstanceID+"-dlq-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		src := &kgo.Record{Topic: cfg.Topics.ChannelEvents, Partition: 0, Offset: int64(i), Key: []byte("k"), Value: []byte(fmt.Sprintf("bad-%d", i))}
		stage := "ingest"
		if i == 2 {
			stage = "benefits"
		}
		if err := tx.ProduceSync(ctx, dlq.Record(cfg.Topics.DLQ, stage, src, errors.New("broken"), time.Now())).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}

	reader, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	var seen []string
	if err := dlq.Scan(ctx, reader, cfg.Topics.DLQ, time.Now().Add(-time.Hour), func(l dlq.Letter) error {
		seen = append(seen, l.Stage+":"+string(l.Record.Value))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 3 {
		t.Fatalf("scan saw %v, want 3 letters", seen)
	}

	n, err := dlq.Replay(ctx, reader, cfg.Topics.DLQ, time.Now().Add(-time.Hour), func(l dlq.Letter) bool { return l.Stage == "ingest" })
	if err != nil || n != 2 {
		t.Fatalf("replay = %d, %v; want 2 letters", n, err)
	}
	src, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.ConsumeTopics(cfg.Topics.ChannelEvents),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var replayed []*kgo.Record
	for len(replayed) < 2 {
		fs := src.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("replayed records: got %d of 2", len(replayed))
		}
		replayed = append(replayed, fs.Records()...)
	}
	for _, r := range replayed {
		if string(r.Key) != "k" || (string(r.Value) != "bad-0" && string(r.Value) != "bad-1") {
			t.Fatalf("replayed record = %q/%q", r.Key, r.Value)
		}
		for _, h := range r.Headers {
			if h.Key == dlq.HeaderReason {
				t.Fatalf("replayed record still carries %s", h.Key)
			}
		}
	}
}
