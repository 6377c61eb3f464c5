package tags

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"
	"go.yaml.in/yaml/v3"

	"github.com/membercenter/membercenter/storage/clickhouse"

	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

//go:embed catalog.yaml
var defaultCatalog []byte

// DefaultCatalog is the catalogue shipped with the code.
func DefaultCatalog() []byte { return bytes.Clone(defaultCatalog) }

// Value types of labels.
const (
	TypeBool   = "bool"
	TypeEnum   = "enum"
	TypeNumber = "number"
)

// Groups and kinds a label may have.
var (
	Groups = []string{"demographics", "value", "lifecycle", "channel", "affinity", "time", "scenario",
		"price_sensitivity", "engagement", "benefit_usage", "risk", "predicted_value"}
	Kinds = []string{"attribute", "window", "rule", "score", "segment", "model"}
)

var idPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// Catalog is a loaded, validated label catalogue.
type Catalog struct {
	Version  string
	Timezone string
	Location *time.Location
	Filters  []*Filter
	Labels   []*Label // in evaluation order: every label after its inputs

	features  map[string]Feature
	byID      map[string]*Label
	filterKey string
	segOnce   sync.Once
	segments  *segment.Compiler // built on first use
	segErr    error
	// dirty[kind] are the labels an event of kind can change.
	dirty map[string]map[string]bool
	// eng evaluates labels by position (Refresh).
	eng compiled
}

// Filter is a named condition over one purchase; it adds the features
// <id>_orders_30d/90d/365d, <id>_spend_365d and <id>_share_90d/365d.
type Filter struct {
	ID          string `yaml:"id"`
	Description string `yaml:"description"`
	Expr        string `yaml:"expr"`
	program     cel.Program
	ast         *cel.Ast
	compiled    cexpr // see Label.compiled
	// purchase fields the filter reads that may be unknown
	needsItems, needsStore bool
}

// Label is one catalogue entry.
type Label struct {
	ID          string    `yaml:"id"`
	NameEN      string    `yaml:"name_en"`
	NameZH      string    `yaml:"name_zh"`
	Group       string    `yaml:"group"`
	Description string    `yaml:"description"`
	Type        string    `yaml:"type"`
	Values      []string  `yaml:"values"`
	Kind        string    `yaml:"kind"`
	Expr        string    `yaml:"expr"`
	Behavioural *bool     `yaml:"behavioural"`
	Examples    []Example `yaml:"examples"`

	program cel.Program
	ast     *cel.Ast
	// compiled is the expression as a Go closure (expr.go); nil when it
	// uses what compileExpr does not know, and program runs.
	compiled cexpr
	// Inputs: features and labels the expression reads.
	Inputs []string `yaml:"-"`
}

// IsBehavioural says whether the label is withheld from members who
// withdrew profiling consent: every label outside demographics unless the
// catalogue says otherwise.
func (l *Label) IsBehavioural() bool {
	if l.Behavioural != nil {
		return *l.Behavioural
	}
	return l.Group != "demographics"
}

// Example is a worked example: inputs (features, or labels given directly)
// and the value the label takes; Expect nil means absent.
type Example struct {
	Given  map[string]any `yaml:"given"`
	Expect any            `yaml:"expect"`
}

type yamlCatalog struct {
	Version  string    `yaml:"version"`
	Timezone string    `yaml:"timezone"`
	Filters  []*Filter `yaml:"filters"`
	Labels   []*Label  `yaml:"labels"`
}

// CatalogError names the label or filter a catalogue problem is in.
type CatalogError struct {
	Entry string // "label x" or "filter y" or ""
	Err   error
}

func (e *CatalogError) Error() string {
	if e.Entry == "" {
		return "label catalogue: " + e.Err.Error()
	}
	return "label catalogue: " + e.Entry + ": " + e.Err.Error()
}

func (e *CatalogError) Unwrap() error { return e.Err }

