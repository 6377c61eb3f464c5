package segment_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// Strings that must survive as data and as literals: quotes, backslashes,
// SQL fragments, control characters.
var evilStrings = []string{
	`O'Brien`, `back\slash`, `x' OR 1=1 --`, `\'`, "tab\there", "nul\x00byte", `'; DROP TABLE member_profiles; --`, "新天地店", "",
}

// integrationLabels are the unit tests' catalogue and two more numbers.
var integrationLabels = append(slices.Clone(catalogue),
	segment.Label{ID: "churn_risk", Type: "number"}, segment.Label{ID: "rfm_r_score", Type: "number"})

func profileColumns(labels []segment.Label) []clickhouse.ProfileColumn {
	cols := make([]clickhouse.ProfileColumn, len(labels))
	for i, l := range labels {
		cols[i] = clickhouse.ProfileColumn{Name: l.ID, Type: l.Type}
	}
	return cols
}

func randomValue(r *rand.Rand, l segment.Label) any {
	switch l.Type {
	case "bool":
		return r.IntN(2) == 0
	case "number":
		return []float64{0, 1, 2, 2.5, 3, 5, 99.99, 100, -1}[r.IntN(9)]
	}
	if len(l.Values) > 0 {
		return l.Values[r.IntN(len(l.Values))]
	}
	return evilStrings[r.IntN(len(evilStrings))]
}

// seedProfiles writes 1..3 versions for each of n members in shuffled,
// separate batches, and returns each member's newest values.
func seedProfiles(t *testing.T, conn driver.Conn, r *rand.Rand, n int) map[string]map[string]any {
	t.Helper()
	cols := profileColumns(integrationLabels)
	current := map[string]map[string]any{}
	var rows []clickhouse.ProfileRow
	at := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		id := fmt.Sprintf("m%04d", i)
		versions := 1 + r.IntN(3)
		for v := 1; v <= versions; v++ {
			values := map[string]any{}
			for _, l := range integrationLabels {
				if r.IntN(4) > 0 { // a quarter absent
					values[l.ID] = randomValue(r, l)
				}
			}
			rows = append(rows, clickhouse.ProfileRow{MemberID: id, Version: uint64(v), UpdatedAt: at, Values: values})
			current[id] = values
		}
	}
	r.Shuffle(len(rows), func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
	w := clickhouse.NewWriter(conn)
	for start := 0; start < len(rows); start += 50 {
		if err := w.InsertProfiles(context.Background(), cols, rows[start:min(start+50, len(rows))]); err != nil {
			t.Fatal(err)
		}
	}
	return current
}

// oracle evaluates expressions with CEL itself, absent labels declared
// unknown: CEL's && and || absorb unknowns the way the segment rule says
// (false && unknown is false, true || unknown is true, !unknown is
// unknown), so a member matches exactly when the result is true.
type oracle struct{ env *cel.Env }

