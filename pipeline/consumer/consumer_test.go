package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

const stage = "consumer-test"

// recorder is the effect store of the stage under test: the values whose
// effects were applied, per key, in the order they were applied.
type recorder struct {
	mu       sync.Mutex
	applied  map[string][]string
	attempts map[string]int // handler calls that saw each value
	seen     chan struct{}  // signalled after every applied record
}

func newRecorder() *recorder {
	return &recorder{applied: map[string][]string{}, attempts: map[string]int{}, seen: make(chan struct{}, 1000)}
}

var errBad = errors.New("value is bad")

// handleRecord rejects "bad", fails "flaky" the first two times and applies
// everything else.
func (rc *recorder) handleRecord(_ context.Context, r *kgo.Record) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	v := string(r.Value)
	rc.attempts[v]++
	switch {
	case v == "bad":
		return dlq.Reject(errBad)
	case v == "flaky" && rc.attempts[v] <= 2:
		return errors.New("store unavailable")
	}
	rc.applied[string(r.Key)] = append(rc.applied[string(r.Key)], v)
	rc.seen <- struct{}{}
	return nil
}

// handleBatch fails a batch holding "flaky" the first two times, as a whole
// and before any effect; otherwise it rejects "bad" and applies the others.
func (rc *recorder) handleBatch(_ context.Context, rs []*kgo.Record) (map[*kgo.Record]error, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, r := range rs {
		rc.attempts[string(r.Value)]++
	}
	if slices.ContainsFunc(rs, func(r *kgo.Record) bool { return string(r.Value) == "flaky" }) && rc.attempts["flaky"] <= 2 {
		return nil, errors.New("store unavailable")
	}
	rejected := map[*kgo.Record]error{}
	for _, r := range rs {
		v := string(r.Value)
		if v == "bad" {
			rejected[r] = errBad
			continue
		}
		rc.applied[string(r.Key)] = append(rc.applied[string(r.Key)], v)
		rc.seen <- struct{}{}
	}
	return rejected, nil
}

func (rc *recorder) snapshot() (map[string][]string, map[string]int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return cloneState(rc.applied, rc.attempts)
}

// cloneState copies what a handler applied, per key, and how often it saw
// each value, for a test to read without holding the handler's lock.
func cloneState[K comparable](applied map[K][]string, attempts map[string]int) (map[K][]string, map[string]int) {
	a := make(map[K][]string, len(applied))
	for k, v := range applied {
		a[k] = slices.Clone(v)
	}
	n := make(map[string]int, len(attempts))
	maps.Copy(n, attempts)
	return a, n
}

// runStage runs c with the record or batch handler of rc until the returned
// stop is called; stop waits for the run to end and closes c.
type runFunc func(ctx context.Context, c *consumer.Consumer, rc *recorder) error

func runStage(t *testing.T, c *consumer.Consumer, rc *recorder, run runFunc) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, rc) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run returned %v after its context ended, want nil", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("run did not return within 30s of its context ending")
			}
			c.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestConsumer(t *testing.T) {
	tests := []struct {
		name string
		run  runFunc
		// Handler calls that saw "bad": one when each record is handled
		// alone (a rejection is never retried); 0 means not checked (a
		// batch is retried as a whole).
		badAttempts int
	}{
		{
			name: "RunRecords",
			run: func(ctx context.Context, c *consumer.Consumer, rc *recorder) error {
				return c.RunRecords(ctx, rc.handleRecord)
			},
			badAttempts: 1,
		},
		{
			name: "RunBatches",
			run: func(ctx context.Context, c *consumer.Consumer, rc *recorder) error {
				return c.RunBatches(ctx, rc.handleBatch)
			},
		},
		{
			name: "RunPartitionBatches",
			run: func(ctx context.Context, c *consumer.Consumer, rc *recorder) error {
				return c.RunPartitionBatches(ctx, rc.handleBatch)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testConsumer(t, tt.run, tt.badAttempts)
		})
	}
}

