package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/membercenter/membercenter/services/telemetry"
)

func setup(t *testing.T, cfg telemetry.Config, log io.Writer) (*telemetry.Telemetry, *tracetest.SpanRecorder) {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	tel, err := telemetry.Setup(context.Background(), cfg, log, telemetry.WithSpanProcessor(spans))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel, spans
}

// TestLogLinesLeadToTheirTrace: an SRE reading a log line finds its trace:
// every line logged in a span carries the span's trace and span ids, also
// through loggers derived with attributes or groups.
func TestLogLinesLeadToTheirTrace(t *testing.T) {
	var out bytes.Buffer
	tel, spans := setup(t, telemetry.Config{ServiceName: "mc-test", LogLevel: "info"}, &out)
	ctx, span := tel.Tracers.Tracer("test").Start(context.Background(), "commit")
	tel.Logger.InfoContext(ctx, "committed", "order", "o1")
	tel.Logger.With("stage", "benefits").WithGroup("g").WarnContext(ctx, "retrying")
	tel.Logger.DebugContext(ctx, "below the level")
	tel.Logger.Info("no context")
	span.End()

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want 3 (debug is below the level):\n%s", len(lines), out.String())
	}
	ended := spans.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans recorded", len(ended))
	}
	sc := ended[0].SpanContext()
	for i, l := range lines[:2] {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("line %d is not JSON: %s", i, l)
		}
		if rec["trace_id"] != sc.TraceID().String() || rec["span_id"] != sc.SpanID().String() {
			t.Errorf("line %d %s does not carry trace %s span %s", i, l, sc.TraceID(), sc.SpanID())
		}
	}
	if strings.Contains(lines[2], "trace_id") {
		t.Errorf("a line logged without a span has a trace id: %s", lines[2])
	}
}

func TestMetricsAreServedForPrometheus(t *testing.T) {
	tel, _ := setup(t, telemetry.Config{ServiceName: "mc-test", LogLevel: "info"}, io.Discard)
	c, err := tel.Meters.Meter("test").Int64Counter("mc_test_events")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 3)
	rec := httptest.NewRecorder()
	tel.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if body := rec.Body.String(); rec.Code != 200 || !strings.Contains(body, "mc_test_events_total") ||
		!strings.Contains(body, `service_name="mc-test"`) {
		t.Errorf("/metrics: %d\n%s", rec.Code, body)
	}
}

