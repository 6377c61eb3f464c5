// Package segment compiles segment expressions — boolean conditions over a
// member's labels, in a small subset of CEL — to ClickHouse SQL over
// member_profiles, and counts or exports the members they match.
//
// The language (docs/analytics.md has the analyst's version):
//
//	expr   = expr "||" expr | expr "&&" expr | "!" expr | "(" expr ")"
//	       | value op value | value "in" "[" [literal {"," literal}] "]"
//	       | bool_label | "present(" label ")" | "true" | "false"
//	op     = "==" | "!=" | "<" | "<=" | ">" | ">="
//	value  = label | literal
//
// Bool labels compare with true/false, enum labels with their catalogue
// values (== != in), number labels with int or double literals (any
// comparison). Nothing else — arithmetic, function calls, macros, field
// access — is accepted.
//
// Absent labels follow three-valued logic (SQL's, or Kleene's): a
// comparison involving an absent label is unknown, !unknown is unknown,
// unknown && false is false, unknown || true is true, and a member matches
// only when the whole expression is true. So neither `x == "a"` nor
// `!(x == "a")` matches a member without x; present(x) tests for it.
package segment

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
)

// Label value types.
const (
	TypeBool   = "bool"
	TypeEnum   = "enum"
	TypeNumber = "number"
)

// Label is a catalogue label an expression may use.
type Label struct {
	ID string
	// Type is "bool", "enum" or "number".
	Type string
	// Values an enum label can take. Empty means any string.
	Values []string
}

// Query is a compiled segment expression.
type Query struct {
	// Expr is the expression as written.
	Expr string
	// Where is a ClickHouse condition over member_profiles' columns that is
	// never NULL.
	Where string
	// Labels are the label ids the expression uses, sorted.
	Labels []string
}

// Error is an invalid expression, with the 1-based line and column of the
// offending part and the label it concerns, if any.
type Error struct {
	Line, Column int
	Label        string
	Msg          string
}

func (e *Error) Error() string {
	return fmt.Sprintf("segment expression %d:%d: %s", e.Line, e.Column, e.Msg)
}

// MaxExprLen bounds an expression's length in bytes.
const MaxExprLen = 8192

// presentFn tests whether a label has a value.
const presentFn = "present"

var labelID = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// Compiler compiles expressions against one catalogue. It is safe for
// concurrent use; build one per catalogue version, as building the CEL
// environment for hundreds of labels costs more than a compile.
type Compiler struct {
	env    *cel.Env
	labels map[string]Label
	ids    []string
	// values holds each enum label's allowed values as a set.
	values map[string]map[string]bool
}

