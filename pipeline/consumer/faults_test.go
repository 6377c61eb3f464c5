package consumer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/pipeline/fault/faulttest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// poisonHandler applies records and remembers the order per partition; its
// behaviour per value is set by the test.
type poisonHandler struct {
	mu       sync.Mutex
	applied  map[int32][]string
	attempts map[string]int
	fail     func(value string, attempt int) error
	changed  chan struct{}
}

func newPoisonHandler(fail func(string, int) error) *poisonHandler {
	return &poisonHandler{applied: map[int32][]string{}, attempts: map[string]int{}, fail: fail, changed: make(chan struct{}, 1)}
}

func (h *poisonHandler) handle(ctx context.Context, r *kgo.Record) error {
	h.mu.Lock()
	v := string(r.Value)
	h.attempts[v]++
	n := h.attempts[v]
	h.mu.Unlock()
	if err := h.fail(v, n); err != nil {
		return err
	}
	h.mu.Lock()
	h.applied[r.Partition] = append(h.applied[r.Partition], v)
	h.mu.Unlock()
	select {
	case h.changed <- struct{}{}:
	default:
	}
	return nil
}

func (h *poisonHandler) snapshot() (map[int32][]string, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return cloneState(h.applied, h.attempts)
}

// waitFor waits until cond holds, re-checking whenever the handler applied
// something (and at least every 100 ms for effects elsewhere).
func (h *poisonHandler) waitFor(t *testing.T, ctx context.Context, what string, cond func(map[int32][]string, map[string]int) bool) {
	t.Helper()
	for {
		applied, attempts := h.snapshot()
		if cond(applied, attempts) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reached (applied %v, attempts %v)", what, applied, attempts)
		case <-h.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func produceTo(t *testing.T, ctx context.Context, kcfg kafka.Config, topic string, partition int32, values ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(16<<20), kgo.ProducerBatchCompression(kgo.ZstdCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: partition, Key: []byte("k"), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatalf("produce %.20q: %v", v, err)
		}
	}
}

func startRecords(t *testing.T, kcfg kafka.Config, h *poisonHandler) consumer.Config {
	t.Helper()
	cfg := consumer.Config{Stage: stage, Group: kcfg.Group("t"), Topics: []string{kcfg.Topics.ChannelEvents}, DLQTopic: kcfg.Topics.DLQ}
	c, err := consumer.New(kcfg, kafkatest.Telemetry(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	runStage(t, c, nil, func(ctx context.Context, c *consumer.Consumer, _ *recorder) error {
		return c.RunRecords(ctx, h.handle)
	})
	return cfg
}

// A record whose failure nothing recognises is retried for the configured
// limit, then dead-lettered with the error as its reason; meanwhile the
// other partitions go on, and the records behind it follow once it is gone.
func TestUnknownFailureIsBoundedAndHoldsUpNoOtherPartition(t *testing.T) {
	kcfg := kafkatest.Config(t)
	kcfg.RecordRetryLimit = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	h := newPoisonHandler(func(v string, _ int) error {
		if v == "stuck" {
			return errors.New("the store answered something odd")
		}
		return nil
	})
	cfg := startRecords(t, kcfg, h)
	produceTo(t, ctx, kcfg, kcfg.Topics.ChannelEvents, 0, "p0-a", "stuck", "p0-b")
	h.waitFor(t, ctx, "the stuck record retried", func(_ map[int32][]string, n map[string]int) bool { return n["stuck"] >= 2 })
	produceTo(t, ctx, kcfg, kcfg.Topics.ChannelEvents, 1, "p1-a", "p1-b")
	h.waitFor(t, ctx, "partition 1 applied while partition 0 retries", func(a map[int32][]string, _ map[string]int) bool {
		return slices.Equal(a[1], []string{"p1-a", "p1-b"})
	})
	if a, _ := h.snapshot(); slices.Contains(a[0], "p0-b") {
		t.Fatalf("p0-b applied before the stuck record ahead of it was dealt with: %v", a[0])
	}
	h.waitFor(t, ctx, "partition 0 goes on after the limit", func(a map[int32][]string, _ map[string]int) bool {
		return slices.Equal(a[0], []string{"p0-a", "p0-b"})
	})
	letters := kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ)
	if len(letters) != 1 || string(letters[0].Value) != "stuck" {
		t.Fatalf("dead letters = %v, want the stuck record only", values(letters))
	}
	if l := dlq.Parse(letters[0]); !strings.Contains(l.Reason, "retried for") || !strings.Contains(l.Reason, "something odd") || l.Partition != 0 {
		t.Fatalf("letter = %+v, want the retry limit and the last error as its reason", l)
	}
	kafkatest.WaitCommitted(t, ctx, kadm.NewClient(kafkaClient(t, kcfg)), cfg.Group, kcfg.Topics.ChannelEvents)
}

// A data error (here PostgreSQL's "invalid byte sequence", class 22) is
// dead-lettered at its first attempt; an outage is retried past the limit
// and applies once it ends, nothing dead-lettered.
func TestDataErrorsAtOnceOutagesForAsLongAsTheyLast(t *testing.T) {
	kcfg := kafkatest.Config(t)
	kcfg.RecordRetryLimit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var outage sync.Mutex
	outage.Lock()
	outageSince := time.Now()
	h := newPoisonHandler(func(v string, n int) error {
		switch v {
		case "nul":
			return fmt.Errorf("insert event: %w", faulttest.SQLError("22021"))
		case "during-outage":
			if outage.TryLock() {
				outage.Unlock()
				return nil
			}
			return fmt.Errorf("acquire connection: %w", faulttest.SQLError("57P03")) // the database is starting up
		}
		return nil
	})
	startRecords(t, kcfg, h)
	produceTo(t, ctx, kcfg, kcfg.Topics.ChannelEvents, 2, "nul", "after-nul", "during-outage", "after-outage")
	h.waitFor(t, ctx, "the outage outlasts the retry limit", func(_ map[int32][]string, n map[string]int) bool {
		return n["during-outage"] >= 2 && time.Since(outageSince) > 2*kcfg.RecordRetryLimit
	})
	outage.Unlock()
	h.waitFor(t, ctx, "everything good applied in order", func(a map[int32][]string, _ map[string]int) bool {
		return slices.Equal(a[2], []string{"after-nul", "during-outage", "after-outage"})
	})
	_, attempts := h.snapshot()
	if attempts["nul"] != 1 {
		t.Errorf("the data error was attempted %d times, want 1", attempts["nul"])
	}
	letters := kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ)
	if len(letters) != 1 || string(letters[0].Value) != "nul" || !strings.Contains(dlq.Parse(letters[0]).Reason, "22021") {
		t.Fatalf("dead letters = %v, want the data error only, with its reason", values(letters))
	}
}

// A 10 MB record (compressible, so Kafka took it) that the stage refuses is
// dead-lettered by reference, since it cannot be sent whole, and the
// partition goes on.
func TestTooLargeRecordDeadLetteredByReference(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	huge := strings.Repeat("x", 10<<20)
	h := newPoisonHandler(func(v string, _ int) error {
		if len(v) > 1<<20 {
			return dlq.Reject(fmt.Errorf("record of %d bytes is too large", len(v)))
		}
		return nil
	})
	startRecords(t, kcfg, h)
	produceTo(t, ctx, kcfg, kcfg.Topics.ChannelEvents, 3, huge, "next")
	h.waitFor(t, ctx, "the record behind applied", func(a map[int32][]string, _ map[string]int) bool {
		return slices.Equal(a[3], []string{"next"})
	})
	letters := kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ)
	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want 1", len(letters))
	}
	l := dlq.Parse(letters[0])
	if !l.Truncated || l.OriginalSize < 10<<20 || len(l.OriginalHash) != 64 || l.Partition != 3 ||
		!bytes.HasPrefix([]byte(huge), l.Record.Value) || len(l.Record.Value) == 0 {
		t.Fatalf("letter = truncated %v, size %d, hash %q, partition %d, %d-byte prefix", l.Truncated, l.OriginalSize, l.OriginalHash, l.Partition, len(l.Record.Value))
	}
}

