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
