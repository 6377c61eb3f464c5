package tags

import (
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// TestCatalogExamples loads the shipped catalogue, which evaluates every
// label's worked examples, and holds it to the size the product promises.
func TestCatalogExamples(t *testing.T) {
	c := shipped(t)
	if len(c.Labels) < 200 {
		t.Errorf("catalogue has %d labels, want at least 200", len(c.Labels))
	}
	groups := map[string]int{}
	examples := 0
	for _, l := range c.Labels {
		groups[l.Group]++
		if len(l.Examples) == 0 {
			t.Errorf("label %s has no worked example", l.ID)
		}
		examples += len(l.Examples)
	}
	for _, g := range Groups {
		if groups[g] == 0 {
			t.Errorf("group %s has no label", g)
		}
	}
	t.Logf("%d labels, %d worked examples, %d features, groups %v", len(c.Labels), examples, len(c.Features()), groups)
}

func TestCatalogRejectsBadEntries(t *testing.T) {
	label := func(id, typ, expr, examples string) string {
		return `
  - id: ` + id + `
    name_en: X
    name_zh: X
    group: value
    description: x
    type: ` + typ + `
    kind: rule
    expr: '` + expr + `'
` + examples
	}
	ex := "    examples:\n      - given: {orders_30d: 1}\n        expect: true\n"
	tests := []struct {
		name, labels, want string
	}{
		{"unknown feature", label("big", "bool", "spend_31d > 1.0", ex), `label big: expr: ERROR: <input>:1:1: undeclared reference to 'spend_31d'`},
		{"type error", label("big", "bool", "spend_30d > \"a\"", ex), `label big: expr:`},
		{"wrong output type", label("big", "bool", "spend_30d", ex), `label big: expr gives double, but the label is bool`},
		{"cycle", label("a", "bool", "b", ex) + label("b", "bool", "a", ex), `cycle: a → b → a`},
		{"duplicate id", label("a", "bool", "orders_30d > 0", ex) + label("a", "bool", "orders_30d > 0", ex), `label a: duplicate label id`},
		{"missing example", label("a", "bool", "orders_30d > 0", ""), `label a: no worked example`},
		{"failing example", label("a", "bool", "orders_30d > 5", ex), `label a: example 1: expected true, got false`},
		{"example with an unknown input", label("a", "bool", "orders_30d > 0", "    examples:\n      - given: {orderz: 1}\n        expect: true\n"), `label a: example 1: given orderz: no such feature or label`},
		{"enum value outside the list", `
  - id: band
    name_en: X
    name_zh: X
    group: value
    description: x
    type: enum
    values: [low, high]
    kind: rule
    expr: 'orders_30d > 0 ? "high" : "low"'
    examples:
      - given: {orders_30d: 1}
        expect: medium
`, `label band: example 1: expect: "medium" is not one of low, high`},
		{"unknown group", strings.Replace(label("a", "bool", "orders_30d > 0", ex), "group: value", "group: vibes", 1), `label a: group "vibes"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCatalog([]byte("version: t\ntimezone: Asia/Shanghai\nlabels:" + tt.labels))
			if err == nil {
				t.Fatal("catalogue accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// TestBGNBD checks the model functions against the CDNOW example of Fader,
// Hardie and Lee (2005): r=0.243, α=4.414, a=0.793, b=2.426; a customer
// with x=2, t_x=30.43, T=38.86 weeks is expected to make 1.226 purchases in
// the next 39 weeks.
func TestBGNBD(t *testing.T) {
	got := BGNBDExpected(0.243, 4.414, 0.793, 2.426, 2, 30.43, 38.86, 39)
	if math.Abs(got-1.226) > 0.001 {
		t.Errorf("E[Y(39)] = %.4f, want 1.226", got)
	}
	if p := BGNBDPAlive(0.243, 4.414, 0.793, 2.426, 0, 0, 38.86); p != 1 {
		t.Errorf("P(alive) without repeat purchases = %v, want 1", p)
	}
	// A customer silent for long after a burst is less likely alive.
	if a, b := BGNBDPAlive(0.243, 4.414, 0.793, 2.426, 5, 10, 20), BGNBDPAlive(0.243, 4.414, 0.793, 2.426, 5, 10, 60); !(b < a) {
		t.Errorf("P(alive) %v at T=20, %v at T=60; want it to fall", a, b)
	}
	// Gamma-Gamma: p=6.25, q=3.74, γ=15.44 (CDNOW); x=2 at 35 → 35.24...
	if m := GammaGammaMean(6.25, 3.74, 15.44, 0, 0); math.Abs(m-6.25*15.44/2.74) > 1e-9 {
		t.Errorf("population mean %v", m)
	}
}

// TestLabelDocsAreCurrent keeps docs/labels.md in step with the catalogue.
func TestLabelDocsAreCurrent(t *testing.T) {
	c := shipped(t)
	got, err := os.ReadFile("../../docs/labels.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != c.Markdown() {
		t.Error("docs/labels.md is not the catalogue's documentation: run `go run ./services/cmd/membercenter tags docs > docs/labels.md`")
	}
}

// coffeeFilter is a purchase filter over the basket's categories.
const coffeeFilter = `{id: coffee, description: coffee, expr: "'coffee' in p.categories"}`

// filtersOnly is a catalogue of the filters and no labels.
func filtersOnly(t *testing.T, filters ...string) *Catalog {
	t.Helper()
	return mustParse(t, "version: f\ntimezone: UTC\nfilters:\n  - "+strings.Join(filters, "\n  - ")+"\nlabels: []\n")
}

// TestFilterUndecidedOnlyForMissingInputs: a filter over the basket is
// undecided for a purchase without lines (its share leaves it out); one
// that merely mentions such a word in a string is decided.
func TestFilterUndecidedOnlyForMissingInputs(t *testing.T) {
	c := filtersOnly(t, coffeeFilter, `{id: instore, description: says store, expr: "p.channel == 'store items'"}`)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	st := &State{}
	st.Fold(Fact{EventID: "a", Kind: KindTransaction, Channel: "pos", At: now.Add(-time.Hour), Origin: "m", Amount: 100})
	st.Fold(Fact{EventID: "b", Kind: KindTransaction, Channel: "pos", At: now.Add(-2 * time.Hour), Origin: "m", Amount: 100,
		Items: []Item{{SKU: "x", Category: "coffee", Quantity: 1, Amount: 100}}})
	v := Compute(Inputs{State: st}, now, time.UTC, c.Filters, c.FilterKey()).Values
	if v["coffee_share_365d"] != 1.0 || v["coffee_orders_365d"] != int64(1) {
		t.Errorf("coffee share %v, orders %v; want 1 (the purchase without lines undecided) and 1", v["coffee_share_365d"], v["coffee_orders_365d"])
	}
	if v["instore_share_365d"] != 0.0 {
		t.Errorf("instore share %v; want 0 over both purchases", v["instore_share_365d"])
	}
}

// TestStateWithFilterIDsFromBeforeBitSets: a feature state stored when the
// purchase filters' results were lists of filter ids still loads, and its
// purchases are evaluated again, giving what a fresh state gives.
func TestStateWithFilterIDsFromBeforeBitSets(t *testing.T) {
	c := filtersOnly(t, coffeeFilter)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	fresh := &State{}
	fresh.Fold(Fact{EventID: "a", Kind: KindTransaction, Channel: "pos", At: now.Add(-time.Hour), Origin: "m", Amount: 100,
		Items: []Item{{SKU: "x", Category: "coffee", Quantity: 1, Amount: 100}}})
	want := Compute(Inputs{State: fresh}, now, time.UTC, c.Filters, c.FilterKey()).Values
	raw, err := json.Marshal(fresh)
	if err != nil {
		t.Fatal(err)
	}
	// The old form: the same purchase with filter ids under an old version.
	old := strings.Replace(string(raw), `"e":"a"`, `"e":"a","fv":"2026-11-01","fm":["coffee"],"fu":[]`, 1)
	if old == string(raw) {
		t.Fatalf("state JSON %s has no purchase to age", raw)
	}
	st := &State{}
	if err := json.Unmarshal([]byte(old), st); err != nil {
		t.Fatalf("state with filter ids does not load: %v", err)
	}
	got := Compute(Inputs{State: st}, now, time.UTC, c.Filters, c.FilterKey()).Values
	if got["coffee_orders_365d"] != want["coffee_orders_365d"] || want["coffee_orders_365d"] != int64(1) {
		t.Errorf("coffee orders from the old state %v, from a fresh one %v; want both 1", got["coffee_orders_365d"], want["coffee_orders_365d"])
	}
}

// storage/postgres names the profiling purpose by its number; it must be
// the API's.
func TestProfilingPurposeNumber(t *testing.T) {
	if postgres.ConsentProfiling != int16(mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING) {
		t.Fatalf("postgres.ConsentProfiling = %d, the API's profiling purpose is %d", postgres.ConsentProfiling, mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING)
	}
}