// A batch stage whose store refuses a whole batch because of one record
// finds that record by splitting the batch, dead-letters it alone and
// applies the rest.
func TestBatchSplitsAroundTheRecordAtFault(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := consumer.Config{Stage: stage, Group: kcfg.Group("t"), Topics: []string{kcfg.Topics.ChannelEvents}, DLQTopic: kcfg.Topics.DLQ,
		Linger: 200 * time.Millisecond}
	var vals []string
	for i := range 40 {
		vals = append(vals, fmt.Sprintf("v%02d", i))
	}
	vals[17] = "poison"
	produceTo(t, ctx, kcfg, kcfg.Topics.ChannelEvents, 0, vals...)
	var mu sync.Mutex
	var applied []string
	calls := 0
	done := make(chan struct{})
	c, err := consumer.New(kcfg, kafkatest.Telemetry(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	runStage(t, c, nil, func(ctx context.Context, c *consumer.Consumer, _ *recorder) error {
		return c.RunBatches(ctx, func(_ context.Context, rs []*kgo.Record) (map[*kgo.Record]error, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			for _, r := range rs {
				if string(r.Value) == "poison" {
					return nil, fault.Permanent(errors.New("Cannot parse input: the store refused the batch"))
				}
			}
			for _, r := range rs {
				applied = append(applied, string(r.Value))
			}
			if len(applied) == len(vals)-1 {
				close(done)
			}
			return nil, nil
		})
	})
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("applied %d of %d", len(applied), len(vals)-1)
	}
	// The batch's offsets are committed after its dead letters are written.
	kafkatest.WaitCommitted(t, ctx, kadm.NewClient(kafkaClient(t, kcfg)), cfg.Group, kcfg.Topics.ChannelEvents)
	mu.Lock()
	want := slices.DeleteFunc(slices.Clone(vals), func(v string) bool { return v == "poison" })
	if !slices.Equal(applied, want) {
		t.Errorf("applied %v, want every other record once, in order", applied)
	}
	mu.Unlock()
	letters := kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ)
	if len(letters) != 1 || string(letters[0].Value) != "poison" {
		t.Fatalf("dead letters = %v, want the poison record only", values(letters))
	}
}