// TestMetricsShowTheRuntimeAndTheProcess: an SRE's Go dashboard finds the
// runtime's and the process's metrics beside the platform's.
func TestMetricsShowTheRuntimeAndTheProcess(t *testing.T) {
	tel, _ := setup(t, telemetry.Config{ServiceName: "mc-test", LogLevel: "info"}, io.Discard)
	body := scrape(t, tel)
	for _, name := range []string{"go_goroutines ", "go_memstats_heap_alloc_bytes ", "go_gc_duration_seconds", "go_info{",
		"process_resident_memory_bytes ", "process_cpu_seconds_total ", "process_open_fds "} {
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

// TestResourceAttributesComeFromTheEnvironment: what a deployment says in
// OTEL_RESOURCE_ATTRIBUTES (environment, pod, region) is on every span and
// on the metrics' target_info, beside the service's name.
func TestResourceAttributesComeFromTheEnvironment(t *testing.T) {
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,k8s.pod.name=membercenter-serve-7f9c,cloud.region=cn-east%202")
	tel, spans := setup(t, telemetry.Config{ServiceName: "mc-test", LogLevel: "info"}, io.Discard)
	_, span := tel.Tracers.Tracer("test").Start(context.Background(), "commit")
	span.End()
	want := map[string]string{"service.name": "mc-test", "deployment.environment.name": "staging",
		"k8s.pod.name": "membercenter-serve-7f9c", "cloud.region": "cn-east 2", "telemetry.sdk.language": "go"}
	got := map[string]string{}
	for _, kv := range spans.Ended()[0].Resource().Attributes() {
		got[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("span resource %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if body := scrape(t, tel); !strings.Contains(body, `deployment_environment_name="staging"`) ||
		!strings.Contains(body, `k8s_pod_name="membercenter-serve-7f9c"`) {
		t.Errorf("target_info does not carry the attributes:\n%s", grep(body, "target_info"))
	}
}

// TestServiceNamePrecedence: OTEL_SERVICE_NAME wins over a service.name in
// OTEL_RESOURCE_ATTRIBUTES, which wins over the default name.
func TestServiceNamePrecedence(t *testing.T) {
	for _, tc := range []struct{ serviceNameEnv, cfgName, want string }{
		{"", "membercenter", "from-attributes"},                            // the default name (OTEL_SERVICE_NAME unset)
		{"membercenter-serve", "membercenter-serve", "membercenter-serve"}, // set: the config holds it too
	} {
		t.Setenv("OTEL_SERVICE_NAME", tc.serviceNameEnv)
		t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
		tel, spans := setup(t, telemetry.Config{ServiceName: tc.cfgName, LogLevel: "info"}, io.Discard)
		_, span := tel.Tracers.Tracer("test").Start(context.Background(), "x")
		span.End()
		if v, _ := spans.Ended()[0].Resource().Set().Value("service.name"); v.AsString() != tc.want {
			t.Errorf("OTEL_SERVICE_NAME=%q: service.name %q, want %q", tc.serviceNameEnv, v.AsString(), tc.want)
		}
	}
}

func TestMalformedResourceAttributesStopTheStart(t *testing.T) {
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name")
	_, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "mc", LogLevel: "info"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "OTEL_RESOURCE_ATTRIBUTES") {
		t.Errorf("Setup with a malformed OTEL_RESOURCE_ATTRIBUTES: %v; want an error naming it", err)
	}
}

func scrape(t *testing.T, tel *telemetry.Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d\n%s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

func grep(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestConfig(t *testing.T) {
	if err := (telemetry.Config{ServiceName: "mc", LogLevel: "debug"}).Validate(); err != nil {
		t.Errorf("a good config: %v", err)
	}
	err := telemetry.Config{LogLevel: "loud"}.Validate()
	if err == nil || !strings.Contains(err.Error(), "OTEL_SERVICE_NAME") || !strings.Contains(err.Error(), "MC_LOG_LEVEL") {
		t.Errorf("a bad config: %v; want both problems named", err)
	}
	if _, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "mc", LogLevel: "loud"}, io.Discard); err == nil {
		t.Error("Setup accepted a bad log level")
	}
}

func TestMaskHidesSecrets(t *testing.T) {
	for in, want := range map[string]string{"": "", "abc": "***", "abcdef": "******", "s3cr3t-value": "s3********ue"} {
		if got := telemetry.Mask(in); got != want {
			t.Errorf("Mask(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNoExporterRecordsNoSpans: a process that exports traces nowhere
// records no spans (recording every record's spans for no one cost about
// 4% of the process's CPU in a drain), yet its log lines still carry trace
// and span ids; OTEL_TRACES_SAMPLER, when an operator sets it, decides as
// the SDK has it.
func TestNoExporterRecordsNoSpans(t *testing.T) {
	for _, tc := range []struct {
		sampler   string
		recording bool
	}{{"", false}, {"always_on", true}} {
		if tc.sampler != "" {
			t.Setenv("OTEL_TRACES_SAMPLER", tc.sampler)
		}
		var out bytes.Buffer
		tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "mc", LogLevel: "info"}, &out)
		if err != nil {
			t.Fatal(err)
		}
		ctx, span := tel.Tracers.Tracer("test").Start(context.Background(), "commit")
		tel.Logger.InfoContext(ctx, "committed")
		recording := span.IsRecording()
		span.End()
		_ = tel.Shutdown(context.Background())
		if recording != tc.recording {
			t.Errorf("OTEL_TRACES_SAMPLER=%q, no exporter: span recording %v, want %v", tc.sampler, recording, tc.recording)
		}
		sc := span.SpanContext()
		var rec map[string]any
		if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %s", out.String())
		}
		if !sc.IsValid() || rec["trace_id"] != sc.TraceID().String() || rec["span_id"] != sc.SpanID().String() {
			t.Errorf("OTEL_TRACES_SAMPLER=%q, no exporter: log line %s does not carry the span's ids (%s, %s)",
				tc.sampler, out.String(), sc.TraceID(), sc.SpanID())
		}
	}
}

// TestSpanProcessorAddedLaterIsHeard: in a process that records no spans
// for want of a receiver, a span processor added later (a benchmark
// counting statements) has spans recorded while it listens, and none
// once it is removed.
func TestSpanProcessorAddedLaterIsHeard(t *testing.T) {
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "mc", LogLevel: "info"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	spans := tracetest.NewSpanRecorder()
	_, before := tel.Tracers.Tracer("test").Start(context.Background(), "before")
	before.End()
	tel.AddSpanProcessor(spans)
	_, listened := tel.Tracers.Tracer("test").Start(context.Background(), "listened")
	listened.End()
	tel.RemoveSpanProcessor(spans)
	_, after := tel.Tracers.Tracer("test").Start(context.Background(), "after")
	if after.IsRecording() {
		t.Error("a span started after the processor was removed is recorded")
	}
	after.End()
	if ended := spans.Ended(); len(ended) != 1 || ended[0].Name() != "listened" {
		t.Errorf("the processor added after Setup received %d spans; want the one started while it listened", len(ended))
	}
}

// TestSpansKeepABatchsStatements: a span keeps SpanEventLimit events (a
// batch's statements are events of its span), unless
// OTEL_SPAN_EVENT_COUNT_LIMIT sets another limit.
func TestSpansKeepABatchsStatements(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want int
	}{{"", telemetry.SpanEventLimit}, {"50", 50}} {
		t.Setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", tc.env)
		tel, spans := setup(t, telemetry.Config{ServiceName: "mc", LogLevel: "info"}, io.Discard)
		_, span := tel.Tracers.Tracer("test").Start(context.Background(), "batch")
		for range telemetry.SpanEventLimit + 10 {
			span.AddEvent("batch query")
		}
		span.End()
		ended := spans.Ended()
		got := ended[len(ended)-1]
		if n := len(got.Events()); n != tc.want || got.DroppedEvents() != telemetry.SpanEventLimit+10-tc.want {
			t.Errorf("OTEL_SPAN_EVENT_COUNT_LIMIT=%q: a span kept %d events and dropped %d of %d; want %d kept",
				tc.env, n, got.DroppedEvents(), telemetry.SpanEventLimit+10, tc.want)
		}
	}
}
