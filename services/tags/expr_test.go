package tags

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
)

// TestCompiledLabelsMatchCEL: every label of the test catalogues compiles,
// and on random features and labels — absent ones, zeros, the literals
// the expressions compare with and their neighbours, extremes that
// overflow, NaN — the closure gives what the CEL program gives.
func TestCompiledLabelsMatchCEL(t *testing.T) {
	trials := 3000
	if testing.Short() {
		trials = 300
	}
	for _, c := range append(propertyCatalogs(t), mustParse(t, compiledEdgeCatalog)) {
		ints, doubles, strs := []int64{0, 1, -1, 2, 7, 30, math.MaxInt64, math.MinInt64, 1 << 40}, []float64{0, 0.5, 1, -1, 1e300, -1e300, math.NaN()}, []string{"", "x"}
		for _, l := range c.Labels {
			if l.compiled == nil {
				t.Errorf("catalogue %s: label %s is not compiled", c.Version, l.ID)
			}
			celast.PreOrderVisit(celast.NavigateAST(l.ast.NativeRep()), celast.NewExprVisitor(func(e celast.Expr) {
				if e.Kind() != celast.LiteralKind {
					return
				}
				switch v := e.AsLiteral().(type) {
				case types.Int:
					ints = append(ints, int64(v), int64(v)-1, int64(v)+1)
				case types.Double:
					doubles = append(doubles, float64(v), math.Nextafter(float64(v), math.Inf(1)), math.Nextafter(float64(v), math.Inf(-1)), float64(v)*2)
				case types.String:
					strs = append(strs, string(v))
				}
			}))
		}
		r := rand.New(rand.NewPCG(1, 2))
		f := make([]fval, len(c.eng.lay.ids))
		lv := make([]lval, len(c.Labels))
		act := &vecActivation{c: c, f: f, l: lv}
		mismatches := 0
		for range trials {
			for i := range f {
				f[i] = fval{}
				if r.IntN(6) == 0 {
					continue
				}
				f[i].ok = true
				switch c.eng.lay.types[i] {
				case typeInt:
					f[i].i = ints[r.IntN(len(ints))]
					if r.IntN(3) == 0 {
						f[i].i = r.Int64N(100)
					}
				case typeDouble:
					f[i].f = doubles[r.IntN(len(doubles))]
					if r.IntN(3) == 0 {
						f[i].f = r.Float64() * 1000
					}
				case typeBool:
					f[i].i = int64(r.IntN(2))
				default:
					f[i].s = strs[r.IntN(len(strs))]
				}
			}
			for j, l := range c.Labels {
				lv[j] = lval{}
				if r.IntN(5) == 0 {
					continue
				}
				lv[j].ok = true
				switch l.Type {
				case TypeBool:
					lv[j].b = r.IntN(2) == 0
				case TypeNumber:
					lv[j].f = doubles[r.IntN(len(doubles))]
					if math.IsNaN(lv[j].f) || r.IntN(3) == 0 {
						lv[j].f = float64(r.IntN(6))
					}
				default:
					lv[j].e = uint16(r.IntN(len(l.Values)))
				}
			}
			for _, l := range c.Labels {
				if l.compiled == nil {
					continue
				}
				got, want := l.evalCompiled(act), l.evalProgram(act)
				if !got.same(want) {
					mismatches++
					if mismatches < 10 {
						t.Errorf("catalogue %s: label %s (%s): compiled %+v, CEL %+v", c.Version, l.ID, l.Expr, got, want)
					}
				}
			}
		}
	}
}