func kafkaClient(t *testing.T, kcfg kafka.Config) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// TestARefusalOfAnAppliedBatchIsDeadLetteredWhileStopping: a batch applier
// that committed its effects and refused a record (a member stage records
// the refused event processed, so a redelivery refuses nothing) gets the
// letter sent even when the stage began to stop during the batch. Before,
// the letter was sent under the stopping context and lost.
func TestARefusalOfAnAppliedBatchIsDeadLetteredWhileStopping(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := consumer.Config{Stage: stage, Group: kcfg.Group("t"), Topics: []string{kcfg.Topics.ChannelEvents}, DLQTopic: kcfg.Topics.DLQ}
	produceTo(t, ctx, kcfg, kcfg.Topics.ChannelEvents, 0, "good", "refused")
	c, err := consumer.New(kcfg, kafkatest.Telemetry(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopping := make(chan struct{})
	var stop func()
	var once sync.Once
	stop = runStage(t, c, nil, func(sctx context.Context, c *consumer.Consumer, _ *recorder) error {
		return c.RunBatches(sctx, func(_ context.Context, rs []*kgo.Record) (map[*kgo.Record]error, error) {
			out := map[*kgo.Record]error{}
			for _, r := range rs {
				if string(r.Value) == "refused" {
					out[r] = fault.Permanent(errors.New("refused by the programme"))
				}
			}
			if len(out) > 0 {
				// The effects are committed; the stage is told to stop
				// before the letter goes out.
				once.Do(func() { close(stopping) })
				<-sctx.Done()
			}
			return out, nil
		})
	})
	select {
	case <-stopping:
	case <-ctx.Done():
		t.Fatal("the refused record never reached the applier")
	}
	stop()
	letters := kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ)
	if len(letters) != 1 || string(letters[0].Value) != "refused" {
		t.Fatalf("dead letters = %v, want the refused record", values(letters))
	}
}
