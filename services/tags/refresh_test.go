package tags

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// The fast path (Refresh: window aggregates brought forward by one event,
// labels evaluated only where a feature they read changed) is held to the
// full recompute (Compute over every record, every label evaluated) on
// random event sequences: after every step both give the same labels, the
// same change and the same due time.

var (
	testCatsOnce sync.Once
	testCats     []*Catalog
	testCatsErr  error
)

// propertyCatalogs are the shipped catalogue, the same with another
// purchase filter and a label over it (so features and labels move
// position), and the same in another time zone.
func propertyCatalogs(t testing.TB) []*Catalog {
	t.Helper()
	testCatsOnce.Do(func() {
		src := string(DefaultCatalog())
		extra := strings.Replace(src, "\nfilters:\n", `
filters:
  - id: big_coupon
    description: "a purchase of 200 or more with a coupon"
    expr: "p.amount >= 200.0 && p.coupon"
`, 1)
		extra = strings.Replace(extra, "\nlabels:\n", `
labels:
  - id: big_coupon_buyer
    name_en: "Gift buyer"
    name_zh: "礼品买家"
    group: scenario
    description: "A large purchase with a coupon in 365 days, and still active."
    type: bool
    kind: rule
    expr: "big_coupon_orders_365d >= 1 && active_30d"
    examples:
      - given: {big_coupon_orders_365d: 1, active_30d: true}
        expect: true
`, 1)
		extra = strings.Replace(extra, "version: ", "version: extra-", 1)
		utc := strings.Replace(src, "timezone: Asia/Shanghai", "timezone: UTC", 1)
		for _, s := range []string{src, extra, utc} {
			c, err := ParseCatalog([]byte(s))
			if err != nil {
				testCatsErr = err
				return
			}
			testCats = append(testCats, c)
		}
	})
	if testCatsErr != nil {
		t.Fatal(testCatsErr)
	}
	return testCats
}

const (
	originA = "0190f0e0-0000-7000-8000-00000000000a"
	originB = "0190f0e0-0000-7000-8000-00000000000b"
)

// sequenceStats counts what a sequence exercised.
type sequenceStats struct {
	steps, added, byDeps, evaluated, full int
}