// compiledEdgeCatalog has the operators the shipped catalogue does not
// use, or uses once.
var compiledEdgeCatalog = "version: edge\ntimezone: UTC\nlabels:\n" +
	edgeLabel("e_not", "bool", ``, `"!(orders_30d > 2) || !signed_up"`, `[{given: {orders_30d: 1, signed_up: true}, expect: true}]`) +
	edgeLabel("e_neg", "number", ``, `"-spend_30d + double(-orders_30d) - double(orders_7d * orders_30d / (orders_7d - 1) % 7)"`, `[{given: {spend_30d: 1.0, orders_30d: 1, orders_7d: 2}, expect: -4.0}]`) +
	edgeLabel("e_str", "enum", `values: [a, b, xa]`, `'gender + "a" in ["xa", "fa"] ? (gender < city ? "a" : "b") : (top_channel_365d == "pos" || city >= "m" ? "xa" : "b")'`, `[{given: {gender: x, city: y}, expect: a}]`) +
	edgeLabel("e_mixed", "bool", ``, `"spend_30d == double(orders_30d) || spend_7d < double(orders_7d) || e_neg >= 1.5 && e_not == signed_up || int(spend_90d) != 3"`, `[{given: {spend_30d: 1.0, orders_30d: 1}, expect: true}]`) +
	edgeLabel("e_div", "number", ``, `"spend_30d / spend_7d * 2.0 - spend_90d / 0.0"`, `[{given: {spend_30d: 1.0, spend_7d: 0.0, spend_90d: 0.0}, expect: null}]`)

// edgeLabel is a rule label of compiledEdgeCatalog.
func edgeLabel(id, typ, values, expr, examples string) string {
	if values != "" {
		values = "\n    " + values
	}
	return fmt.Sprintf(`
  - id: %s
    name_en: x
    name_zh: x
    group: value
    description: x
    type: %s%s
    kind: rule
    expr: %s
    examples: %s`, id, typ, values, expr, examples)
}

// TestCompiledFiltersMatchCEL: every purchase filter of the test
// catalogues compiles (but one reading a field purchases do not have), and
// decides random purchases — with and without basket lines and store, at
// every hour — as its CEL program does.
func TestCompiledFiltersMatchCEL(t *testing.T) {
	cats := append(propertyCatalogs(t), mustParse(t, `
version: filters
timezone: Asia/Shanghai
filters:
  - {id: f_index, description: x, expr: "'tea' in p['categories'] || p['brands'].exists(b, b == 'acme')"}
  - {id: f_store, description: x, expr: "p.store == 'SH-1' || p.store in ['BJ-1']"}
  - {id: f_mixed, description: x, expr: "p.amount < 30 || p.items > 2.5 || p.hour % 2 == 0 && p.weekday != 3"}
  - {id: f_brand, description: x, expr: "'acme' in p.brands && p.channel + 'x' == 'posx'"}
  - {id: f_missing, description: x, expr: "p.nope > 1"}
  - {id: f_arith, description: x, expr: "p.points_redeemed * 2 - 100 >= p.month * 10 || -p.discount < -1.0"}
labels: []
`))
	r := rand.New(rand.NewPCG(3, 4))
	g := newFactGen(7)
	for _, c := range cats {
		for _, f := range c.Filters {
			if f.compiled == nil && f.ID != "f_missing" && f.ID != "f_index" {
				t.Errorf("catalogue %s: filter %s is not compiled", c.Version, f.ID)
			}
		}
		for n := range 600 {
			st := &State{}
			at := time.Date(2026, 4, 1+n%30, r.IntN(24), r.IntN(60), 0, 0, time.UTC)
			for st.Purchases == nil {
				st.Fold(g.fact(at, 1))
			}
			p := st.Purchases[0]
			if n%5 == 0 {
				p.Store = ""
			}
			pv := p.pvars(c.Location)
			act := &vecActivation{p: &pv}
			vars := map[string]any{"p": p.vars(c.Location)}
			for _, f := range c.Filters {
				if f.compiled == nil || (f.needsItems && !p.ItemsKnown) || (f.needsStore && p.Store == "") {
					continue
				}
				got := f.compiled(act)
				out, _, err := f.program.Eval(vars)
				want := errVal
				if b, ok := out.Value().(bool); err == nil && ok {
					want = boolVal(b)
				}
				if got.k != want.k || got.i != want.i {
					t.Fatalf("catalogue %s: filter %s (%s) on %+v: compiled %+v, CEL %+v (%v)", c.Version, f.ID, f.Expr, pv, got, out, err)
				}
			}
		}
	}
}
