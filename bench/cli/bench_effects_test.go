package cli

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/telemetry"
)

// The drain's end is read from the platform's own counters through its
// metrics handler: the stages' records (both outcomes, every stage) and
// the relay's published changes count, other counters do not.
func TestEffectsSoFarSumsTheEffectCounters(t *testing.T) {
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "membercenter", LogLevel: "info"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tel.Shutdown(ctx) }()
	if n, err := effectsSoFar(tel.Metrics); err != nil || n != 0 {
		t.Fatalf("before any effect: %v, %v", n, err)
	}
	sm, err := kafka.NewStageMetrics(tel.Meters)
	if err != nil {
		t.Fatal(err)
	}
	ingestOK, ingestDLQ := kafka.RecordOutcomes("ingest")
	sinkOK, _ := kafka.RecordOutcomes("sink")
	sm.Records.Add(ctx, 7, ingestOK)
	sm.Records.Add(ctx, 2, ingestDLQ)
	sm.Records.Add(ctx, 5, sinkOK)
	m := tel.Meters.Meter("test")
	published, err := m.Int64Counter("mc.relay.published")
	if err != nil {
		t.Fatal(err)
	}
	published.Add(ctx, 4)
	other, err := m.Int64Counter("mc.other.things")
	if err != nil {
		t.Fatal(err)
	}
	other.Add(ctx, 100)
	if n, err := effectsSoFar(tel.Metrics); err != nil || n != 7+2+5+4 {
		t.Fatalf("effects: %v, %v; want %d", n, err, 7+2+5+4)
	}

	broken := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	if _, err := effectsSoFar(broken); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("a metrics handler that fails: %v", err)
	}
}
