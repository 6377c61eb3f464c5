package tags

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// processCPU is the CPU time the process used (every thread: the garbage
// collector's too), in nanoseconds: what a loaded machine does not inflate
// as it does wall time.
func processCPU(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// storedMember is a member's member_features row as the tag worker loads it.
type storedMember struct {
	state, labelsPB []byte
	demo            Demographics
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
		m := &storedMember{demo: Demographics{BirthDate: fmt.Sprintf("19%02d-0%d-1%d", 60+i, 1+i%9, i%10), Gender: "f", City: "Shanghai"}}
		r, err := c.Refresh(Inputs{State: st, Demo: m.demo}, now, false, nil)
		if err != nil {
			tb.Fatal(err)
		}
		m.labelsPB = r.EncodeLabels()
		if m.state, err = EncodeState(st); err != nil {
			tb.Fatal(err)
		}
		out[i] = m
	}
	return out
}

// tagEvent is what the tag worker computes for one event of a member (the
// PostgreSQL statements aside): decode the stored state, fold the event,
// bring the features and labels up to date, and encode the state and, when
// they changed, the labels (labels_pb and the JSON column) to write back. It
// returns the labels that changed and the labels evaluated.
func tagEvent(c *Catalog, m *storedMember, f Fact, now time.Time) (changed, evaluated int, err error) {
	st, err := DecodeState(m.state)
	if err != nil {
		return 0, 0, err
	}
	st.Fold(f)
	r, err := c.Refresh(Inputs{State: st, Demo: m.demo}, now, false, func() (map[string]any, error) { return LabelsFromPB(m.labelsPB) })
	if err != nil {
		return 0, 0, err
	}
	if r.Changed() {
		r.EncodeLabels()
		r.LabelsJSON()
	}
	if _, err := EncodeState(st); err != nil {
		return 0, 0, err
	}
	return len(r.Changes), r.Evaluated, nil
}

// BenchmarkTagEvent is the tag worker's CPU per event, without PostgreSQL:
// members with 45 or 200 events (60% purchases) over 300 days, the shipped
// catalogue, an event a second after the stored labels were computed.
// cpu-ns/op is the process's CPU (garbage collection included), which a
// busy machine inflates less than wall time.
func BenchmarkTagEvent(b *testing.B) {
	c := shipped(b)
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
				changed, evaluated := 0, 0
				i := 0
				cpu := processCPU(b)
				for b.Loop() {
					n, e, err := tagEvent(c, members[i%len(members)], facts[i%len(facts)], now)
					if err != nil {
						b.Fatal(err)
					}
					changed += n
					evaluated += e
					i++
				}
				b.ReportMetric(float64(processCPU(b)-cpu)/float64(i), "cpu-ns/op")
				b.ReportMetric(float64(evaluated)/float64(i), "evaluated/op")
				b.ReportMetric(float64(changed)/float64(i), "changed/op")
			})
		}
	}
}
