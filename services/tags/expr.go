package tags

import (
	"cmp"
	"math"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
)

// Label expressions are CEL. The ones the catalogue writes — comparisons,
// arithmetic, conditions, && and ||, membership in a list of literals,
// double() and int(), the predicted-value functions — are also compiled
// here into Go closures over the feature and label vectors, with CEL's
// semantics (an absent input or a failed operation is an error, which
// makes the label absent; && and || ignore an error the other side
// decides; integer overflow and division by zero fail; NaN cannot be
// ordered): a closure evaluates in a fraction of the interpreter's time.
// An expression using anything else runs on the CEL program. Tests hold
// every compiled label to its program on random inputs.

// cval is a value while an expression is evaluated.
type cval struct {
	k uint8 // kErr, kBool, kInt, kDouble, kString
	i int64 // int; bool as 0 or 1
	f float64
	s string
}

const (
	kErr uint8 = iota
	kBool
	kInt
	kDouble
	kString
)

var errVal = cval{}

func boolVal(b bool) cval { return cval{k: kBool, i: b2i(b)} }

// cexpr evaluates an expression over a member's features and labels.
type cexpr func(a *vecActivation) cval

// compileExpr compiles a checked expression, or reports false when it uses
// something compileExpr does not know.
func (c *Catalog) compileExpr(ast *cel.Ast) (cexpr, bool) {
	return c.compileNode(ast.NativeRep().Expr())
}

func (c *Catalog) compileNode(e celast.Expr) (cexpr, bool) {
	switch e.Kind() {
	case celast.LiteralKind:
		v, ok := literal(e)
		if !ok {
			return nil, false
		}
		return func(*vecActivation) cval { return v }, true
	case celast.IdentKind:
		return c.compileIdent(e.AsIdent())
	case celast.CallKind:
		return c.compileCall(e.AsCall())
	case celast.SelectKind:
		sel := e.AsSelect()
		if sel.IsTestOnly() || sel.Operand().Kind() != celast.IdentKind || sel.Operand().AsIdent() != "p" {
			return nil, false
		}
		return purchaseField(sel.FieldName())
	}
	return nil, false
}

func literal(e celast.Expr) (cval, bool) {
	switch v := e.AsLiteral().(type) {
	case types.Bool:
		return boolVal(bool(v)), true
	case types.Int:
		return cval{k: kInt, i: int64(v)}, true
	case types.Double:
		return cval{k: kDouble, f: float64(v)}, true
	case types.String:
		return cval{k: kString, s: string(v)}, true
	}
	return cval{}, false
}

func (c *Catalog) compileIdent(name string) (cexpr, bool) {
	i, ok := c.eng.names[name]
	if !ok {
		return nil, false
	}
	if i >= 0 {
		k := kString
		switch c.eng.lay.types[i] {
		case typeInt:
			k = kInt
		case typeDouble:
			k = kDouble
		case typeBool:
			k = kBool
		}
		return func(a *vecActivation) cval {
			v := &a.f[i]
			if !v.ok {
				return errVal
			}
			return featureVal(k, v)
		}, true
	}
	j := -i - 1
	l := c.Labels[j]
	k := kString // an enum
	switch l.Type {
	case TypeBool:
		k = kBool
	case TypeNumber:
		k = kDouble
	}
	values := l.Values
	return func(a *vecActivation) cval {
		v := &a.l[j]
		if !v.ok {
			return errVal
		}
		return labelVal(k, values, v)
	}, true
}

// featureVal is a present feature as a value of kind k.
func featureVal(k uint8, v *fval) cval {
	switch k {
	case kDouble:
		return cval{k: kDouble, f: v.f}
	case kString:
		return cval{k: kString, s: v.s}
	}
	return cval{k: k, i: v.i} // kInt, and kBool as 0 or 1
}

// labelVal is a present label as a value of kind k; an enum's is its name
// among values.
func labelVal(k uint8, values []string, v *lval) cval {
	switch k {
	case kBool:
		return boolVal(v.b)
	case kDouble:
		return cval{k: kDouble, f: v.f}
	}
	return cval{k: kString, s: values[v.e]}
}

