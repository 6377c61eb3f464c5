package dlq_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/clocktest"
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
		if err := tx.ProduceSync(ctx, dlq.Record(cfg.Topics.DLQ, stage, src, errors.New("broken"), clocktest.Start(), nil)).FirstErr(); err != nil {
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

	replays := memReplays{}
	opts := dlq.ReplayOptions{Since: time.Now().Add(-time.Hour), Keep: func(l dlq.Letter) bool { return l.Stage == "ingest" }, Replays: replays}
	res, err := dlq.Replay(ctx, reader, cfg.Topics.DLQ, opts)
	if err != nil || res.Replayed != 2 || res.NotMatching != 1 {
		t.Fatalf("replay = %v, %v; want 2 letters replayed, 1 not matching", res, err)
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

// memReplays keeps the record of replays in memory (PostgreSQL keeps it in
// production; services/cli tests that).
type memReplays map[dlq.LetterID]*kgo.Record

func (m memReplays) Replayed(_ context.Context, id dlq.LetterID) (bool, error) {
	return m[id] != nil, nil
}
func (m memReplays) Record(_ context.Context, id dlq.LetterID, to *kgo.Record) error {
	m[id] = to
	return nil
}

// TestReplayIsOnceAndSaysWhatItDid: replaying the same window again
// replays nothing (2 → 4 → 8 before); a letter written when a replayed
// record failed again counts as its original, replayed already; a letter
// kept by reference only cannot be replayed; Force replays each original
// once more.
func TestReplayIsOnceAndSaysWhatItDid(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := kafkatest.Config(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	letter := func(i int, value []byte) {
		t.Helper()
		src := &kgo.Record{Topic: cfg.Topics.ChannelEvents, Partition: 0, Offset: int64(i), Key: []byte("k"), Value: value}
		if err := cl.ProduceSync(ctx, dlq.Record(cfg.Topics.DLQ, "ingest", src, errors.New("broken"), clocktest.Start(), nil)).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	letter(0, []byte("bad-0"))
	letter(1, []byte("bad-1"))
	letter(2, bytes.Repeat([]byte("x"), dlq.MaxOriginalBytes+1)) // kept by reference only
	replays := memReplays{}
	opts := dlq.ReplayOptions{Since: time.Now().Add(-time.Hour), Replays: replays}
	run := func(want dlq.ReplayResult) {
		t.Helper()
		res, err := dlq.Replay(ctx, cl, cfg.Topics.DLQ, opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.Replayed != want.Replayed || res.AlreadyReplayed != want.AlreadyReplayed || res.Unreplayable != want.Unreplayable || res.NotMatching != want.NotMatching {
			t.Fatalf("replay: %v; want %v", res, want)
		}
		if res.Unreplayable > 0 && (len(res.Problems) != res.Unreplayable || !strings.Contains(res.Problems[0], "kept by reference")) {
			t.Errorf("problems: %q", res.Problems)
		}
	}
	run(dlq.ReplayResult{Replayed: 2, Unreplayable: 1})
	run(dlq.ReplayResult{AlreadyReplayed: 2, Unreplayable: 1})

	// The first replayed record fails again: the stage writes a new letter
	// keeping the replayed record's headers.
	var first *kgo.Record
	for id, r := range replays {
		if id.Offset == 0 {
			first = r
		}
	}
	if first == nil || first.Topic != cfg.Topics.ChannelEvents {
		t.Fatalf("replay of letter 0 recorded as %v", first)
	}
	if err := cl.ProduceSync(ctx, dlq.Record(cfg.Topics.DLQ, "ingest", first, errors.New("still broken"), clocktest.Start(), nil)).FirstErr(); err != nil {
		t.Fatal(err)
	}
	run(dlq.ReplayResult{AlreadyReplayed: 3, Unreplayable: 1})

	// Forced: each original once more, the replay's own letter counted as
	// its original.
	opts.Force = true
	run(dlq.ReplayResult{Replayed: 2, AlreadyReplayed: 1, Unreplayable: 1})
}
