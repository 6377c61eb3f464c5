package segment_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

var catalogue = []segment.Label{
	{ID: "vip", Type: "bool"},
	{ID: "app_user", Type: "bool"},
	{ID: "spend_30d", Type: "number"},
	{ID: "orders_90d", Type: "number"},
	{ID: "lifecycle_stage", Type: "enum", Values: []string{"potential", "new", "first_experience", "growing",
		"deeply_engaged", "loyal", "at_risk", "dormant", "lost", "win_back"}},
	{ID: "rfm_segment", Type: "enum", Values: []string{"champions", "loyal", "at_risk", "hibernating"}},
	{ID: "store_name", Type: "enum"}, // no fixed values: any string
	{ID: "and", Type: "bool"},        // a SQL keyword as a label id
}

func TestCompileValid(t *testing.T) {
	for _, tc := range []struct {
		expr, where string
		labels      []string
	}{
		{`vip`, "(isNotNull(`vip`) AND assumeNotNull(`vip`) = 1)", []string{"vip"}},
		{`!vip`, "(isNotNull(`vip`) AND assumeNotNull(`vip`) = 0)", []string{"vip"}},
		{`vip == false`, "(isNotNull(`vip`) AND assumeNotNull(`vip`) = 0)", []string{"vip"}},
		{`true`, "1", []string{}},
		{`!true || false`, "(0 OR 0)", []string{}},
		{`spend_30d >= 100`, "(isNotNull(`spend_30d`) AND assumeNotNull(`spend_30d`) >= 100.0)", []string{"spend_30d"}},
		{`100 < spend_30d`, "(isNotNull(`spend_30d`) AND 100.0 < assumeNotNull(`spend_30d`))", []string{"spend_30d"}},
		{`spend_30d > 1u`, "(isNotNull(`spend_30d`) AND assumeNotNull(`spend_30d`) > 1.0)", []string{"spend_30d"}},
		{`spend_30d != -2.5e-3`, "(isNotNull(`spend_30d`) AND assumeNotNull(`spend_30d`) != -0.0025)", []string{"spend_30d"}},
		// ! flips the comparison, and still needs the label present.
		{`!(spend_30d < 10)`, "(isNotNull(`spend_30d`) AND assumeNotNull(`spend_30d`) >= 10.0)", []string{"spend_30d"}},
		{`!(lifecycle_stage == "loyal")`, "(isNotNull(`lifecycle_stage`) AND assumeNotNull(`lifecycle_stage`) != 'loyal')", []string{"lifecycle_stage"}},
		// De Morgan: ! over && is || of the negations.
		{`!(vip && spend_30d > 5)`,
			"((isNotNull(`vip`) AND assumeNotNull(`vip`) = 0) OR (isNotNull(`spend_30d`) AND assumeNotNull(`spend_30d`) <= 5.0))",
			[]string{"spend_30d", "vip"}},
		{`lifecycle_stage in ["loyal", "growing"] && rfm_segment != "hibernating"`,
			"((isNotNull(`lifecycle_stage`) AND assumeNotNull(`lifecycle_stage`) IN ('loyal', 'growing')) AND " +
				"(isNotNull(`rfm_segment`) AND assumeNotNull(`rfm_segment`) != 'hibernating'))",
			[]string{"lifecycle_stage", "rfm_segment"}},
		{`!(orders_90d in [1, 2.5])`, "(isNotNull(`orders_90d`) AND assumeNotNull(`orders_90d`) NOT IN (1.0, 2.5))", []string{"orders_90d"}},
		{`lifecycle_stage in []`, "0", []string{"lifecycle_stage"}},
		{`!(lifecycle_stage in [])`, "isNotNull(`lifecycle_stage`)", []string{"lifecycle_stage"}},
		{`present(spend_30d) && !present(lifecycle_stage)`, "(isNotNull(`spend_30d`) AND isNull(`lifecycle_stage`))", []string{"lifecycle_stage", "spend_30d"}},
		{`spend_30d > orders_90d`, "(isNotNull(`spend_30d`) AND isNotNull(`orders_90d`) AND assumeNotNull(`spend_30d`) > assumeNotNull(`orders_90d`))",
			[]string{"orders_90d", "spend_30d"}},
		{`vip == app_user`, "(isNotNull(`vip`) AND isNotNull(`app_user`) AND assumeNotNull(`vip`) = assumeNotNull(`app_user`))", []string{"app_user", "vip"}},
		{`lifecycle_stage != rfm_segment`, "(isNotNull(`lifecycle_stage`) AND isNotNull(`rfm_segment`) AND assumeNotNull(`lifecycle_stage`) != assumeNotNull(`rfm_segment`))",
			[]string{"lifecycle_stage", "rfm_segment"}},
		{`and || vip`, "((isNotNull(`and`) AND assumeNotNull(`and`) = 1) OR (isNotNull(`vip`) AND assumeNotNull(`vip`) = 1))", []string{"and", "vip"}},
		{"vip\n  && (spend_30d > 1\n       || app_user)",
			"((isNotNull(`vip`) AND assumeNotNull(`vip`) = 1) AND ((isNotNull(`spend_30d`) AND assumeNotNull(`spend_30d`) > 1.0) OR (isNotNull(`app_user`) AND assumeNotNull(`app_user`) = 1)))",
			[]string{"app_user", "spend_30d", "vip"}},
		// Any string for an enum without values, escaped.
		{`store_name == "O'Brien \\ Sons"`, `(isNotNull(` + "`store_name`" + `) AND assumeNotNull(` + "`store_name`" + `) = 'O\'Brien \\ Sons')`, []string{"store_name"}},
		{`store_name == "a\nb\x00"`, `(isNotNull(` + "`store_name`" + `) AND assumeNotNull(` + "`store_name`" + `) = 'a\x0Ab\x00')`, []string{"store_name"}},
	} {
		q, err := segment.Compile(tc.expr, catalogue)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if q.Where != tc.where {
			t.Errorf("%s:\n got %s\nwant %s", tc.expr, q.Where, tc.where)
		}
		if strings.Join(q.Labels, ",") != strings.Join(tc.labels, ",") {
			t.Errorf("%s: labels %v, want %v", tc.expr, q.Labels, tc.labels)
		}
		if q.Expr != tc.expr {
			t.Errorf("%s: Expr %q", tc.expr, q.Expr)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		expr         string
		line, column int
		label        string
		msg          string
	}{
		{`lifecycle_stage == "loyal" && spend_30dd > 1`, 1, 31, "spend_30dd", `unknown label "spend_30dd" (did you mean "spend_30d"?)`},
		{`zzz_nothing_like_it`, 1, 1, "zzz_nothing_like_it", `unknown label "zzz_nothing_like_it"`},
		{"vip &&\n   spend_3 > 1", 2, 4, "spend_3", `unknown label "spend_3" (did you mean "spend_30d"?)`},
		{`present(vipp)`, 1, 9, "vipp", `unknown label "vipp" (did you mean "vip"?)`},
		{`lifecycle_stage == "loyl"`, 1, 20, "lifecycle_stage",
			`label "lifecycle_stage" has no value "loyl" (did you mean "loyal"?); allowed: "potential", "new", "first_experience", "growing", "deeply_engaged", "loyal", "at_risk", "dormant", "lost", "win_back"`},
		{`rfm_segment in ["champions", "vip"]`, 1, 30, "rfm_segment", `label "rfm_segment" has no value "vip"; allowed: "champions", "loyal", "at_risk", "hibernating"`},
		{`spend_30d == "high"`, 1, 14, "spend_30d", `label "spend_30d" is number: it cannot be compared with string "high"`},
		{`vip == 1`, 1, 8, "vip", `label "vip" is bool: it cannot be compared with number 1`},
		{`rfm_segment == 3`, 1, 16, "rfm_segment", `label "rfm_segment" is enum: it cannot be compared with number 3`},
		{`spend_30d == vip`, 1, 14, "spend_30d", `label "spend_30d" is number: it cannot be compared with label "vip" (bool)`},
		{`spend_30d in ["a"]`, 1, 15, "spend_30d", `label "spend_30d" is number: it cannot be compared with string "a"`},
		{`spend_30d`, 1, 1, "spend_30d", `label "spend_30d" is number, not bool`},
		{`vip && lifecycle_stage`, 1, 8, "lifecycle_stage", `label "lifecycle_stage" is enum, not bool`},
		{`lifecycle_stage < "loyal"`, 1, 17, "lifecycle_stage", `only == and != (and in) apply to it, not <`},
		{`vip > false`, 1, 5, "vip", `label "vip" is bool: only == and != (and in) apply to it, not >`},
		{`vip in [true]`, 1, 5, "vip", `label "vip" is bool: compare it with == true or == false instead of in`},
		{`spend_30d in orders_90d`, 1, 14, "spend_30d", `the right of in must be a list of values`},
		{`"loyal" in lifecycle_stage`, 1, 1, "", `the left of in must be a label id`},
		{`spend_30d in [orders_90d]`, 1, 15, "spend_30d", `the list after in holds literal values, not labels`},
		{`1 < 2`, 1, 3, "", `comparison 1 < 2 uses no label`},
		{`spend_30d + 1 > 2`, 1, 11, "", `operator + is not supported`},
		{`-spend_30d < 2`, 1, 1, "", `negation of a label is not supported`},
		{`size(lifecycle_stage) > 2`, 1, 5, "", `function size() is not supported (the only function is present(label))`},
		{`lifecycle_stage.startsWith("l")`, 1, 27, "", `method call .startsWith() is not supported`},
		{`rfm_segment.exists(x, x)`, 1, 19, "", `method call .exists() is not supported`},
		{`has(vip.x)`, 1, 4, "", `function has() is not supported`},
		{`vip.level == 1`, 1, 4, "", `field selection .level is not supported`},
		{`vip ? true : false`, 1, 5, "", `the conditional operator ?: is not supported`},
		{`["a"][0] == "a"`, 1, 6, "", `indexing with [] is not supported`},
		{`{"a": 1} == {"a": 1}`, 1, 1, "", `map and message literals are not supported`},
		{`spend_30d == null`, 1, 14, "", `null is not a value: test for an absent label with !present(label)`},
		{`store_name == b"x"`, 1, 15, "", `bytes literal is not supported`},
		{`present(1)`, 1, 8, "", `present() takes one label id`},
		{`"yes"`, 1, 1, "", `"yes" is not a condition`},
		{`vip &&`, 1, 7, "", `syntax error: mismatched input '<EOF>'`},
		{`vip && (app_user`, 1, 17, "", `syntax error`},
		{`lifecycle_stage = "loyal"`, 1, 17, "", `syntax error`},
		{`spend_30d > 1e400`, 1, 13, "", `invalid double literal`},
		{``, 1, 1, "", `expression is empty`},
		{"  \n ", 1, 1, "", `expression is empty`},
		{strings.Repeat("vip || ", 2000) + "vip", 1, 1, "", `at most 8192 are allowed`},
		{"vip == \"\xff\"", 1, 1, "", `not valid UTF-8`},
	} {
		_, err := segment.Compile(tc.expr, catalogue)
		var se *segment.Error
		if !errors.As(err, &se) {
			t.Errorf("%q: error %v is not a *segment.Error", tc.expr, err)
			continue
		}
		if se.Line != tc.line || se.Column != tc.column || se.Label != tc.label || !strings.Contains(se.Msg, tc.msg) {
			t.Errorf("%q:\n got %d:%d label %q: %s\nwant %d:%d label %q: …%s…", tc.expr, se.Line, se.Column, se.Label, se.Msg,
				tc.line, tc.column, tc.label, tc.msg)
		}
	}
}

func TestErrorString(t *testing.T) {
	_, err := segment.Compile(`spend_30d > 1 && spend_30dd < 5`, catalogue)
	want := `segment expression 1:18: unknown label "spend_30dd" (did you mean "spend_30d"?)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

func TestNewCompilerRefusesBadCatalogue(t *testing.T) {
	for _, labels := range [][]segment.Label{
		{{ID: "Spend", Type: "number"}},
		{{ID: "x", Type: "string"}},
		{{ID: "x", Type: "bool"}, {ID: "x", Type: "bool"}},
		{{ID: "x; DROP TABLE member_profiles", Type: "bool"}},
	} {
		if _, err := segment.NewCompiler(labels); err == nil {
			t.Errorf("NewCompiler(%v) accepted", labels)
		}
	}
}

// FuzzCompile: any input either compiles to a condition whose string
// literals are all closed, or fails with a positioned *Error; never panics.
func FuzzCompile(f *testing.F) {
	for _, s := range []string{`vip`, `!(lifecycle_stage == "loyal")`, `store_name == "x' OR 1=1 --"`, `spend_30d in [1, 2.5]`,
		`present(vip) || store_name in ["\\", "'"]`, `a.b(c)`, `"\u0000"`} {
		f.Add(s)
	}
	c, err := segment.NewCompiler(catalogue)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		q, err := c.Compile(expr)
		if err != nil {
			var se *segment.Error
			if !errors.As(err, &se) || se.Line < 1 || se.Column < 1 {
				t.Fatalf("%q: %v", expr, err)
			}
			return
		}
		if !literalsClosed(q.Where) {
			t.Fatalf("%q: unbalanced string literal in %s", expr, q.Where)
		}
	})
}

// literalsClosed reports whether every '…' literal in sql ends, reading
// backslash escapes the way ClickHouse does.
func literalsClosed(sql string) bool {
	in := false
	for i := 0; i < len(sql); i++ {
		switch {
		case in && sql[i] == '\\':
			i++
		case sql[i] == '\'':
			in = !in
		case in && (sql[i] < 0x20 || sql[i] == 0x7f):
			return false // control characters are always escaped
		}
	}
	return !in
}
