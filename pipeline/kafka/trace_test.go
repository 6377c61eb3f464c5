package kafka_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// TestQuietClientsPassTheTraceOn: while no span is recorded, a produced
// record's headers carry its producer's trace context as it is and the
// consumer's record and process span continue that trace, with no publish
// or receive span of their own; once spans are recorded, both are there
// again, between the producer and the process span, unless the producer's
// trace was left out by the sampler.
func TestQuietClientsPassTheTraceOn(t *testing.T) {
	cfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	var recording atomic.Bool
	tel := kafka.Telemetry{Tracers: tp, Meters: metricnoop.NewMeterProvider(), Propagator: propagation.TraceContext{},
		Logger: slog.New(slog.DiscardHandler), Recording: recording.Load}
	topic := cfg.Topics.ChannelEvents
	prod, err := kafka.NewClient(cfg, tel, "")
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	cons, err := kafka.NewClient(cfg, tel, "", kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	names := func() []string {
		var out []string
		for _, s := range spans.Ended() {
			out = append(out, s.Name())
		}
		return out
	}
	// pass produces a record under a parent span (one left out by the
	// sampler when sampled is false) and returns the consumed record's
	// trace context and its process span's.
	pass := func(key string, sampled bool) (parent, got, process trace.SpanContext) {
		t.Helper()
		pctx, span := tp.Tracer("test").Start(ctx, "till "+key)
		defer span.End()
		if !sampled {
			pctx = trace.ContextWithSpanContext(ctx, span.SpanContext().WithTraceFlags(0))
		}
		if err := prod.ProduceSync(pctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: []byte("v")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		for {
			fs := cons.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				t.Fatal(err)
			}
			var r *kgo.Record
			fs.EachRecord(func(rec *kgo.Record) {
				if string(rec.Key) == key {
					r = rec
				}
			})
			if r == nil {
				continue
			}
			got = trace.SpanContextFromContext(r.Context)
			_, ps := kafka.ProcessSpan(ctx, cons.Tracer, r)
			ps.End()
			return trace.SpanContextFromContext(pctx), got, ps.SpanContext()
		}
	}

	parent, got, process := pass("quiet", true)
	if got.TraceID() != parent.TraceID() || got.SpanID() != parent.SpanID() {
		t.Errorf("quiet: the consumed record's trace context %v; want its producer's %v", got, parent)
	}
	if process.TraceID() != parent.TraceID() || !process.IsValid() {
		t.Errorf("quiet: the process span %v does not continue the trace %v", process, parent.TraceID())
	}
	if n := names(); slices.ContainsFunc(n, func(s string) bool { return strings.HasSuffix(s, " publish") || strings.HasSuffix(s, " receive") }) {
		t.Errorf("quiet: spans recorded %v; want no publish or receive span", n)
	}

	recording.Store(true)
	// A trace the sampler left out upstream: passed on as in a quiet
	// process, no span of the clients' own.
	parent, got, process = pass("left out", false)
	if got.TraceID() != parent.TraceID() || got.SpanID() != parent.SpanID() || got.IsSampled() || process.TraceID() != parent.TraceID() || process.IsSampled() {
		t.Errorf("left out: record %v, process %v; want the producer's %v as it is, and an unsampled process span", got, process, parent)
	}
	if n := names(); slices.ContainsFunc(n, func(s string) bool { return strings.HasSuffix(s, " publish") || strings.HasSuffix(s, " receive") }) {
		t.Errorf("left out: spans recorded %v; want no publish or receive span", n)
	}

	parent, got, process = pass("recording", true)
	if got.TraceID() != parent.TraceID() || got.SpanID() == parent.SpanID() || process.TraceID() != parent.TraceID() {
		t.Errorf("recording: record %v, process %v; want the producer's trace %v through spans of their own", got, process, parent.TraceID())
	}
	n := names()
	for _, want := range []string{topic + " publish", topic + " receive", topic + " process"} {
		if !slices.Contains(n, want) {
			t.Errorf("recording: spans %v; want %q among them", n, want)
		}
	}
}