// checkSequence runs steps random operations on one member — events
// (recent, late, future, beyond retention, duplicates), clock moves (to
// the due time, just before it, across days), merges and splits, catalogue
// switches, consent, attribute and device changes, storage round trips —
// and after each compares Refresh with the full recompute.
func checkSequence(t testing.TB, seed uint64, steps int) sequenceStats {
	t.Helper()
	cats := propertyCatalogs(t)
	r := rand.New(rand.NewPCG(seed, seed*31+7))
	c := cats[0]
	g := newFactGen(seed, originA)
	other := newFactGen(seed+1<<32, originB)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(365 * day)))).Truncate(time.Second)
	st := &State{}
	for _, f := range g.history(now, r.IntN(60), 400*day, 0.6) {
		st.Fold(f)
	}
	var stored map[string]any
	withhold := false
	demo := Demographics{BirthDate: fmt.Sprintf("19%02d-%02d-%02d", 50+r.IntN(50), 1+r.IntN(12), 1+r.IntN(28)), Gender: "F", City: "Shang hai"}
	device := 0
	var folded []Fact
	var stats sequenceStats
	due := time.Time{}
	eventAt := func() time.Time {
		switch x := r.IntN(20); {
		case x < 12:
			return now.Add(-time.Duration(r.Int64N(int64(6 * time.Hour))))
		case x < 15:
			return now.Add(-time.Duration(r.Int64N(int64(400 * day))))
		case x < 17:
			return now.Add(time.Duration(r.Int64N(int64(10 * time.Minute))))
		case x < 18 && !due.IsZero():
			// Exactly at or just before a window edge of an earlier record.
			return due.Add(-time.Duration(r.IntN(2)) * time.Second)
		default:
			return now.Add(-Retention - time.Duration(r.Int64N(int64(day))))
		}
	}
	fold := func() {
		if len(folded) > 0 && r.IntN(15) == 0 {
			st.Fold(folded[r.IntN(len(folded))]) // a redelivery: changes nothing
			return
		}
		f := g.fact(eventAt(), 0.55)
		folded = append(folded, f)
		st.Fold(f)
	}
	for step := range steps {
		switch x := r.IntN(100); {
		case x < 50:
			fold()
		case x < 56: // a batch of a few events of the member
			for range 2 + r.IntN(5) {
				fold()
			}
		case x < 62:
			now = now.Add(time.Duration(r.Int64N(int64(10 * time.Minute))))
		case x < 70 && !due.IsZero():
			now = due.Add(-time.Duration(r.IntN(2)) * time.Second) // the sweep at the due time, or a second before
			if now.Before(due.Add(-time.Second)) {
				now = due
			}
		case x < 74:
			now = now.Add(time.Duration(r.Int64N(int64(20 * day))))
		case x < 76:
			now = now.Add(-time.Duration(r.Int64N(int64(time.Minute)))) // another worker's clock, a little behind
		case x < 79:
			o := &State{}
			for _, f := range other.history(now, 1+r.IntN(20), 300*day, 0.6) {
				o.Fold(f)
			}
			if _, err := c.Refresh(Inputs{State: o}, now, false, nil); err != nil {
				t.Fatal(err)
			}
			if r.IntN(2) == 0 { // stored before the merge: its records come with another string list
				b, err := EncodeState(o)
				if err != nil {
					t.Fatal(err)
				}
				if o, err = DecodeState(b); err != nil {
					t.Fatal(err)
				}
			}
			st.Absorb(o)
		case x < 81:
			st.Split([]string{originB})
		case x < 85:
			c = cats[r.IntN(len(cats))]
		case x < 87:
			withhold = !withhold
		case x < 89:
			device = r.IntN(4)
		case x < 91:
			demo.BirthDate = now.AddDate(-r.IntN(70), 0, -r.IntN(400)).Format("2006-01-02")
		}
		// The worker stores and loads the state between events.
		switch r.IntN(8) {
		case 0, 1, 2:
			b, err := EncodeState(st)
			if err != nil {
				t.Fatal(err)
			}
			if st, err = DecodeState(b); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		case 3:
			if r.IntN(10) == 0 { // a state stored as JSON before
				b, err := json.Marshal(st)
				if err != nil {
					t.Fatal(err)
				}
				if st, err = DecodeState(b); err != nil {
					t.Fatal(err)
				}
			}
		}
		res, err := c.Refresh(Inputs{State: st, Demo: demo, Device: device}, now, withhold, func() (map[string]any, error) { return stored, nil })
		if err != nil {
			t.Fatal(err)
		}
		full := Compute(Inputs{State: st, Demo: demo, Device: device}, now, c.Location, c.Filters, c.FilterKey())
		want := c.Evaluate(full.Values, nil, nil, withhold)
		ctx := fmt.Sprintf("seed %d step %d (now %s, catalogue %s, withhold %v, added %v, evaluated %d)", seed, step, now.Format(time.RFC3339), c.Version, withhold, res.added, res.Evaluated)
		if got := res.Labels(); !sameLabels(got, want) {
			t.Fatalf("%s: labels differ from a full recompute:\n%s", ctx, labelDiff(got, want))
		}
		if wantChanges := Diff(stored, want, now); !sameChanges(res.Changes, wantChanges) {
			t.Fatalf("%s: changes %v, a full recompute's %v", ctx, res.Changes, wantChanges)
		}
		var set, cleared []string
		for _, d := range res.Changes {
			switch id := d.GetLabelId(); {
			case want[id] == true:
				set = append(set, id)
			case stored[id] == true:
				cleared = append(cleared, id)
			}
		}
		if !reflect.DeepEqual(res.Set, set) || !reflect.DeepEqual(res.Cleared, cleared) {
			t.Fatalf("%s: set %v cleared %v, want %v and %v", ctx, res.Set, res.Cleared, set, cleared)
		}
		if !res.Next.Equal(full.Next) {
			t.Fatalf("%s: due %v, a full recompute's %v", ctx, res.Next, full.Next)
		}
		// The aggregates brought forward are the ones summed afresh.
		var sum aggregates
		sum.build(st, now.Unix(), sumFilters{filters: c.Filters, key: c.FilterKey(), loc: c.Location})
		if !sameAggregates(&st.snap.agg, &sum) {
			t.Fatalf("%s: aggregates\n%+v\nsummed afresh\n%+v", ctx, st.snap.agg, sum)
		}
		// The features before the change are the old Compute's.
		if ref := referenceCompute(Inputs{State: st, Demo: demo, Device: device}, now, c.Location, c.Filters, c.FilterKey()); !reflect.DeepEqual(ref.Values, full.Values) || !ref.Next.Equal(full.Next) {
			t.Fatalf("%s: Compute differs from the reference:\n%s", ctx, labelDiff(full.Values, ref.Values))
		}
		stored, due = want, res.Next
		stats.steps++
		stats.evaluated += res.Evaluated
		if res.added {
			stats.added++
		}
		if res.Evaluated < len(c.Labels) {
			stats.byDeps++
		} else {
			stats.full++
		}
	}
	return stats
}

