package tags

import (
	"encoding/json"
	"fmt"
	"maps"
	"testing"
	"time"
)

// storedMember is a member's member_features row as the tag worker loads it.
type storedMember struct {
	state, labels []byte
	due           time.Time
	catalog       string
	demo          Demographics
}

// benchMembers folds histories of n events over the last 300 days into 20
// members and stores them as the worker would at now.
func benchMembers(tb testing.TB, c *Catalog, now time.Time, n int) []*storedMember {
	tb.Helper()
	out := make([]*storedMember, 20)
	for i := range out {
		g := newFactGen(uint64(i + 1))
		st := &State{}
		for _, f := range g.history(now, n, 300*day, 0.6) {
			st.Fold(f)
		}
		m := &storedMember{catalog: c.Version, demo: Demographics{BirthDate: fmt.Sprintf("19%02d-0%d-1%d", 60+i, 1+i%9, i%10), Gender: "f", City: "Shanghai"}}
		feats := Compute(Inputs{State: st, Demo: m.demo}, now, c.Location, c.Filters, c.FilterKey())
		labels := c.Evaluate(feats.Values, nil, nil, false)
		var err error
		if m.state, err = json.Marshal(st); err != nil {
			tb.Fatal(err)
		}
		if m.labels, err = json.Marshal(labels); err != nil {
			tb.Fatal(err)
		}
		m.due = feats.Next
		out[i] = m
	}
	return out
}

// tagEvent is what the tag worker computes for one event of a member (the
// PostgreSQL statements aside): decode the stored state and labels, fold
// the event, compute the features and the labels it can change, and encode
// the state and the labels to write back. It returns the labels that
// changed.
func tagEvent(c *Catalog, m *storedMember, f Fact, now time.Time) (int, error) {
	st := &State{}
	if err := json.Unmarshal(m.state, st); err != nil {
		return 0, err
	}
	prev := map[string]any{}
	if err := json.Unmarshal(m.labels, &prev); err != nil {
		return 0, err
	}
	st.Fold(f)
	st.Trim(now)
	feats := Compute(Inputs{State: st, Demo: m.demo}, now, c.Location, c.Filters, c.FilterKey())
	var only map[string]bool
	if m.catalog == c.Version && m.due.After(now) {
		only = maps.Clone(c.Dirty(f.Kind))
	}
	labels := c.Evaluate(feats.Values, only, prev, false)
	diff := Diff(prev, labels, now)
	if _, err := json.Marshal(st); err != nil {
		return 0, err
	}
	if _, err := json.Marshal(labels); err != nil {
		return 0, err
	}
	if _, err := EncodeLabels(labels); err != nil {
		return 0, err
	}
	return len(diff), nil
}

// BenchmarkTagEvent is the tag worker's CPU per event, without PostgreSQL:
// members with 45 events (60% purchases) over 300 days, the shipped
// catalogue, an event a second after the stored labels were computed.
func BenchmarkTagEvent(b *testing.B) {
	c, err := ParseCatalog(DefaultCatalog())
	if err != nil {
		b.Fatal(err)
	}
	now0 := time.Date(2026, 3, 2, 2, 0, 0, 0, time.UTC) // 10:00 in Shanghai
	for _, size := range []int{45, 200} {
		members := benchMembers(b, c, now0, size)
		for _, kind := range []struct {
			name     string
			purchase float64
		}{{"purchase", 1}, {"interaction", 0}, {"mix", 0.5}} {
			b.Run(fmt.Sprintf("events=%d/%s", size, kind.name), func(b *testing.B) {
				g := newFactGen(99)
				facts := make([]Fact, 64)
				now := now0.Add(time.Second)
				for i := range facts {
					facts[i] = g.fact(now.Add(-time.Duration(i)*time.Second), kind.purchase)
					facts[i].Origin = newFactGen(uint64(i%len(members) + 1)).origins[0]
				}
				changed := 0
				i := 0
				for b.Loop() {
					n, err := tagEvent(c, members[i%len(members)], facts[i%len(facts)], now)
					if err != nil {
						b.Fatal(err)
					}
					changed += n
					i++
				}
				b.ReportMetric(float64(changed)/float64(i), "changed/op")
			})
		}
	}
}