// not, negate, toDouble and toInt are CEL's operators and conversions of
// one argument.
func not(v cval) cval {
	if v.k != kBool {
		return errVal
	}
	return boolVal(v.i == 0)
}

func negate(v cval) cval {
	switch {
	case v.k == kInt && v.i != math.MinInt64:
		return cval{k: kInt, i: -v.i}
	case v.k == kDouble:
		return cval{k: kDouble, f: -v.f}
	}
	return errVal
}

func toDouble(v cval) cval {
	switch v.k {
	case kInt:
		return cval{k: kDouble, f: float64(v.i)}
	case kDouble:
		return v
	}
	return errVal
}

func toInt(v cval) cval {
	switch v.k {
	case kInt:
		return v
	case kDouble:
		if math.IsInf(v.f, 0) || math.IsNaN(v.f) || v.f <= float64(math.MinInt64) || v.f >= float64(math.MaxInt64) {
			return errVal
		}
		return cval{k: kInt, i: int64(v.f)}
	}
	return errVal
}

func (c *Catalog) compileArgs(call celast.CallExpr) ([]cexpr, bool) {
	if call.IsMemberFunction() {
		return nil, false
	}
	out := make([]cexpr, len(call.Args()))
	for i, a := range call.Args() {
		var ok bool
		if out[i], ok = c.compileNode(a); !ok {
			return nil, false
		}
	}
	return out, true
}

func (c *Catalog) compileCall(call celast.CallExpr) (cexpr, bool) {
	fn := call.FunctionName()
	if fn == operators.In {
		return c.compileIn(call)
	}
	if args := call.Args(); fn == operators.Index && len(args) == 2 && args[0].Kind() == celast.IdentKind && args[0].AsIdent() == "p" &&
		args[1].Kind() == celast.LiteralKind {
		if k, ok := args[1].AsLiteral().(types.String); ok {
			return purchaseField(string(k))
		}
	}
	args, ok := c.compileArgs(call)
	if !ok {
		return nil, false
	}
	switch len(args) {
	case 1:
		x := args[0]
		switch fn {
		case operators.LogicalNot:
			return func(a *vecActivation) cval { return not(x(a)) }, true
		case operators.Negate:
			return func(a *vecActivation) cval { return negate(x(a)) }, true
		case overloads.TypeConvertDouble:
			return func(a *vecActivation) cval { return toDouble(x(a)) }, true
		case overloads.TypeConvertInt:
			return func(a *vecActivation) cval { return toInt(x(a)) }, true
		}
	case 2:
		x, y := args[0], args[1]
		switch fn {
		case operators.LogicalAnd:
			return logical(x, y, false), true
		case operators.LogicalOr:
			return logical(x, y, true), true
		case operators.Equals, operators.NotEquals:
			want := fn == operators.Equals
			return strict(x, y, func(l, r cval) cval { return boolVal(equal(l, r) == want) }), true
		case operators.Less, operators.LessEquals, operators.Greater, operators.GreaterEquals:
			test := orderTest(fn)
			return strict(x, y, func(l, r cval) cval {
				if (l.k == kDouble && math.IsNaN(l.f)) || (r.k == kDouble && math.IsNaN(r.f)) {
					return boolVal(false) // CEL: NaN is neither less nor greater
				}
				o, ok := order(l, r)
				if !ok {
					return errVal
				}
				return boolVal(test(o))
			}), true
		case operators.Add, operators.Subtract, operators.Multiply, operators.Divide, operators.Modulo:
			return strict(x, y, arith(fn)), true
		}
	case 3:
		if fn == operators.Conditional {
			cond, x, y := args[0], args[1], args[2]
			return func(a *vecActivation) cval {
				v := cond(a)
				if v.k != kBool {
					return errVal
				}
				if v.i != 0 {
					return x(a)
				}
				return y(a)
			}, true
		}
	}
	if model, ok := models[fn]; ok && len(args) == model.arity {
		return func(a *vecActivation) cval {
			var v [8]float64
			for i, x := range args {
				r := x(a)
				if r.k != kDouble {
					return errVal
				}
				v[i] = r.f
			}
			return cval{k: kDouble, f: model.fn(v[:len(args)])}
		}, true
	}
	return nil, false
}