// NewCompiler declares labels for expressions. It fails on an invalid id or
// type, a duplicate id, or an id CEL reserves (such as "in" or "loop").
func NewCompiler(labels []Label) (*Compiler, error) {
	c := &Compiler{labels: map[string]Label{}, values: map[string]map[string]bool{}}
	opts := []cel.EnvOption{
		cel.ClearMacros(),
		cel.CrossTypeNumericComparisons(true),
		cel.Function(presentFn,
			cel.Overload("present_bool", []*cel.Type{cel.BoolType}, cel.BoolType),
			cel.Overload("present_string", []*cel.Type{cel.StringType}, cel.BoolType),
			cel.Overload("present_double", []*cel.Type{cel.DoubleType}, cel.BoolType)),
	}
	var errs []error
	for _, l := range labels {
		if !labelID.MatchString(l.ID) {
			errs = append(errs, fmt.Errorf("segment label %q: id must match %s", l.ID, labelID))
			continue
		}
		if _, dup := c.labels[l.ID]; dup {
			errs = append(errs, fmt.Errorf("segment label %q: declared twice", l.ID))
			continue
		}
		var t *cel.Type
		switch l.Type {
		case TypeBool:
			t = cel.BoolType
		case TypeEnum:
			t = cel.StringType
			if len(l.Values) > 0 {
				set := make(map[string]bool, len(l.Values))
				for _, v := range l.Values {
					set[v] = true
				}
				c.values[l.ID] = set
			}
		case TypeNumber:
			t = cel.DoubleType
		default:
			errs = append(errs, fmt.Errorf("segment label %q: type %q is not bool, enum or number", l.ID, l.Type))
			continue
		}
		c.labels[l.ID] = l
		c.ids = append(c.ids, l.ID)
		opts = append(opts, cel.Variable(l.ID, t))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sort.Strings(c.ids)
	env, err := cel.NewEnv(opts...)
	if err != nil {
		return nil, fmt.Errorf("segment environment: %w", err)
	}
	c.env = env
	return c, nil
}

// Compile compiles expr against labels; NewCompiler(labels).Compile(expr).
func Compile(expr string, labels []Label) (*Query, error) {
	c, err := NewCompiler(labels)
	if err != nil {
		return nil, err
	}
	return c.Compile(expr)
}

// Compile parses and checks expr and translates it to SQL. An invalid
// expression gives an *Error.
func (c *Compiler) Compile(expr string) (*Query, error) {
	if len(expr) > MaxExprLen {
		return nil, &Error{Line: 1, Column: 1, Msg: fmt.Sprintf("expression is %d bytes long, at most %d are allowed", len(expr), MaxExprLen)}
	}
	if !utf8.ValidString(expr) {
		return nil, &Error{Line: 1, Column: 1, Msg: "expression is not valid UTF-8"}
	}
	if strings.TrimSpace(expr) == "" {
		return nil, &Error{Line: 1, Column: 1, Msg: "expression is empty"}
	}
	parsed, iss := c.env.Parse(expr)
	if iss.Err() != nil {
		return nil, c.issueError(iss)
	}
	t := &translator{c: c, info: parsed.NativeRep().SourceInfo(), fac: ast.NewExprFactory(), used: map[string]bool{}}
	root := parsed.NativeRep().Expr()
	// Validate (and coerce int literals next to number labels to doubles)
	// before CEL's checker runs, so errors name labels and values the way
	// an analyst wrote them.
	if err := t.checkBool(root); err != nil {
		return nil, err
	}
	checked, iss := c.env.Check(parsed)
	if iss.Err() != nil {
		return nil, c.issueError(iss)
	}
	if !checked.OutputType().IsExactType(cel.BoolType) {
		return nil, &Error{Line: 1, Column: 1, Msg: "expression is not a condition"}
	}
	where := t.sql(checked.NativeRep().Expr(), true)
	labels := make([]string, 0, len(t.used))
	for l := range t.used {
		labels = append(labels, l)
	}
	sort.Strings(labels)
	return &Query{Expr: expr, Where: where, Labels: labels}, nil
}

// issueError turns CEL's first issue into an *Error.
func (c *Compiler) issueError(iss *cel.Issues) error {
	errs := iss.Errors()
	if len(errs) == 0 {
		return &Error{Line: 1, Column: 1, Msg: iss.String()}
	}
	e := errs[0]
	line, col := e.Location.Line(), e.Location.Column()+1
	if line < 1 {
		line, col = 1, 1
	}
	return &Error{Line: line, Column: col, Msg: strings.ToLower(e.Message[:1]) + e.Message[1:]}
}

// translator validates one expression and translates it to SQL.
type translator struct {
	c    *Compiler
	info *ast.SourceInfo
	fac  ast.ExprFactory
	used map[string]bool
}

func (t *translator) errAt(e ast.Expr, label, format string, args ...any) *Error {
	loc := t.info.GetStartLocation(e.ID())
	line, col := loc.Line(), loc.Column()+1
	if line < 1 {
		line, col = 1, 1
	}
	return &Error{Line: line, Column: col, Label: label, Msg: fmt.Sprintf(format, args...)}
}

// kind is what an operand of a comparison is.
type kind int

const (
	kBool kind = iota
	kString
	kNumber
)

func (k kind) String() string {
	return [...]string{"bool", "string", "number"}[k]
}

func labelKind(l Label) kind {
	switch l.Type {
	case TypeBool:
		return kBool
	case TypeEnum:
		return kString
	}
	return kNumber
}

// label resolves an identifier to a declared label, or fails with the
// closest id as a suggestion.
func (t *translator) label(e ast.Expr) (Label, error) {
	id := e.AsIdent()
	if l, ok := t.c.labels[id]; ok {
		t.used[id] = true
		return l, nil
	}
	msg := fmt.Sprintf("unknown label %q", id)
	if s := closest(id, t.c.ids); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	return Label{}, t.errAt(e, id, "%s", msg)
}

// checkBool validates e as a condition.
func (t *translator) checkBool(e ast.Expr) error {
	switch e.Kind() {
	case ast.LiteralKind:
		if _, ok := e.AsLiteral().(types.Bool); ok {
			return nil
		}
		return t.errAt(e, "", "%s is not a condition", literalText(e.AsLiteral()))
	case ast.IdentKind:
		l, err := t.label(e)
		if err != nil {
			return err
		}
		if l.Type != TypeBool {
			return t.errAt(e, l.ID, "label %q is %s, not bool: compare it with a value, e.g. %s", l.ID, l.Type, example(l))
		}
		return nil
	case ast.CallKind:
		call := e.AsCall()
		switch fn := call.FunctionName(); fn {
		case operators.LogicalAnd, operators.LogicalOr:
			for _, a := range call.Args() {
				if err := t.checkBool(a); err != nil {
					return err
				}
			}
			return nil
		case operators.LogicalNot:
			return t.checkBool(call.Args()[0])
		case operators.Equals, operators.NotEquals, operators.Less, operators.LessEquals, operators.Greater, operators.GreaterEquals:
			return t.checkComparison(e, call)
		case operators.In:
			return t.checkIn(e, call)
		case presentFn:
			if call.IsMemberFunction() || len(call.Args()) != 1 || call.Args()[0].Kind() != ast.IdentKind {
				return t.errAt(e, "", "present() takes one label id, e.g. present(ltv_365d)")
			}
			_, err := t.label(call.Args()[0])
			return err
		}
	}
	return t.unsupported(e)
}

// unsupportedOperators are the CEL operators the language leaves out, with
// what the error says.
var unsupportedOperators = map[string]string{
	operators.Conditional: "the conditional operator ?: is not supported",
	operators.Index:       "indexing with [] is not supported",
	operators.OptIndex:    "indexing with [] is not supported",
	operators.Negate:      "negation of a label is not supported: compare it with a negative literal instead",
}

// unsupportedKinds are the kinds of CEL expression the language leaves out,
// with what the error says.
var unsupportedKinds = map[ast.ExprKind]string{
	ast.ListKind:          "a list is only allowed on the right of in",
	ast.MapKind:           "map and message literals are not supported",
	ast.StructKind:        "map and message literals are not supported",
	ast.ComprehensionKind: "macros are not supported",
}

// unsupported explains why e is not part of the language.
func (t *translator) unsupported(e ast.Expr) error {
	switch e.Kind() {
	case ast.CallKind:
		call := e.AsCall()
		fn := call.FunctionName()
		if msg, ok := unsupportedOperators[fn]; ok {
			return t.errAt(e, "", "%s", msg)
		}
		if op, ok := operators.FindReverse(fn); ok && op != "" {
			return t.errAt(e, "", "operator %s is not supported: compare labels with literal values using == != < <= > >= or in", op)
		}
		if call.IsMemberFunction() {
			return t.errAt(e, "", "method call .%s() is not supported", fn)
		}
		return t.errAt(e, "", "function %s() is not supported (the only function is present(label))", fn)
	case ast.SelectKind:
		return t.errAt(e, "", "field selection .%s is not supported: label ids are plain names", e.AsSelect().FieldName())
	case ast.LiteralKind:
		return t.errAt(e, "", "%s is not allowed here", literalText(e.AsLiteral()))
	}
	if msg, ok := unsupportedKinds[e.Kind()]; ok {
		return t.errAt(e, "", "%s", msg)
	}
	return t.errAt(e, "", "unsupported expression")
}

// operand is one side of a comparison.
type operand struct {
	e     ast.Expr
	label *Label
	kind  kind
}

// checkOperand validates a comparison operand: a label or a literal.
func (t *translator) checkOperand(e ast.Expr) (operand, error) {
	switch e.Kind() {
	case ast.IdentKind:
		l, err := t.label(e)
		if err != nil {
			return operand{}, err
		}
		return operand{e: e, label: &l, kind: labelKind(l)}, nil
	case ast.LiteralKind:
		switch v := e.AsLiteral().(type) {
		case types.Bool:
			return operand{e: e, kind: kBool}, nil
		case types.String:
			return operand{e: e, kind: kString}, nil
		case types.Int, types.Uint, types.Double:
			return operand{e: e, kind: kNumber}, nil
		case types.Null:
			return operand{}, t.errAt(e, "", "null is not a value: test for an absent label with !present(label)")
		default:
			return operand{}, t.errAt(e, "", "%s is not supported", literalText(v))
		}
	}
	return operand{}, t.unsupported(e)
}

func (t *translator) checkComparison(e ast.Expr, call ast.CallExpr) error {
	args := call.Args()
	op, _ := operators.FindReverse(call.FunctionName())
	l, err := t.checkOperand(args[0])
	if err != nil {
		return err
	}
	r, err := t.checkOperand(args[1])
	if err != nil {
		return err
	}
	if l.label == nil && r.label == nil {
		return t.errAt(e, "", "comparison %s %s %s uses no label", t.text(args[0]), op, t.text(args[1]))
	}
	lab, other := l, r
	if lab.label == nil {
		lab, other = r, l
	}
	if lab.kind != other.kind {
		return t.mismatch(other.e, *lab.label, other)
	}
	ordering := call.FunctionName() != operators.Equals && call.FunctionName() != operators.NotEquals
	if ordering && lab.kind != kNumber {
		return t.errAt(e, lab.label.ID, "label %q is %s: only == and != (and in) apply to it, not %s", lab.label.ID, lab.label.Type, op)
	}
	if other.label == nil {
		return t.checkValue(*lab.label, other.e)
	}
	return nil // two labels of the same type
}

func (t *translator) checkIn(e ast.Expr, call ast.CallExpr) error {
	args := call.Args()
	if args[0].Kind() != ast.IdentKind {
		return t.errAt(args[0], "", "the left of in must be a label id")
	}
	l, err := t.label(args[0])
	if err != nil {
		return err
	}
	if l.Type == TypeBool {
		return t.errAt(e, l.ID, "label %q is bool: compare it with == true or == false instead of in", l.ID)
	}
	if args[1].Kind() != ast.ListKind {
		return t.errAt(args[1], l.ID, "the right of in must be a list of values, e.g. %s in %s", l.ID, listExample(l))
	}
	for _, el := range args[1].AsList().Elements() {
		o, err := t.checkOperand(el)
		if err != nil {
			return err
		}
		if o.label != nil {
			return t.errAt(el, l.ID, "the list after in holds literal values, not labels")
		}
		if o.kind != labelKind(l) {
			return t.mismatch(el, l, o)
		}
		if err := t.checkValue(l, el); err != nil {
			return err
		}
	}
	return nil
}

// mismatch reports a literal or label of the wrong kind compared with l.
func (t *translator) mismatch(at ast.Expr, l Label, o operand) error {
	what := ""
	if o.label != nil {
		what = fmt.Sprintf("label %q (%s)", o.label.ID, o.label.Type)
	} else {
		what = fmt.Sprintf("%s %s", o.kind, literalText(o.e.AsLiteral()))
	}
	return t.errAt(at, l.ID, "label %q is %s: it cannot be compared with %s (e.g. %s)", l.ID, l.Type, what, example(l))
}

// checkValue checks a literal compared with l and coerces number literals
// to double so that CEL's checker sees one type.
func (t *translator) checkValue(l Label, lit ast.Expr) error {
	switch l.Type {
	case TypeEnum:
		v := string(lit.AsLiteral().(types.String))
		if set := t.c.values[l.ID]; set != nil && !set[v] {
			msg := fmt.Sprintf("label %q has no value %q", l.ID, v)
			if s := closest(v, l.Values); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			return t.errAt(lit, l.ID, "%s; allowed: %s", msg, quoteAll(l.Values))
		}
	case TypeNumber:
		var f float64
		switch v := lit.AsLiteral().(type) {
		case types.Int:
			f = float64(v)
		case types.Uint:
			f = float64(v)
		case types.Double:
			f = float64(v)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return t.errAt(lit, l.ID, "number %s is not finite", literalText(lit.AsLiteral()))
		}
		if _, ok := lit.AsLiteral().(types.Double); !ok {
			lit.SetKindCase(t.fac.NewLiteral(lit.ID(), types.Double(f)))
		}
	}
	return nil
}

// text is the source text of e, for messages.
func (t *translator) text(e ast.Expr) string {
	switch e.Kind() {
	case ast.IdentKind:
		return e.AsIdent()
	case ast.LiteralKind:
		return literalText(e.AsLiteral())
	}
	return "…"
}

// sql translates a validated condition: with positive set, the SQL is true
// exactly when e is true; otherwise exactly when e is false. A comparison
// involving an absent label is neither, which is how unknown propagates
// through ! without matching.
func (t *translator) sql(e ast.Expr, positive bool) string {
	switch e.Kind() {
	case ast.LiteralKind:
		if bool(e.AsLiteral().(types.Bool)) == positive {
			return "1"
		}
		return "0"
	case ast.IdentKind: // a bool label
		col := quoteIdent(e.AsIdent())
		v := "1"
		if !positive {
			v = "0"
		}
		return "(isNotNull(" + col + ") AND assumeNotNull(" + col + ") = " + v + ")"
	}
	call := e.AsCall()
	args := call.Args()
	switch fn := call.FunctionName(); fn {
	case operators.LogicalAnd, operators.LogicalOr:
		joiner := " AND "
		if (fn == operators.LogicalOr) == positive {
			joiner = " OR "
		}
		parts := make([]string, len(args))
		for i, a := range args {
			parts[i] = t.sql(a, positive)
		}
		return "(" + strings.Join(parts, joiner) + ")"
	case operators.LogicalNot:
		return t.sql(args[0], !positive)
	case presentFn:
		col := quoteIdent(args[0].AsIdent())
		if positive {
			return "isNotNull(" + col + ")"
		}
		return "isNull(" + col + ")"
	case operators.In:
		col := quoteIdent(args[0].AsIdent())
		elems := args[1].AsList().Elements()
		if len(elems) == 0 {
			if positive {
				return "0"
			}
			return "isNotNull(" + col + ")"
		}
		vals := make([]string, len(elems))
		for i, el := range elems {
			vals[i] = literalSQL(el.AsLiteral())
		}
		op := " IN "
		if !positive {
			op = " NOT IN "
		}
		return "(isNotNull(" + col + ") AND assumeNotNull(" + col + ")" + op + "(" + strings.Join(vals, ", ") + "))"
	default: // a comparison
		op := sqlOps[fn]
		if !positive {
			op = sqlOps[inverse[fn]]
		}
		var guards []string
		side := func(a ast.Expr) string {
			if a.Kind() == ast.IdentKind {
				col := quoteIdent(a.AsIdent())
				guards = append(guards, "isNotNull("+col+")")
				return "assumeNotNull(" + col + ")"
			}
			return literalSQL(a.AsLiteral())
		}
		cmp := side(args[0]) + " " + op + " " + side(args[1])
		return "(" + strings.Join(append(guards, cmp), " AND ") + ")"
	}
}

var sqlOps = map[string]string{
	operators.Equals: "=", operators.NotEquals: "!=",
	operators.Less: "<", operators.LessEquals: "<=",
	operators.Greater: ">", operators.GreaterEquals: ">=",
}

// inverse gives the comparison true exactly when the key is false, for
// present values (NaN never reaches member_profiles: it is stored as NULL).
var inverse = map[string]string{
	operators.Equals: operators.NotEquals, operators.NotEquals: operators.Equals,
	operators.Less: operators.GreaterEquals, operators.GreaterEquals: operators.Less,
	operators.Greater: operators.LessEquals, operators.LessEquals: operators.Greater,
}

// quoteIdent quotes a label id (validated at NewCompiler) as a column name.
func quoteIdent(id string) string { return "`" + id + "`" }

// literalSQL renders a literal for ClickHouse. Strings are escaped
// completely: backslash, quote and every control character.
func literalSQL(v any) string {
	switch x := v.(type) {
	case types.Bool:
		if x {
			return "1"
		}
		return "0"
	case types.String:
		return quoteString(string(x))
	case types.Int:
		return strconv.FormatInt(int64(x), 10)
	case types.Uint:
		return strconv.FormatUint(uint64(x), 10)
	case types.Double:
		return doubleSQL(float64(x))
	}
	panic(fmt.Sprintf("segment: literal %T reached SQL", v))
}

// doubleSQL renders a finite f as SQL that ClickHouse evaluates to exactly
// f. A subnormal number (nonzero, under 2^-1022 ≈ 2.2e-308) has no literal
// ClickHouse parses (18.16 calls 5e-324 a syntax error, and reads the
// string '5e-324' as 0), so it is written as its multiple m of the
// smallest one, 2^-1074, computed as m × 2^-1022 × 2^-52: m is an integer
// under 2^52 and both products are exact.
func doubleSQL(f float64) string {
	if f != 0 && math.Abs(f) < 0x1p-1022 {
		m := int64(f / 0x1p-1074) // exact: a subnormal is m × 2^-1074
		return fmt.Sprintf("(%d * 2.2250738585072014e-308 * 2.220446049250313e-16)", m)
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

func quoteString(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\'':
			b.WriteString(`\'`)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\x%02X`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

func literalText(v any) string {
	switch x := v.(type) {
	case types.String:
		return strconv.Quote(string(x))
	case types.Bool:
		return strconv.FormatBool(bool(x))
	case types.Int:
		return strconv.FormatInt(int64(x), 10)
	case types.Uint:
		return strconv.FormatUint(uint64(x), 10) + "u"
	case types.Double:
		return strconv.FormatFloat(float64(x), 'g', -1, 64)
	case types.Null:
		return "null"
	case types.Bytes:
		return "bytes literal"
	}
	return fmt.Sprint(v)
}

func example(l Label) string {
	switch l.Type {
	case TypeBool:
		return l.ID + " or !" + l.ID
	case TypeEnum:
		v := "value"
		if len(l.Values) > 0 {
			v = l.Values[0]
		}
		return fmt.Sprintf("%s == %q", l.ID, v)
	}
	return l.ID + " >= 1"
}

func listExample(l Label) string {
	if l.Type == TypeEnum {
		vs := l.Values
		if len(vs) == 0 {
			vs = []string{"a", "b"}
		}
		if len(vs) > 2 {
			vs = vs[:2]
		}
		return "[" + strings.Join(quoteStrings(vs), ", ") + "]"
	}
	return "[1, 2]"
}

func quoteStrings(vs []string) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strconv.Quote(v)
	}
	return out
}

func quoteAll(vs []string) string { return strings.Join(quoteStrings(vs), ", ") }

// closest is the candidate nearest to s by edit distance, if near enough to
// be a plausible typo.
func closest(s string, candidates []string) string {
	best, bestD := "", math.MaxInt
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD <= max(2, utf8.RuneCountInString(s)/4) {
		return best
	}
	return ""
}

func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