func sameLabels(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || FormatValue(v) != FormatValue(w) {
			return false
		}
	}
	return true
}

func labelDiff(got, want map[string]any) string {
	var b strings.Builder
	for k, v := range got {
		if w, ok := want[k]; !ok || FormatValue(v) != FormatValue(w) {
			fmt.Fprintf(&b, "  %s: %v, want %v (present %v)\n", k, v, w, ok)
		}
	}
	for k, w := range want {
		if _, ok := got[k]; !ok {
			fmt.Fprintf(&b, "  %s: absent, want %v\n", k, w)
		}
	}
	return b.String()
}

func sameChanges(a, b []*mcv1.LabelValue) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func sameAggregates(a, b *aggregates) bool {
	x, y := *a, *b
	for _, p := range []*aggregates{&x, &y} {
		for _, k := range []*keyCounts{&p.channels, &p.categories, &p.brands, &p.stores} {
			if len(*k) == 0 {
				*k = nil
			}
		}
		if len(p.filters) == 0 {
			p.filters = nil
		}
	}
	return reflect.DeepEqual(x, y)
}

func TestRefreshMatchesFullRecompute(t *testing.T) {
	seeds, steps := 40, 120
	if testing.Short() {
		seeds = 8
	}
	// The sequences run in parallel on the same catalogues, as partitions'
	// workers do.
	var mu sync.Mutex
	var total sequenceStats
	t.Run("sequences", func(t *testing.T) {
		for seed := range uint64(seeds) {
			t.Run(fmt.Sprint(seed+1), func(t *testing.T) {
				t.Parallel()
				s := checkSequence(t, seed+1, steps)
				mu.Lock()
				defer mu.Unlock()
				total.steps += s.steps
				total.added += s.added
				total.byDeps += s.byDeps
				total.full += s.full
				total.evaluated += s.evaluated
			})
		}
	})
	t.Logf("%d steps: aggregates brought forward in %d, labels by dependency in %d (full in %d), %.1f labels evaluated a step",
		total.steps, total.added, total.byDeps, total.full, float64(total.evaluated)/float64(total.steps))
	if total.added < total.steps/5 || total.byDeps < total.steps/3 {
		t.Errorf("the fast paths were taken too rarely to be tested: %+v", total)
	}
}

func FuzzRefreshMatchesFullRecompute(f *testing.F) {
	for seed := range uint64(4) {
		f.Add(seed, uint8(40))
	}
	f.Fuzz(func(t *testing.T, seed uint64, steps uint8) {
		checkSequence(t, seed, int(steps))
	})
}