// logical compiles && (stop false) and || (stop true): a side that is the
// stop value decides even when the other fails.
func logical(x, y cexpr, stop bool) cexpr {
	return func(a *vecActivation) cval {
		l := x(a)
		if l.k == kBool && (l.i != 0) == stop {
			return l
		}
		r := y(a)
		if r.k == kBool && (r.i != 0) == stop {
			return r
		}
		if l.k == kBool && r.k == kBool {
			return boolVal(!stop)
		}
		return errVal
	}
}

// strict compiles an operation that fails when either side fails.
func strict(x, y cexpr, op func(l, r cval) cval) cexpr {
	return func(a *vecActivation) cval {
		l := x(a)
		if l.k == kErr {
			return errVal
		}
		r := y(a)
		if r.k == kErr {
			return errVal
		}
		return op(l, r)
	}
}

// models are the predicted-value functions (ltv.go) by name.
var models = map[string]struct {
	arity int
	fn    func(v []float64) float64
}{
	"bgnbd_expected": {8, func(v []float64) float64 { return BGNBDExpected(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]) }},
	"bgnbd_p_alive":  {7, func(v []float64) float64 { return BGNBDPAlive(v[0], v[1], v[2], v[3], v[4], v[5], v[6]) }},
	"gamma_gamma_mean": {5, func(v []float64) float64 {
		return GammaGammaMean(v[0], v[1], v[2], v[3], v[4])
	}},
}

// compileIn compiles x in [literals], and x in p.categories or p.brands.
func (c *Catalog) compileIn(call celast.CallExpr) (cexpr, bool) {
	args := call.Args()
	if len(args) != 2 {
		return nil, false
	}
	x, ok := c.compileNode(args[0])
	if !ok {
		return nil, false
	}
	if list, ok := purchaseList(args[1]); ok {
		return func(a *vecActivation) cval {
			v := x(a)
			ks, present := list(a.p)
			if v.k == kErr || !present {
				return errVal
			}
			if v.k == kString {
				for _, k := range ks {
					if k.Key == v.s {
						return boolVal(true)
					}
				}
			}
			return boolVal(false)
		}, true
	}
	if args[1].Kind() != celast.ListKind {
		return nil, false
	}
	var set []cval
	for _, e := range args[1].AsList().Elements() {
		if e.Kind() != celast.LiteralKind {
			return nil, false
		}
		v, ok := literal(e)
		if !ok {
			return nil, false
		}
		set = append(set, v)
	}
	return func(a *vecActivation) cval {
		v := x(a)
		if v.k == kErr {
			return errVal
		}
		for _, s := range set {
			if equal(v, s) {
				return boolVal(true)
			}
		}
		return boolVal(false)
	}, true
}

// purchaseVars are what a purchase filter reads of one purchase as p
// (Purchase.vars).
type purchaseVars struct {
	amount, discount                    float64
	hour, weekday, month, points, items int64
	weekend, coupon, hasStore, hasItems bool
	channel, store                      string
	categories, brands                  Amounts
}

func (p *Purchase) pvars(loc *time.Location) purchaseVars {
	t := time.Unix(p.At, 0).In(loc)
	return purchaseVars{amount: float64(p.Amount) / 100, discount: float64(p.Discount) / 100,
		hour: int64(t.Hour()), weekday: int64(t.Weekday()), month: int64(t.Month()), points: p.Points, items: p.Quantity,
		weekend: t.Weekday() == time.Saturday || t.Weekday() == time.Sunday, coupon: p.Coupons > 0,
		hasStore: p.Store != "", hasItems: p.ItemsKnown, channel: p.Channel, store: p.Store,
		categories: p.Categories, brands: p.Brands}
}

