// Package kafkatest gives each test its own topics and consumer groups on the
// real broker scripts/deps.sh starts (MC_KAFKA_BROKERS), deleted when the
// test ends, so tests run in parallel without seeing each other's records.
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Brokers returns the test broker addresses.
func Brokers() []string {
	if b := os.Getenv("MC_KAFKA_BROKERS"); b != "" {
		return strings.Split(b, ",")
	}
	return []string{"127.0.0.1:59092"}
}

// Telemetry returns telemetry that records nothing and logs nothing.
func Telemetry() kafka.Telemetry {
	return kafka.Telemetry{
		Tracers:    tracenoop.NewTracerProvider(),
		Meters:     metricnoop.NewMeterProvider(),
		Propagator: propagation.TraceContext{},
		Logger:     slog.New(slog.DiscardHandler),
	}
}

// Metered returns Telemetry with its meters read by the reader returned
// (StageRecords).
func Metered() (kafka.Telemetry, *sdkmetric.ManualReader) {
	tel, r := Telemetry(), sdkmetric.NewManualReader()
	tel.Meters = sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	return tel, r
}

// StageRecords is what the mc.stage.records counter read by r holds for
// stage, by outcome (ok, dlq).
func StageRecords(t testing.TB, ctx context.Context, r *sdkmetric.ManualReader, stage string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != "mc.stage.records" || !ok {
				continue
			}
			for _, p := range sum.DataPoints {
				if st, _ := p.Attributes.Value(attribute.Key("stage")); st.AsString() != stage {
					continue
				}
				o, _ := p.Attributes.Value(attribute.Key("outcome"))
				out[o.AsString()] += p.Value
			}
		}
	}
	return out
}

// Config returns a config whose topics exist only for t.
func Config(t testing.TB) kafka.Config {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := "t" + hex.EncodeToString(b)
	cfg := kafka.Config{
		Brokers:     Brokers(),
		InstanceID:  id,
		GroupPrefix: id,
		Topics: kafka.Topics{
			ChannelEvents: id + ".channel.events.v1",
			MemberEvents:  id + ".member.events.v1",
			MemberChanges: id + ".member.changes.v1",
			DLQ:           id + ".dlq.v1",
		},
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		t.Fatalf("kafkatest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafka.EnsureTopics(ctx, cl, cfg.Topics); err != nil {
		cl.Close()
		t.Fatalf("kafkatest: create topics on %v (is scripts/deps.sh running?): %v", cfg.Brokers, err)
	}
	t.Cleanup(func() {
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var names []string
		for n := range cfg.Topics.All() {
			names = append(names, n)
		}
		if _, err := kadm.NewClient(cl).DeleteTopics(ctx, names...); err != nil {
			t.Logf("kafkatest: delete topics: %v", err)
		}
	})
	return cfg
}

// WaitCommitted polls until group has committed, for every partition of
// topic, the current end offset.
func WaitCommitted(t testing.TB, ctx context.Context, adm *kadm.Client, group, topic string) {
	t.Helper()
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var lag string
	for {
		committed, err := adm.FetchOffsets(ctx, group)
		if err == nil {
			lag = ""
			ends.Each(func(end kadm.ListedOffset) {
				c, ok := committed.Lookup(topic, end.Partition)
				if end.Offset > 0 && (!ok || c.At < end.Offset) {
					lag += fmt.Sprintf(" p%d: committed %d of %d;", end.Partition, c.At, end.Offset)
				}
			})
			if lag == "" {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %s did not commit the end of %s:%s (last error %v)", group, topic, lag, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ReadTopic returns every committed record of topic produced so far. It
// appends a fence record to each partition and reads (read_committed) until
// each fence comes back: partitions are ordered, so nothing produced earlier
// is missed.
func ReadTopic(t testing.TB, ctx context.Context, kcfg kafka.Config, topic string) []*kgo.Record {
	t.Helper()
	parts := kcfg.Topics.All()[topic]
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	fence := "fence-" + hex.EncodeToString(b)

	pcl, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer pcl.Close()
	for p := range parts {
		if err := pcl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: p, Value: []byte(fence)}).FirstErr(); err != nil {
			t.Fatalf("produce fence: %v", err)
		}
	}

	ccl, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer ccl.Close()
	var out []*kgo.Record
	fenced := map[int32]bool{}
	for len(fenced) < int(parts) {
		fs := ccl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: fences seen in %d of %d partitions", topic, len(fenced), parts)
		}
		fs.EachError(func(_ string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Value) == fence {
				fenced[r.Partition] = true
				return
			}
			if !fenced[r.Partition] && !strings.HasPrefix(string(r.Value), "fence-") {
				out = append(out, r)
			}
		})
	}
	return out
}

// CheckStopCancels checks that stopping a stage cancels the context its
// handler works under, so a handler waiting on a hung database cannot keep
// the stage from shutting down. It runs the stage with run, produces rec,
// waits until the handler signals entered, ends run's context and fails t
// unless run returns nil within 30 s. At cleanup it closes release (for a
// handler that missed the cancellation), waits for run and calls closeStage.
func CheckStopCancels(t testing.TB, ctx context.Context, kcfg kafka.Config, rec *kgo.Record,
	entered <-chan struct{}, release chan struct{}, run func(context.Context) error, closeStage func()) {
	t.Helper()
	runCtx, stop := context.WithCancel(ctx)
	var runErr error
	done := make(chan struct{})
	go func() { runErr = run(runCtx); close(done) }()
	t.Cleanup(func() {
		close(release)
		stop()
		<-done
		closeStage()
	})

	producer, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if err := producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("handler never called")
	}
	stop()
	select {
	case <-done:
		if runErr != nil {
			t.Fatalf("run returned %v after stop, want nil", runErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run still blocked 30s after its context ended: the handler's context was not cancelled")
	}
}

// SequenceFaults counts the gaps and duplicates of seqs (a member's change
// sequences as a topic or a stream delivered them), which should run from
// start up by one.
func SequenceFaults(seqs []uint64, start uint64) (gaps, dups int) {
	next := start
	seen := map[uint64]bool{}
	for _, q := range seqs {
		switch {
		case seen[q]:
			dups++
			continue
		case q != next:
			gaps++
		}
		seen[q] = true
		next = q + 1
	}
	return gaps, dups
}
