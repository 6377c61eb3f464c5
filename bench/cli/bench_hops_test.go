package cli

import (
	"math"
	"strconv"
	"strings"
	"testing"
)

// TestHopsAreTheHistogramsDifferenceOverTheRun: a hop counts only what was
// recorded between the two scrapes, and names the buckets its quantiles
// fall in; a stage with nothing new is left out.
func TestHopsAreTheHistogramsDifferenceOverTheRun(t *testing.T) {
	scrape := func(text string) histograms {
		t.Helper()
		h, err := parseHistograms(strings.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	const family = "# TYPE mc_stage_latency_seconds histogram\n"
	stage := func(name string, b1, b2, b3, n int) string {
		return strings.NewReplacer("S", name, "B1", strconv.Itoa(b1), "B2", strconv.Itoa(b2), "B3", strconv.Itoa(b3), "N", strconv.Itoa(n)).Replace(
			`mc_stage_latency_seconds_bucket{stage="S",le="0.05"} B1
mc_stage_latency_seconds_bucket{stage="S",le="0.1"} B2
mc_stage_latency_seconds_bucket{stage="S",le="0.25"} B3
mc_stage_latency_seconds_bucket{stage="S",le="+Inf"} N
mc_stage_latency_seconds_sum{stage="S"} 1
mc_stage_latency_seconds_count{stage="S"} N
`)
	}
	before := scrape(family + stage("ingest", 500, 900, 1000, 1000) + stage("members", 10, 10, 10, 10))
	// In the run: 100 ingest records, 10 ≤ 50 ms, 80 in (50, 100], 9 in
	// (100, 250], 1 above; none in the member stage.
	after := scrape(family + stage("ingest", 510, 990, 1099, 1100) + stage("members", 10, 10, 10, 10))
	hops := hopsBetween(before, after)
	if len(hops) != 1 {
		t.Fatalf("hops %+v, want ingest alone", hops)
	}
	h := hops[0]
	if !strings.HasPrefix(h.name, "ingest:") || h.n != 100 {
		t.Errorf("hop %q with %d records, want ingest with 100", h.name, h.n)
	}
	if got := bucketMS(h.p50) + " " + bucketMS(h.p90) + " " + bucketMS(h.p99); got != "50–100 50–100 100–250" {
		t.Errorf("p50 p90 p99 in %s", got)
	}
	if got := bucketMS([2]float64{0.25, math.Inf(1)}); got != "250–∞" {
		t.Errorf("above the last bucket: %s", got)
	}
}