// purchaseGetters read the fields of a purchase p.name names, but for
// p.categories and p.brands (only in x in p.categories); store and items
// are an error when the purchase does not have them (as the map p lacks
// the key).
var purchaseGetters = map[string]func(p *purchaseVars) cval{
	"amount":          func(p *purchaseVars) cval { return cval{k: kDouble, f: p.amount} },
	"discount":        func(p *purchaseVars) cval { return cval{k: kDouble, f: p.discount} },
	"hour":            func(p *purchaseVars) cval { return cval{k: kInt, i: p.hour} },
	"weekday":         func(p *purchaseVars) cval { return cval{k: kInt, i: p.weekday} },
	"weekend":         func(p *purchaseVars) cval { return boolVal(p.weekend) },
	"month":           func(p *purchaseVars) cval { return cval{k: kInt, i: p.month} },
	"channel":         func(p *purchaseVars) cval { return cval{k: kString, s: p.channel} },
	"coupon":          func(p *purchaseVars) cval { return boolVal(p.coupon) },
	"points_redeemed": func(p *purchaseVars) cval { return cval{k: kInt, i: p.points} },
	"store": func(p *purchaseVars) cval {
		if !p.hasStore {
			return errVal
		}
		return cval{k: kString, s: p.store}
	},
	"items": func(p *purchaseVars) cval {
		if !p.hasItems {
			return errVal
		}
		return cval{k: kInt, i: p.items}
	},
}

// purchaseField compiles p.name: a field of the purchase (purchaseGetters).
func purchaseField(name string) (cexpr, bool) {
	get, ok := purchaseGetters[name]
	if !ok {
		return nil, false
	}
	return func(a *vecActivation) cval { return get(a.p) }, true
}

// purchaseList recognises p.categories and p.brands (or p["…"]).
func purchaseList(e celast.Expr) (func(p *purchaseVars) (Amounts, bool), bool) {
	var name string
	switch e.Kind() {
	case celast.SelectKind:
		sel := e.AsSelect()
		if sel.IsTestOnly() || sel.Operand().Kind() != celast.IdentKind || sel.Operand().AsIdent() != "p" {
			return nil, false
		}
		name = sel.FieldName()
	case celast.CallKind:
		call := e.AsCall()
		args := call.Args()
		if call.FunctionName() != operators.Index || len(args) != 2 || args[0].Kind() != celast.IdentKind ||
			args[0].AsIdent() != "p" || args[1].Kind() != celast.LiteralKind {
			return nil, false
		}
		k, ok := args[1].AsLiteral().(types.String)
		if !ok {
			return nil, false
		}
		name = string(k)
	default:
		return nil, false
	}
	switch name {
	case "categories":
		return func(p *purchaseVars) (Amounts, bool) { return p.categories, p.hasItems }, true
	case "brands":
		return func(p *purchaseVars) (Amounts, bool) { return p.brands, p.hasItems }, true
	}
	return nil, false
}

// equal is CEL's heterogeneous equality of two values.
func equal(l, r cval) bool {
	switch {
	case l.k == r.k:
		switch l.k {
		case kDouble:
			return l.f == r.f
		case kString:
			return l.s == r.s
		}
		return l.i == r.i
	case l.k == kDouble && r.k == kInt:
		return !math.IsNaN(l.f) && compareDoubleInt(l.f, r.i) == 0
	case l.k == kInt && r.k == kDouble:
		return !math.IsNaN(r.f) && compareDoubleInt(r.f, l.i) == 0
	}
	return false
}

