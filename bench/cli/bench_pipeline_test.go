package cli

import (
	"bytes"
	"testing"
	"time"

	"github.com/membercenter/membercenter/bench/loadgen"
)

// TestPipelineWorkloadIsTheSameAllDay: two runs of the pipeline bench on
// one day in Asia/Shanghai, whatever their hours, publish the same records;
// the next day's clock starts a day later.
func TestPipelineWorkloadIsTheSameAllDay(t *testing.T) {
	first := time.Date(2026, 12, 6, 16, 0, 0, 0, time.UTC) // 00:00 on the 7th in Shanghai
	last := first.Add(24*time.Hour - time.Second)
	if a, b := loadgen.DayStart(first, pipelineDays), loadgen.DayStart(last, pipelineDays); !a.Equal(b) {
		t.Fatalf("clock starts %s and %s on one day", a, b)
	}
	if d := loadgen.DayStart(last.Add(time.Second), pipelineDays).Sub(loadgen.DayStart(first, pipelineDays)); d != 24*time.Hour {
		t.Errorf("the next day's clock starts %s later, want 24h", d)
	}
	gen := func(now time.Time) *loadgen.Generator {
		return loadgen.New(loadgen.Config{Seed: 1, Members: 1000, Days: pipelineDays, Start: loadgen.DayStart(now, pipelineDays), Events: 2000, IDPrefix: "bp", CouponRate: -1})
	}
	a, b := gen(first.Add(29*time.Minute)), gen(first.Add(13*time.Hour+31*time.Minute))
	for i := range 2000 {
		ra, rb := a.Next(), b.Next()
		if !bytes.Equal(ra.Key, rb.Key) || !bytes.Equal(ra.Value, rb.Value) || ra.Malformed != rb.Malformed {
			t.Fatalf("record %d differs between runs at 00:29 and 13:31: %s %q / %s %q", i+1, ra.EventID, ra.Malformed, rb.EventID, rb.Malformed)
		}
	}
}