func testConsumer(t *testing.T, run runFunc, badAttempts int) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := consumer.Config{
		Stage: stage, Group: kcfg.Group("t"), Topics: []string{kcfg.Topics.ChannelEvents}, DLQTopic: kcfg.Topics.DLQ,
		MaxPollRecords: 7, // several polls, so commits happen between them
	}

	producer, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.DefaultProduceTopic(kcfg.Topics.ChannelEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()

	// 20 records across 2 keys; k1 carries the bad record, k2 the flaky one.
	var records []*kgo.Record
	want := map[string][]string{}
	for i := range 10 {
		for _, key := range []string{"k1", "k2"} {
			v := fmt.Sprintf("%s-%02d", key, i)
			switch {
			case key == "k1" && i == 4:
				v = "bad"
			case key == "k2" && i == 3:
				v = "flaky"
			}
			records = append(records, &kgo.Record{Key: []byte(key), Value: []byte(v),
				Headers: []kgo.RecordHeader{{Key: "origin", Value: []byte("test")}}})
			if v != "bad" {
				want[key] = append(want[key], v)
			}
		}
	}
	results := producer.ProduceSync(ctx, records...)
	if err := results.FirstErr(); err != nil {
		t.Fatal(err)
	}
	var badRecord *kgo.Record
	for _, r := range results {
		if string(r.Record.Value) == "bad" {
			badRecord = r.Record
		}
	}

	tel, meters := kafkatest.Metered()
	c, err := consumer.New(kcfg, tel, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rc := newRecorder()
	stop := runStage(t, c, rc, run)

	// Offsets are committed only once the effects are applied, so when the
	// group's offsets reach the end every record has been dealt with.
	adm := kadm.NewClient(producer)
	kafkatest.WaitCommitted(t, ctx, adm, cfg.Group, kcfg.Topics.ChannelEvents)

	applied, attempts := rc.snapshot()
	for _, key := range []string{"k1", "k2"} {
		if !slices.Equal(applied[key], want[key]) {
			t.Errorf("key %s: applied %v, want each good record once, in produce order: %v", key, applied[key], want[key])
		}
	}
	if attempts["flaky"] != 3 {
		t.Errorf("flaky was attempted %d times, want 3 (two transient failures, then success)", attempts["flaky"])
	}
	if badAttempts != 0 && attempts["bad"] != badAttempts {
		t.Errorf("bad was attempted %d times, want %d", attempts["bad"], badAttempts)
	}

	// The stage counted 19 records handled and one dead-lettered.
	if got := kafkatest.StageRecords(t, ctx, meters, stage); got["ok"] != 19 || got["dlq"] != 1 || len(got) != 2 {
		t.Errorf("mc.stage.records of stage %s by outcome: %v, want ok 19, dlq 1", stage, got)
	}

	// The bad record, and only it, is on the dead-letter topic.
	letters := kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ)
	if len(letters) != 1 {
		t.Fatalf("dead-letter topic has %d records (%v), want 1", len(letters), values(letters))
	}
	l := dlq.Parse(letters[0])
	if string(l.Record.Value) != "bad" || string(l.Record.Key) != "k1" {
		t.Errorf("dead letter key/value = %q/%q, want the original k1/bad", l.Record.Key, l.Record.Value)
	}
	if kafka.Header(l.Record, dlq.HeaderReason) == "" || !strings.Contains(l.Reason, errBad.Error()) {
		t.Errorf("dead letter reason = %q, want it to contain %q", l.Reason, errBad)
	}
	if kafka.Header(l.Record, dlq.HeaderStage) != stage {
		t.Errorf("dead letter stage = %q, want %q", l.Stage, stage)
	}
	if l.Topic != kcfg.Topics.ChannelEvents || l.Partition != badRecord.Partition || l.Offset != badRecord.Offset {
		t.Errorf("dead letter origin = %s/%d@%d, want %s/%d@%d", l.Topic, l.Partition, l.Offset,
			kcfg.Topics.ChannelEvents, badRecord.Partition, badRecord.Offset)
	}
	if kafka.Header(l.Record, "origin") != "test" {
		t.Errorf("dead letter lost the original headers: %v", l.Record.Headers)
	}

	// A second consumer of the group, started after the first stops, resumes
	// after the committed offsets: it sees only the records produced now,
	// which land behind the old ones in the same partitions.
	stop()
	c2, err := consumer.New(kcfg, kafkatest.Telemetry(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	rc2 := newRecorder()
	runStage(t, c2, rc2, run)
	after := []*kgo.Record{
		{Key: []byte("k1"), Value: []byte("k1-after")},
		{Key: []byte("k2"), Value: []byte("k2-after")},
	}
	if err := producer.ProduceSync(ctx, after...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for range after {
		select {
		case <-rc2.seen:
		case <-ctx.Done():
			applied, _ := rc2.snapshot()
			t.Fatalf("second consumer applied only %v", applied)
		}
	}
	applied2, _ := rc2.snapshot()
	wantAfter := map[string][]string{"k1": {"k1-after"}, "k2": {"k2-after"}}
	for key, w := range wantAfter {
		if !slices.Equal(applied2[key], w) {
			t.Errorf("second consumer applied %v for %s, want only %v (offsets of the first run not committed?)", applied2[key], key, w)
		}
	}
}

func values(rs []*kgo.Record) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r.Value)
	}
	return out
}

// TestStopCancelsHandler checks that stopping a stage cancels the context its
// handler works under: a handler waiting on a slow database must not keep the
// stage from shutting down.
func TestStopCancelsHandler(t *testing.T) {
	tests := []struct {
		name string
		run  func(ctx context.Context, c *consumer.Consumer, block func(context.Context)) error
	}{
		{"RunRecords", func(ctx context.Context, c *consumer.Consumer, block func(context.Context)) error {
			return c.RunRecords(ctx, func(ctx context.Context, _ *kgo.Record) error { block(ctx); return ctx.Err() })
		}},
		{"RunBatches", func(ctx context.Context, c *consumer.Consumer, block func(context.Context)) error {
			return c.RunBatches(ctx, func(ctx context.Context, _ []*kgo.Record) (map[*kgo.Record]error, error) {
				block(ctx)
				return nil, ctx.Err()
			})
		}},
		{"RunPartitionBatches", func(ctx context.Context, c *consumer.Consumer, block func(context.Context)) error {
			return c.RunPartitionBatches(ctx, func(ctx context.Context, _ []*kgo.Record) (map[*kgo.Record]error, error) {
				block(ctx)
				return nil, ctx.Err()
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kcfg := kafkatest.Config(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := consumer.New(kcfg, kafkatest.Telemetry(), consumer.Config{
				Stage: stage, Group: kcfg.Group("t"), Topics: []string{kcfg.Topics.ChannelEvents}, DLQTopic: kcfg.Topics.DLQ,
			})
			if err != nil {
				t.Fatal(err)
			}
			entered := make(chan struct{}, 1)
			release := make(chan struct{}) // lets a handler that missed the cancellation finish
			block := func(hctx context.Context) {
				select {
				case entered <- struct{}{}:
				default:
				}
				select {
				case <-hctx.Done():
				case <-release:
				}
			}
			kafkatest.CheckStopCancels(t, ctx, kcfg, &kgo.Record{Topic: kcfg.Topics.ChannelEvents, Key: []byte("k"), Value: []byte("slow")},
				entered, release, func(ctx context.Context) error { return tt.run(ctx, c, block) }, c.Close)
		})
	}
}
