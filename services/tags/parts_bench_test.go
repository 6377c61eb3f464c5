package tags

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tagstatev1 "github.com/membercenter/membercenter/proto/gen/membercenter/tagstate/v1"
)

// The parts of BenchmarkTagEvent, for profiling one at a time.

// reportCPU reports the process's CPU time per op from the start of the
// loop (call it just before b.Loop, defer what it returns).
func reportCPU(b *testing.B) func() {
	start := processCPU(b)
	return func() { b.ReportMetric(float64(processCPU(b)-start)/float64(b.N), "cpu-ns/op") }
}

func benchState(b *testing.B) (*Catalog, []byte, time.Time) {
	c := shipped(b)
	now := time.Date(2026, 3, 2, 2, 0, 0, 0, time.UTC)
	return c, benchMembers(b, c, now, 45)[0].state, now
}

// decoded is raw decoded.
func decoded(b *testing.B, raw []byte) *State {
	st, err := DecodeState(raw)
	if err != nil {
		b.Fatal(err)
	}
	return st
}

func BenchmarkDecodeState(b *testing.B) {
	_, raw, _ := benchState(b)
	loopBytes(b, raw, func() error {
		_, err := DecodeState(raw)
		return err
	})
}

func BenchmarkEncodeState(b *testing.B) {
	_, raw, _ := benchState(b)
	st := decoded(b, raw)
	loopBytes(b, raw, func() error {
		_, err := EncodeState(st)
		return err
	})
}

// loopBytes runs op in the benchmark loop, at len(raw) bytes an op.
func loopBytes(b *testing.B, raw []byte, op func() error) {
	b.SetBytes(int64(len(raw)))
	defer reportCPU(b)()
	for b.Loop() {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEvalLabels evaluates every label once.
func BenchmarkEvalLabels(b *testing.B) {
	c, raw, now := benchState(b)
	st := decoded(b, raw)
	f := make([]fval, len(c.eng.lay.ids))
	var a aggregates
	a.build(st, now.Unix(), sumFilters{filters: c.Filters, key: c.filterKey, loc: c.Location})
	derive(f, &a, sumLife(st.Life), Demographics{BirthDate: "1980-02-03"}, 0, now.Unix(), c.Location)
	labels := make([]lval, len(c.Labels))
	act := &vecActivation{c: c, f: f, l: labels}
	cpu := processCPU(b)
	for b.Loop() {
		for j, l := range c.Labels {
			labels[j] = l.evalVal(act)
		}
	}
	b.ReportMetric(float64(processCPU(b)-cpu)/float64(b.N)/float64(len(c.Labels)), "cpu-ns/label")
}

// BenchmarkFilters evaluates every purchase filter on a new purchase.
func BenchmarkFilters(b *testing.B) {
	c, _, now := benchState(b)
	g := newFactGen(5)
	st := &State{}
	for st.Purchases == nil {
		st.Fold(g.fact(now, 1))
	}
	p := st.Purchases[0]
	defer reportCPU(b)()
	for b.Loop() {
		p.FV = ""
		p.match(0, c.Filters, c.filterKey, c.Location)
	}
}

// BenchmarkBuildAggregates sums every record.
func BenchmarkBuildAggregates(b *testing.B) {
	c, raw, now := benchState(b)
	st := decoded(b, raw)
	var a aggregates
	defer reportCPU(b)()
	for b.Loop() {
		a.build(st, now.Unix(), sumFilters{filters: c.Filters, key: c.filterKey, loc: c.Location})
	}
}

// BenchmarkDerive derives the features from the aggregates.
func BenchmarkDerive(b *testing.B) {
	c, raw, now := benchState(b)
	st := decoded(b, raw)
	var a aggregates
	a.build(st, now.Unix(), sumFilters{filters: c.Filters, key: c.filterKey, loc: c.Location})
	f := make([]fval, len(c.eng.lay.ids))
	defer reportCPU(b)()
	for b.Loop() {
		derive(f, &a, sumLife(st.Life), Demographics{BirthDate: "1980-02-03"}, 0, now.Unix(), c.Location)
	}
}

// BenchmarkDecodeStateGenerated reads the same bytes with the generated
// code, for comparison (it builds messages, not a State).
func BenchmarkDecodeStateGenerated(b *testing.B) {
	_, raw, _ := benchState(b)
	defer reportCPU(b)()
	for b.Loop() {
		var m tagstatev1.State
		if err := proto.Unmarshal(raw[1:], &m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeStateGenerated writes the same state with the generated
// code, for comparison.
func BenchmarkEncodeStateGenerated(b *testing.B) {
	_, raw, _ := benchState(b)
	var m tagstatev1.State
	if err := proto.Unmarshal(raw[1:], &m); err != nil {
		b.Fatal(err)
	}
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := proto.Marshal(&m); err != nil {
			b.Fatal(err)
		}
	}
}