// order compares two values as CEL orders them: -1, 0 or 1; false when
// they cannot be ordered (NaN, other types).
func order(l, r cval) (int, bool) {
	switch {
	case l.k == kInt && r.k == kInt:
		return cmp.Compare(l.i, r.i), true
	case l.k == kDouble && r.k == kDouble:
		if math.IsNaN(l.f) || math.IsNaN(r.f) {
			return 0, false
		}
		return cmp.Compare(l.f, r.f), true
	case l.k == kDouble && r.k == kInt:
		if math.IsNaN(l.f) {
			return 0, false
		}
		return compareDoubleInt(l.f, r.i), true
	case l.k == kInt && r.k == kDouble:
		if math.IsNaN(r.f) {
			return 0, false
		}
		return -compareDoubleInt(r.f, l.i), true
	case l.k == kString && r.k == kString:
		return strings.Compare(l.s, r.s), true
	case l.k == kBool && r.k == kBool:
		return cmp.Compare(l.i, r.i), true
	}
	return 0, false
}

// compareDoubleInt compares d, not NaN, with i.
func compareDoubleInt(d float64, i int64) int {
	switch {
	case d < math.MinInt64:
		return -1
	case d > math.MaxInt64:
		return 1
	}
	return cmp.Compare(d, float64(i))
}

func orderTest(fn string) func(int) bool {
	switch fn {
	case operators.Less:
		return func(o int) bool { return o < 0 }
	case operators.LessEquals:
		return func(o int) bool { return o <= 0 }
	case operators.Greater:
		return func(o int) bool { return o > 0 }
	}
	return func(o int) bool { return o >= 0 }
}

// arith is an arithmetic operator on two values of one type, as CEL's
// (integers checked for overflow and division by zero).
func arith(fn string) func(l, r cval) cval {
	return func(l, r cval) cval {
		switch {
		case l.k == kInt && r.k == kInt:
			x, y := l.i, r.i
			switch fn {
			case operators.Add:
				if (y > 0 && x > math.MaxInt64-y) || (y < 0 && x < math.MinInt64-y) {
					return errVal
				}
				return cval{k: kInt, i: x + y}
			case operators.Subtract:
				if (y < 0 && x > math.MaxInt64+y) || (y > 0 && x < math.MinInt64+y) {
					return errVal
				}
				return cval{k: kInt, i: x - y}
			case operators.Multiply:
				if (x == -1 && y == math.MinInt64) || (y == -1 && x == math.MinInt64) ||
					(x > 0 && y > 0 && x > math.MaxInt64/y) || (x > 0 && y < 0 && y < math.MinInt64/x) ||
					(x < 0 && y > 0 && x < math.MinInt64/y) || (x < 0 && y < 0 && y < math.MaxInt64/x) {
					return errVal
				}
				return cval{k: kInt, i: x * y}
			case operators.Divide:
				if y == 0 || (x == math.MinInt64 && y == -1) {
					return errVal
				}
				return cval{k: kInt, i: x / y}
			case operators.Modulo:
				if y == 0 || (x == math.MinInt64 && y == -1) {
					return errVal
				}
				return cval{k: kInt, i: x % y}
			}
		case l.k == kDouble && r.k == kDouble:
			switch fn {
			case operators.Add:
				return cval{k: kDouble, f: l.f + r.f}
			case operators.Subtract:
				return cval{k: kDouble, f: l.f - r.f}
			case operators.Multiply:
				return cval{k: kDouble, f: l.f * r.f}
			case operators.Divide:
				return cval{k: kDouble, f: l.f / r.f}
			}
		case l.k == kString && r.k == kString && fn == operators.Add:
			return cval{k: kString, s: l.s + r.s}
		}
		return errVal
	}
}

// evalCompiled computes a label from its compiled expression, converted
// as convert does.
func (l *Label) evalCompiled(act *vecActivation) lval {
	v := l.compiled(act)
	switch l.Type {
	case TypeBool:
		if v.k == kBool {
			return lval{ok: true, b: v.i != 0}
		}
	case TypeNumber:
		switch v.k {
		case kDouble:
			if !math.IsNaN(v.f) && !math.IsInf(v.f, 0) {
				return lval{ok: true, f: v.f}
			}
		case kInt:
			return lval{ok: true, f: float64(v.i)}
		}
	default:
		if v.k == kString {
			for i, s := range l.Values {
				if s == v.s {
					return lval{ok: true, e: uint16(i)}
				}
			}
		}
	}
	return lval{}
}
