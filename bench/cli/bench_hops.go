package cli

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The freshness run's hops, from the platform's own latency histograms
// (its /metrics on the admin listener), read before and after the run: how
// long each stage took from the record it consumed being produced to its
// effects being durable, and the relay from a change's outbox row to its
// Kafka commit.
var hopNames = []struct{ metric, stage, name string }{
	{"mc_stage_latency_seconds", "ingest", "ingest: channel event produced → member event committed (Kafka transaction)"},
	{"mc_stage_latency_seconds", "members", "member stage: member event produced → effects committed in PostgreSQL"},
	{"mc_relay_delay_seconds", "", "relay: change's outbox row written → committed in member.changes.v1"},
	{"mc_stage_latency_seconds", "clickhouse-sink", "ClickHouse sink: record produced → rows inserted"},
}

// hop is one histogram's difference over a window: its count and the
// buckets its quantiles fall in.
type hop struct {
	name          string
	n             uint64
	p50, p90, p99 [2]float64 // bucket (lower, upper] in seconds
}

// histograms maps metric name + "/" + stage to its cumulative histogram.
type histograms map[string]*dto.Histogram

// scrapeHistograms reads the histograms of hopNames from the admin
// endpoint at addr (host:port).
func scrapeHistograms(ctx context.Context, addr string) (histograms, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", addr, resp.Status)
	}
	return parseHistograms(resp.Body)
}

func parseHistograms(r io.Reader) (histograms, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	out := histograms{}
	for _, h := range hopNames {
		fam := fams[h.metric]
		for _, m := range fam.GetMetric() {
			stage := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "stage" {
					stage = l.GetValue()
				}
			}
			if stage == h.stage && m.GetHistogram() != nil {
				out[h.metric+"/"+stage] = m.GetHistogram()
			}
		}
	}
	return out, nil
}

// hopsBetween returns each hop's histogram over the window between two
// scrapes; a hop with nothing recorded in the window is left out.
func hopsBetween(before, after histograms) []hop {
	var out []hop
	for _, h := range hopNames {
		key := h.metric + "/" + h.stage
		a := after[key]
		if a == nil {
			continue
		}
		earlier := map[float64]uint64{}
		for _, b := range before[key].GetBucket() {
			earlier[b.GetUpperBound()] = b.GetCumulativeCount()
		}
		n := a.GetSampleCount() - before[key].GetSampleCount()
		if n == 0 {
			continue
		}
		type bucket struct {
			upper float64
			cum   uint64
		}
		bs := []bucket{}
		for _, b := range a.GetBucket() {
			bs = append(bs, bucket{b.GetUpperBound(), b.GetCumulativeCount() - earlier[b.GetUpperBound()]})
		}
		sort.Slice(bs, func(i, j int) bool { return bs[i].upper < bs[j].upper })
		bs = append(bs, bucket{math.Inf(1), n}) // the +Inf bucket is the count
		at := func(q float64) [2]float64 {
			lower := 0.0
			for _, b := range bs {
				if float64(b.cum) >= q*float64(n) {
					return [2]float64{lower, b.upper}
				}
				lower = b.upper
			}
			return [2]float64{lower, math.Inf(1)}
		}
		out = append(out, hop{name: h.name, n: n, p50: at(0.5), p90: at(0.9), p99: at(0.99)})
	}
	return out
}

// bucketMS shows a bucket as "25–50" (milliseconds).
func bucketMS(b [2]float64) string {
	f := func(s float64) string {
		if math.IsInf(s, 1) {
			return "∞"
		}
		return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", s*1000), "0"), ".")
	}
	return f(b[0]) + "–" + f(b[1])
}