// ParseCatalog loads and validates a catalogue: ids, names, groups, kinds,
// types, that every expression type-checks over known features and labels,
// that labels form no cycle, and that every label has a worked example that
// holds. Every problem is reported, each naming its label.
func ParseCatalog(src []byte) (*Catalog, error) {
	var y yamlCatalog
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&y); err != nil {
		return nil, &CatalogError{Err: fmt.Errorf("parse YAML: %w", err)}
	}
	var errs []error
	fail := func(entry string, format string, args ...any) {
		errs = append(errs, &CatalogError{Entry: entry, Err: fmt.Errorf(format, args...)})
	}
	c := &Catalog{Version: y.Version, Timezone: y.Timezone, features: map[string]Feature{}, byID: map[string]*Label{}}
	if c.Version == "" {
		fail("", "version is required")
	}
	loc, err := time.LoadLocation(cmpOr(y.Timezone, "UTC"))
	if err != nil {
		fail("", "timezone %q: %v", y.Timezone, err)
		loc = time.UTC
	}
	c.Location = loc
	for _, f := range BuiltinFeatures() {
		c.features[f.ID] = f
	}
	// Purchase filters.
	pEnv, err := cel.NewEnv(cel.Variable("p", cel.MapType(cel.StringType, cel.DynType)))
	if err != nil {
		return nil, err
	}
	seenFilter := map[string]bool{}
	for _, f := range y.Filters {
		entry := "filter " + f.ID
		if !idPattern.MatchString(f.ID) {
			fail(entry, "id must match %s", idPattern)
			continue
		}
		if seenFilter[f.ID] {
			fail(entry, "duplicate filter id")
			continue
		}
		seenFilter[f.ID] = true
		if f.Description == "" {
			fail(entry, "description is required")
		}
		ast, iss := pEnv.Compile(f.Expr)
		if iss.Err() != nil {
			fail(entry, "expr: %v", iss.Err())
			continue
		}
		if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
			fail(entry, "expr must be a condition, not %s", ast.OutputType())
			continue
		}
		if f.program, err = pEnv.Program(ast); err != nil {
			fail(entry, "expr: %v", err)
			continue
		}
		f.ast = ast
		fields := purchaseFields(ast)
		f.needsItems = fields["categories"] || fields["brands"] || fields["items"]
		f.needsStore = fields["store"]
		for _, ff := range FilterFeatures(f) {
			if _, dup := c.features[ff.ID]; dup {
				fail(entry, "feature %s already exists", ff.ID)
			}
			c.features[ff.ID] = ff
		}
		c.Filters = append(c.Filters, f)
	}
	h := sha256.New()
	for _, f := range c.Filters {
		fmt.Fprintf(h, "%s\x00%s\x00", f.ID, f.Expr)
	}
	c.filterKey = hex.EncodeToString(h.Sum(nil))[:16]
	// Labels: declarations first, so expressions may read any label.
	opts := []cel.EnvOption{ltvFunctions()}
	for id, f := range c.features {
		opts = append(opts, cel.Variable(id, celType(f.Type)))
	}
	for _, l := range y.Labels {
		entry := "label " + l.ID
		switch {
		case !idPattern.MatchString(l.ID):
			fail(entry, "id must match %s", idPattern)
			continue
		case c.byID[l.ID] != nil:
			fail(entry, "duplicate label id")
			continue
		case c.features[l.ID].ID != "":
			fail(entry, "id is also a feature's; label ids must differ from feature ids")
			continue
		}
		// The id is a ClickHouse column of member_profiles.
		if err := clickhouse.CheckLabelID(l.ID); err != nil {
			fail(entry, "%v", err)
			continue
		}
		c.byID[l.ID] = l
		switch l.Type {
		case TypeBool, TypeNumber:
			if len(l.Values) > 0 {
				fail(entry, "values are only for enum labels")
			}
		case TypeEnum:
			if len(l.Values) < 2 {
				fail(entry, "an enum label needs at least two values")
			}
		default:
			fail(entry, "type %q: use bool, enum or number", l.Type)
			continue
		}
		opts = append(opts, cel.Variable(l.ID, labelCELType(l.Type)))
	}
	env, err := cel.NewEnv(opts...)
	if err != nil {
		return nil, err
	}
	for _, l := range y.Labels {
		if c.byID[l.ID] != l {
			continue
		}
		entry := "label " + l.ID
		if l.NameEN == "" || l.NameZH == "" {
			fail(entry, "name_en and name_zh are required")
		}
		if l.Description == "" {
			fail(entry, "description is required")
		}
		if !slices.Contains(Groups, l.Group) {
			fail(entry, "group %q: use one of %s", l.Group, strings.Join(Groups, ", "))
		}
		if !slices.Contains(Kinds, l.Kind) {
			fail(entry, "kind %q: use one of %s", l.Kind, strings.Join(Kinds, ", "))
		}
		if len(l.Examples) == 0 {
			fail(entry, "no worked example: add at least one under examples")
		}
		ast, iss := env.Compile(l.Expr)
		if iss.Err() != nil {
			fail(entry, "expr: %v", iss.Err())
			continue
		}
		if !outputFits(l.Type, ast.OutputType()) {
			fail(entry, "expr gives %s, but the label is %s", ast.OutputType(), l.Type)
			continue
		}
		if l.program, err = env.Program(ast); err != nil {
			fail(entry, "expr: %v", err)
			continue
		}
		l.ast = ast
		refs := map[string]bool{}
		for _, r := range ast.NativeRep().ReferenceMap() {
			if r.Name != "" {
				refs[r.Name] = true
			}
		}
		l.Inputs = l.Inputs[:0]
		for n := range refs {
			if c.features[n].ID != "" || c.byID[n] != nil {
				l.Inputs = append(l.Inputs, n)
			}
		}
		sort.Strings(l.Inputs)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	order, err := c.topo(y.Labels)
	if err != nil {
		return nil, err
	}
	c.Labels = order
	c.buildDirty()
	c.compile(src)
	for _, l := range c.Labels {
		for i, ex := range l.Examples {
			if err := c.checkExample(l, ex); err != nil {
				errs = append(errs, &CatalogError{Entry: "label " + l.ID, Err: fmt.Errorf("example %d: %w", i+1, err)})
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// purchaseFields lists the fields of p a filter reads (p.x or p["x"]).
func purchaseFields(a *cel.Ast) map[string]bool {
	out := map[string]bool{}
	celast.PreOrderVisit(celast.NavigateAST(a.NativeRep()), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.SelectKind:
			out[e.AsSelect().FieldName()] = true
		case celast.CallKind:
			if c := e.AsCall(); c.FunctionName() == operators.Index && len(c.Args()) == 2 && c.Args()[1].Kind() == celast.LiteralKind {
				if s, ok := c.Args()[1].AsLiteral().Value().(string); ok {
					out[s] = true
				}
			}
		}
	}))
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func celType(t string) *cel.Type {
	switch t {
	case "int":
		return cel.IntType
	case "double":
		return cel.DoubleType
	case "bool":
		return cel.BoolType
	}
	return cel.StringType
}

func labelCELType(t string) *cel.Type {
	switch t {
	case TypeBool:
		return cel.BoolType
	case TypeNumber:
		return cel.DoubleType
	}
	return cel.StringType
}

func outputFits(labelType string, t *cel.Type) bool {
	switch labelType {
	case TypeBool:
		return t == cel.BoolType
	case TypeNumber:
		return t == cel.DoubleType || t == cel.IntType
	}
	return t == cel.StringType
}

// topo orders labels so every label follows the labels it reads, and
// reports a cycle naming its labels.
func (c *Catalog) topo(labels []*Label) ([]*Label, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []*Label
	var visit func(l *Label, path []string) error
	visit = func(l *Label, path []string) error {
		switch state[l.ID] {
		case done:
			return nil
		case visiting:
			i := slices.Index(path, l.ID)
			return &CatalogError{Entry: "label " + l.ID, Err: fmt.Errorf("cycle: %s", strings.Join(append(path[i:], l.ID), " → "))}
		}
		state[l.ID] = visiting
		for _, in := range l.Inputs {
			if dep := c.byID[in]; dep != nil {
				if err := visit(dep, append(path, l.ID)); err != nil {
					return err
				}
			}
		}
		state[l.ID] = done
		order = append(order, l)
		return nil
	}
	for _, l := range labels {
		if err := visit(l, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func (c *Catalog) buildDirty() {
	c.dirty = map[string]map[string]bool{}
	kinds := append(slices.Clone(allKinds), "attributes")
	for _, k := range kinds {
		set := map[string]bool{}
		for _, l := range c.Labels { // evaluation order: inputs first
			for _, in := range l.Inputs {
				if f, ok := c.features[in]; ok && slices.Contains(f.Sources, k) {
					set[l.ID] = true
				}
				if set[in] {
					set[l.ID] = true
				}
			}
		}
		c.dirty[k] = set
	}
}

// Dirty returns the labels an event of kind can change (without the clock
// moving past a window boundary, which the caller handles by evaluating
// everything).
func (c *Catalog) Dirty(kind string) map[string]bool { return c.dirty[kind] }

// FilterKey identifies the purchase filters' definitions: a purchase's
// cached filter results are reused only under the same key.
func (c *Catalog) FilterKey() string { return c.filterKey }

// Label returns a label by id.
func (c *Catalog) Label(id string) *Label { return c.byID[id] }

// Features lists every feature, built-in and from filters, by id.
func (c *Catalog) Features() []Feature {
	out := make([]Feature, 0, len(c.features))
	for _, f := range c.features {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// activation resolves features, then labels computed so far.
type activation struct {
	features map[string]any
	labels   map[string]any
}

func (a *activation) ResolveName(name string) (any, bool) {
	if v, ok := a.features[name]; ok {
		return v, true
	}
	v, ok := a.labels[name]
	return v, ok
}

func (a *activation) Parent() interpreter.Activation { return nil }

// eval computes one label; ok is false when it is absent (an input is
// absent or the expression fails on these inputs).
func (l *Label) eval(act *activation) (any, bool) {
	out, _, err := l.program.Eval(act)
	if err != nil || types.IsUnknownOrError(out) {
		return nil, false
	}
	return l.convert(out)
}

func (l *Label) convert(out ref.Val) (any, bool) {
	switch l.Type {
	case TypeBool:
		b, ok := out.Value().(bool)
		return b, ok
	case TypeNumber:
		switch v := out.Value().(type) {
		case float64:
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, false
			}
			return v, true
		case int64:
			return float64(v), true
		}
		return nil, false
	default:
		s, ok := out.Value().(string)
		if !ok || !slices.Contains(l.Values, s) {
			return nil, false
		}
		return s, true
	}
}

// Evaluate computes labels from features. With only set, labels outside it
// keep their value in prev; withhold leaves behavioural labels absent.
func (c *Catalog) Evaluate(features map[string]any, only map[string]bool, prev map[string]any, withhold bool) map[string]any {
	out := make(map[string]any, len(c.Labels))
	act := &activation{features: features, labels: out}
	for _, l := range c.Labels {
		if withhold && l.IsBehavioural() {
			continue
		}
		if only != nil && !only[l.ID] {
			if v, ok := prev[l.ID]; ok {
				out[l.ID] = v
			}
			continue
		}
		if v, ok := l.eval(act); ok {
			out[l.ID] = v
		}
	}
	return out
}

// checkExample evaluates a label on its example: given features and labels,
// with the labels it reads that are not given computed from the features.
func (c *Catalog) checkExample(l *Label, ex Example) error {
	feats := map[string]any{}
	given := map[string]any{}
	for k, v := range ex.Given {
		if f, ok := c.features[k]; ok {
			cv, err := coerce(f.Type, v)
			if err != nil {
				return fmt.Errorf("given %s: %w", k, err)
			}
			feats[k] = cv
			continue
		}
		if dl := c.byID[k]; dl != nil {
			cv, err := coerceLabel(dl, v)
			if err != nil {
				return fmt.Errorf("given %s: %w", k, err)
			}
			given[k] = cv
			continue
		}
		return fmt.Errorf("given %s: no such feature or label", k)
	}
	// Compute the labels l depends on, in order, unless given.
	need := map[string]bool{}
	var mark func(id string)
	mark = func(id string) {
		for _, in := range c.byID[id].Inputs {
			if c.byID[in] != nil && !need[in] {
				need[in] = true
				mark(in)
			}
		}
	}
	mark(l.ID)
	labels := map[string]any{}
	act := &activation{features: feats, labels: labels}
	for _, dl := range c.Labels {
		if dl == l {
			break
		}
		if v, ok := given[dl.ID]; ok {
			labels[dl.ID] = v
			continue
		}
		if need[dl.ID] {
			if v, ok := dl.eval(act); ok {
				labels[dl.ID] = v
			}
		}
	}
	got, ok := l.eval(act)
	if ex.Expect == nil {
		if ok {
			return fmt.Errorf("expected absent, got %v", got)
		}
		return nil
	}
	want, err := coerceLabel(l, ex.Expect)
	if err != nil {
		return fmt.Errorf("expect: %w", err)
	}
	if !ok {
		return fmt.Errorf("expected %v, got absent", want)
	}
	if !equalValue(got, want) {
		return fmt.Errorf("expected %v, got %v", want, got)
	}
	return nil
}

func equalValue(a, b any) bool {
	if x, ok := a.(float64); ok {
		if y, ok := b.(float64); ok {
			return math.Abs(x-y) <= 1e-6*math.Max(1, math.Abs(y))
		}
	}
	return a == b
}

func coerce(typ string, v any) (any, error) {
	switch typ {
	case "int":
		switch x := v.(type) {
		case int:
			return int64(x), nil
		case int64:
			return x, nil
		case float64:
			if x == math.Trunc(x) {
				return int64(x), nil
			}
		}
		return nil, fmt.Errorf("%v is not an integer", v)
	case "double":
		switch x := v.(type) {
		case int:
			return float64(x), nil
		case int64:
			return float64(x), nil
		case float64:
			return x, nil
		}
		return nil, fmt.Errorf("%v is not a number", v)
	case "bool":
		if b, ok := v.(bool); ok {
			return b, nil
		}
		return nil, fmt.Errorf("%v is not true or false", v)
	default:
		if s, ok := v.(string); ok {
			return s, nil
		}
		return nil, fmt.Errorf("%v is not a string", v)
	}
}

func coerceLabel(l *Label, v any) (any, error) {
	switch l.Type {
	case TypeBool:
		return coerce("bool", v)
	case TypeNumber:
		return coerce("double", v)
	}
	s, err := coerce("string", v)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(l.Values, s.(string)) {
		return nil, fmt.Errorf("%q is not one of %s", s, strings.Join(l.Values, ", "))
	}
	return s, nil
}

// SortedLabels returns the labels in id order.
func (c *Catalog) SortedLabels() []*Label {
	out := slices.Clone(c.Labels)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