func newOracle(t *testing.T) oracle {
	opts := []cel.EnvOption{cel.ClearMacros()}
	for _, l := range integrationLabels {
		opts = append(opts, cel.Variable(l.ID, cel.DynType))
	}
	env, err := cel.NewEnv(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return oracle{env}
}

func (o oracle) matches(t *testing.T, expr string, profiles map[string]map[string]any) []string {
	t.Helper()
	parsed, iss := o.env.Parse(expr)
	if iss.Err() != nil {
		t.Fatalf("oracle parse %s: %v", expr, iss.Err())
	}
	prg, err := o.env.Program(parsed, cel.EvalOptions(cel.OptPartialEval))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for id, values := range profiles {
		var unknown []*cel.AttributePatternType
		for _, l := range integrationLabels {
			if _, ok := values[l.ID]; !ok {
				unknown = append(unknown, cel.AttributePattern(l.ID))
			}
		}
		act, err := cel.PartialVars(values, unknown...)
		if err != nil {
			t.Fatal(err)
		}
		v, _, err := prg.Eval(act)
		if err != nil {
			t.Fatalf("oracle eval %s on %v: %v", expr, values, err)
		}
		if v == types.True {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// randomExpr draws an expression of the language (without present(),
// which the oracle cannot evaluate; it has its own test).
func randomExpr(r *rand.Rand, depth int) string {
	if depth > 0 {
		switch r.IntN(6) {
		case 0:
			return "!(" + randomExpr(r, depth-1) + ")"
		case 1:
			return "(" + randomExpr(r, depth-1) + " && " + randomExpr(r, depth-1) + ")"
		case 2:
			return "(" + randomExpr(r, depth-1) + " || " + randomExpr(r, depth-1) + ")"
		}
	}
	l := integrationLabels[r.IntN(len(integrationLabels))]
	lit := func() string {
		switch v := randomValue(r, l).(type) {
		case bool:
			return strconv.FormatBool(v)
		case float64:
			if v == float64(int64(v)) && r.IntN(2) == 0 {
				return strconv.FormatInt(int64(v), 10) + ".0"
			}
			return strconv.FormatFloat(v, 'g', -1, 64)
		case string:
			return strconv.Quote(v)
		}
		panic("unreachable")
	}
	switch l.Type {
	case "bool":
		switch r.IntN(3) {
		case 0:
			return l.ID
		case 1:
			return l.ID + " == " + lit()
		}
		return l.ID + " != " + lit()
	case "number":
		if r.IntN(8) == 0 {
			return l.ID + " > spend_30d"
		}
		if r.IntN(5) == 0 {
			return l.ID + " in [" + lit() + ", " + lit() + "]"
		}
		return l.ID + " " + []string{"==", "!=", "<", "<=", ">", ">="}[r.IntN(6)] + " " + lit()
	}
	if r.IntN(3) == 0 {
		return l.ID + " in [" + lit() + ", " + lit() + "]"
	}
	return l.ID + " " + []string{"==", "!="}[r.IntN(2)] + " " + lit()
}

func export(t *testing.T, conn driver.Conn, q *segment.Query, batch int) []string {
	t.Helper()
	var ids []string
	var sizes []int
	if err := segment.Export(context.Background(), conn, q, batch, func(b []string) error {
		sizes = append(sizes, len(b))
		ids = append(ids, b...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, s := range sizes {
		if s == 0 || s > batch || (i < len(sizes)-1 && s != batch) {
			t.Fatalf("%s: batch sizes %v with batch %d", q.Expr, sizes, batch)
		}
	}
	return ids
}

func TestCountAndExportMatchTheRule(t *testing.T) {
	ctx := context.Background()
	conn := chtest.NewProfilesDB(t, profileColumns(integrationLabels))
	r := rand.New(rand.NewPCG(7, 8))
	profiles := seedProfiles(t, conn, r, 400)
	c, err := segment.NewCompiler(integrationLabels)
	if err != nil {
		t.Fatal(err)
	}
	o := newOracle(t)

	check := func(expr string) int {
		t.Helper()
		q, err := c.Compile(expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		want := o.matches(t, expr, profiles)
		n, err := segment.Count(ctx, conn, q)
		if err != nil {
			t.Fatal(err)
		}
		if n != uint64(len(want)) {
			t.Fatalf("%s\nSQL %s\ncount %d, want %d", expr, q.Where, n, len(want))
		}
		if got := export(t, conn, q, 7); !slices.Equal(got, want) {
			t.Fatalf("%s\nSQL %s\nexport %v\nwant   %v", expr, q.Where, got, want)
		}
		return len(want)
	}

	// Hand-picked: negations over absent labels, De Morgan, evil strings.
	for _, expr := range []string{
		`lifecycle_stage == "loyal"`,
		`!(lifecycle_stage == "loyal")`,
		`lifecycle_stage != "loyal"`,
		`!vip`,
		`!(vip && spend_30d > 2)`,
		`!(vip || spend_30d > 2)`,
		`!!(rfm_segment in ["champions", "loyal"])`,
		`!(churn_risk < 2.5) && app_user == false`,
		`spend_30d >= 3 || and`,
		`store_name == "x' OR 1=1 --" || store_name == "O'Brien"`,
		`store_name in ["back\\slash", "\\'", "nul\x00byte", "tab\there", "新天地店", ""]`,
		`!(store_name == "'; DROP TABLE member_profiles; --")`,
		`rfm_r_score > spend_30d`,
		`true`,
		`!true`,
	} {
		check(expr)
	}

	// Random expressions against the oracle; the fixture must make them
	// discriminate (not all empty or all full).
	nonTrivial := 0
	for range 150 {
		if n := check(randomExpr(r, 3)); n > 0 && n < len(profiles) {
			nonTrivial++
		}
	}
	if nonTrivial < 75 {
		t.Fatalf("only %d of 150 random expressions split the members", nonTrivial)
	}

	// present() and its negation partition the members.
	for _, l := range integrationLabels {
		var has []string
		for id, v := range profiles {
			if _, ok := v[l.ID]; ok {
				has = append(has, id)
			}
		}
		sort.Strings(has)
		q, err := c.Compile("present(" + l.ID + ")")
		if err != nil {
			t.Fatal(err)
		}
		if got := export(t, conn, q, 1000); !slices.Equal(got, has) {
			t.Fatalf("present(%s): %d members, want %d", l.ID, len(got), len(has))
		}
		q, err = c.Compile("!present(" + l.ID + ")")
		if err != nil {
			t.Fatal(err)
		}
		n, err := segment.Count(ctx, conn, q)
		if err != nil {
			t.Fatal(err)
		}
		if n != uint64(len(profiles)-len(has)) {
			t.Fatalf("!present(%s): %d, want %d", l.ID, n, len(profiles)-len(has))
		}
	}

	// The same catalogue's views see the same data.
	var distinct uint64
	if err := conn.QueryRow(ctx, "SELECT sum(members) FROM label_distribution WHERE label_id = 'store_name' AND value = 'x'' OR 1=1 --'").Scan(&distinct); err != nil {
		t.Fatal(err)
	}
	q, _ := c.Compile(`store_name == "x' OR 1=1 --"`)
	if n, _ := segment.Count(ctx, conn, q); n != distinct {
		t.Fatalf("label_distribution says %d, Count says %d", distinct, n)
	}
}

func TestExportStopsOnCallbackError(t *testing.T) {
	ctx := context.Background()
	conn := chtest.NewProfilesDB(t, profileColumns(integrationLabels))
	seedProfiles(t, conn, rand.New(rand.NewPCG(1, 1)), 100)
	q, err := segment.Compile(`true`, integrationLabels)
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	calls := 0
	err = segment.Export(ctx, conn, q, 10, func([]string) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
	// The connection pool is still usable after the cancelled query.
	if n, err := segment.Count(ctx, conn, q); err != nil || n != 100 {
		t.Fatalf("count after stop: %d, %v", n, err)
	}
}

func TestQueryErrorsNameTheExpression(t *testing.T) {
	ctx := context.Background()
	// A catalogue label that member_profiles has no column for (EnsureProfiles
	// not run with it) fails in ClickHouse, with the expression named.
	conn := chtest.NewProfilesDB(t, nil)
	q, err := segment.Compile(`vip`, []segment.Label{{ID: "vip", Type: "bool"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := segment.Count(ctx, conn, q); err == nil || !strings.Contains(err.Error(), `segment count "vip"`) {
		t.Fatalf("count: %v", err)
	}
	if err := segment.Export(ctx, conn, q, 0, func([]string) error { return nil }); err == nil || !strings.Contains(err.Error(), `segment export "vip"`) {
		t.Fatalf("export: %v", err)
	}
	if _, err := segment.Count(ctx, conn, nil); err == nil {
		t.Fatal("count of nil query")
	}
}

// TestLiteralsRoundTrip asks ClickHouse to read back every string literal
// the compiler renders: the value must arrive unchanged.
func TestLiteralsRoundTrip(t *testing.T) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(t)
	var all []rune
	for c := rune(0); c < 0x250; c++ {
		all = append(all, c)
	}
	for _, s := range append(evilStrings, string(all), "\u2028\u2029\U0001F600", `\x41`, `\\\'`) {
		q, err := segment.Compile(`store_name == `+strconv.Quote(s), []segment.Label{{ID: "store_name", Type: "enum"}})
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		// The condition's literal is everything after "= " up to the final ")".
		lit := q.Where[strings.Index(q.Where, "= ")+2 : len(q.Where)-1]
		var got string
		if err := conn.QueryRow(ctx, "SELECT "+lit).Scan(&got); err != nil {
			t.Fatalf("%q as %s: %v", s, lit, err)
		}
		if got != s {
			t.Fatalf("%q came back as %q (literal %s)", s, got, lit)
		}
	}
}

// TestNumberLiteralsRoundTrip asks ClickHouse to read back every number
// literal the compiler renders, and to count with it: the value must
// arrive bit for bit. A subnormal one (5e-324) is no literal ClickHouse
// parses: a segment comparing with one answered Internal (a probe).
func TestNumberLiteralsRoundTrip(t *testing.T) {
	ctx := context.Background()
	labels := []segment.Label{{ID: "churn_risk", Type: "number"}}
	conn := chtest.NewProfilesDB(t, profileColumns(labels))
	for _, f := range []float64{0, 1, -1, 0.1, 1e-310, -1e-310, math.SmallestNonzeroFloat64, -math.SmallestNonzeroFloat64,
		0x1p-1022 - 0x1p-1074, 0x1p-1022, 2.5e-308, math.MaxFloat64, -math.MaxFloat64, 123456789.125} {
		src := strconv.FormatFloat(f, 'g', -1, 64)
		if !strings.ContainsAny(src, ".eE") {
			src += ".0"
		}
		q, err := segment.Compile(`churn_risk > `+src, labels)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if _, err := segment.Count(ctx, conn, q); err != nil {
			t.Errorf("%s compiled to %s, which ClickHouse refuses: %v", src, q.Where, err)
			continue
		}
		// The condition's literal is everything after "> " up to the final ")".
		lit := q.Where[strings.Index(q.Where, "> ")+2 : len(q.Where)-1]
		var got float64
		if err := conn.QueryRow(ctx, "SELECT toFloat64("+lit+")").Scan(&got); err != nil {
			t.Fatalf("%s as %s: %v", src, lit, err)
		}
		if math.Float64bits(got) != math.Float64bits(f) {
			t.Errorf("%s came back as %g (literal %s)", src, got, lit)
		}
	}
	// In a list too.
	q, err := segment.Compile(`churn_risk in [5e-324, -1e-310, 1.0]`, labels)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := segment.Count(ctx, conn, q); err != nil {
		t.Errorf("a list of subnormal numbers compiled to %s, which ClickHouse refuses: %v", q.Where, err)
	}
}

// TestSegmentsAheadOfTheProfilesTable: before the tag stage has made
// member_profiles no member has a profile (a count of 0, an empty export);
// a label whose column the exporter has not added yet (a catalogue just
// loaded) is ErrLabelsBehind, which the API answers Unavailable, not
// Internal.
func TestSegmentsAheadOfTheProfilesTable(t *testing.T) {
	ctx := context.Background()
	labels := []segment.Label{{ID: "churn_risk", Type: "number"}, {ID: "brand_new", Type: "bool"}}
	q, err := segment.Compile(`churn_risk > 0.5 || brand_new`, labels)
	if err != nil {
		t.Fatal(err)
	}
	none, _ := chtest.NewDB(t)
	if n, err := segment.Count(ctx, none, q); err != nil || n != 0 {
		t.Errorf("count without member_profiles: %d, %v; want 0", n, err)
	}
	if err := segment.Export(ctx, none, q, 0, func(ids []string) error {
		t.Errorf("export without member_profiles sent %v", ids)
		return nil
	}); err != nil {
		t.Errorf("export without member_profiles: %v", err)
	}
	// A database that is not the platform's (a wrong one configured) is
	// no platform without profiles: its error stands.
	if err := none.Exec(ctx, "DROP TABLE member_events"); err != nil {
		t.Fatal(err)
	}
	if _, err := segment.Count(ctx, none, q); err == nil {
		t.Error("count in a database without the platform's tables: no error")
	}
	behind := chtest.NewProfilesDB(t, profileColumns(labels[:1]))
	if _, err := segment.Count(ctx, behind, q); !errors.Is(err, segment.ErrLabelsBehind) {
		t.Errorf("count naming a label without a column: %v; want ErrLabelsBehind", err)
	}
	if err := segment.Export(ctx, behind, q, 0, func([]string) error { return nil }); !errors.Is(err, segment.ErrLabelsBehind) {
		t.Errorf("export naming a label without a column: %v; want ErrLabelsBehind", err)
	}
}
