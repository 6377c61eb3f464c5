package consumer_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// A batch of records, each from its own trace: the handler sees each
// record's trace in the record's Context, and what the batch does in common
// runs in a batch span linked to every record's process span.
func TestBatchKeepsEachRecordsTrace(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	spans := tracetest.NewSpanRecorder()
	tel := kafkatest.Telemetry()
	tel.Tracers = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))

	// Ten records in one produce request, each carrying its own trace.
	const n = 10
	producer := sdktrace.NewTracerProvider().Tracer("till")
	cl := kafkaClient(t, kcfg)
	want := map[string]trace.TraceID{}
	var rs []*kgo.Record
	for i := range n {
		v := fmt.Sprintf("v%d", i)
		_, span := producer.Start(ctx, "checkout "+v)
		r := &kgo.Record{Topic: kcfg.Topics.ChannelEvents, Key: []byte("k"), Value: []byte(v)}
		propagation.TraceContext{}.Inject(trace.ContextWithSpan(ctx, span), headers{r})
		span.End()
		want[v] = span.SpanContext().TraceID()
		rs = append(rs, r)
	}
	if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	cfg := consumer.Config{Stage: stage, Group: kcfg.Group("t"), Topics: []string{kcfg.Topics.ChannelEvents}, DLQTopic: kcfg.Topics.DLQ}
	c, err := consumer.New(kcfg, tel, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]trace.TraceID{} // value → the trace its record context carries
	batchOf := map[string]trace.SpanContext{}
	done := make(chan struct{})
	var once sync.Once
	stop := runStage(t, c, nil, func(ctx context.Context, c *consumer.Consumer, _ *recorder) error {
		return c.RunBatches(ctx, func(ctx context.Context, rs []*kgo.Record) (map[*kgo.Record]error, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range rs {
				seen[string(r.Value)] = trace.SpanContextFromContext(r.Context).TraceID()
				batchOf[string(r.Value)] = trace.SpanContextFromContext(ctx)
			}
			if len(seen) == n {
				once.Do(func() { close(done) })
			}
			return nil, nil
		})
	})
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the records were not all handled")
	}
	stop() // the batch spans end when their batch is done: stopping waits for it
	mu.Lock()
	defer mu.Unlock()
	for v, id := range want {
		if seen[v] != id {
			t.Errorf("%s: record context in trace %s, want its producer's %s", v, seen[v], id)
		}
	}

	// Every record handled in a batch of several has a batch span that
	// links to its process span (in the record's trace).
	ended := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans.Ended() {
		ended[s.SpanContext().SpanID()] = s
	}
	batched := 0
	for v, sc := range batchOf {
		if sc.TraceID() == want[v] {
			continue // a batch of one runs in its record's span
		}
		batched++
		b, ok := ended[sc.SpanID()]
		if !ok {
			t.Fatalf("%s: the batch span %s was not recorded", v, sc.SpanID())
		}
		linked := false
		for _, l := range b.Links() {
			linked = linked || l.SpanContext.TraceID() == want[v]
		}
		if !linked {
			t.Errorf("%s: batch span %q does not link to the record's trace", v, b.Name())
		}
	}
	if batched == 0 {
		// One produce request makes one record batch, which one fetch returns.
		t.Error("every record came in a batch of one; want the ten produced together in one batch")
	}
}

// headers is a kgo.Record's headers as a propagation carrier.
type headers struct{ r *kgo.Record }

func (h headers) Get(k string) string {
	for _, x := range h.r.Headers {
		if x.Key == k {
			return string(x.Value)
		}
	}
	return ""
}
func (h headers) Set(k, v string) {
	h.r.Headers = append(h.r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
}
func (h headers) Keys() []string {
	var ks []string
	for _, x := range h.r.Headers {
		ks = append(ks, x.Key)
	}
	return ks
}
