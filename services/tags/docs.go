package tags

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Markdown documents the catalogue: its features and filters, then every
// label by group with its definition and worked examples
// (docs/labels.md is generated from it; `membercenter tags docs`).
func (c *Catalog) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	esc := func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(strings.TrimSpace(s), "|", `\|`), "\n", " ")
	}
	p("# Label catalogue %s\n\n", c.Version)
	p("Generated from `services/tags/catalog.yaml` by `membercenter tags docs`; do not edit.\n\n")
	p("%d labels in %d groups, computed from %d features (time zone %s). A label is absent when an input it reads is absent\n", len(c.Labels), len(Groups), len(c.features), c.Timezone)
	p("(no purchase, no birth date, no basket lines, …): absent is never the same as false or zero. Behavioural labels\n")
	p("(every group but demographics unless marked) are withheld from members who withdrew profiling consent.\n\n")
	byGroup := map[string][]*Label{}
	for _, l := range c.SortedLabels() {
		byGroup[l.Group] = append(byGroup[l.Group], l)
	}
	p("| group | labels |\n|---|---|\n")
	for _, g := range Groups {
		p("| [%s](#%s) | %d |\n", g, g, len(byGroup[g]))
	}
	p("\n")
	for _, g := range Groups {
		p("## %s\n\n", g)
		for _, l := range byGroup[g] {
			p("### `%s` — %s / %s\n\n", l.ID, l.NameEN, l.NameZH)
			typ := l.Type
			if l.Type == TypeEnum {
				typ += ": " + strings.Join(l.Values, ", ")
			}
			beh := ""
			if !l.IsBehavioural() {
				beh = ", not behavioural"
			} else if l.Group == "demographics" {
				beh = ", behavioural"
			}
			p("%s (%s, %s%s)\n\n", esc(l.Description), typ, l.Kind, beh)
			p("```\n%s\n```\n\n", strings.TrimSpace(l.Expr))
			p("| given | value |\n|---|---|\n")
			for _, ex := range l.Examples {
				var parts []string
				for _, k := range slices.Sorted(maps.Keys(ex.Given)) {
					parts = append(parts, fmt.Sprintf("%s=%s", k, jsonText(ex.Given[k])))
				}
				given := strings.Join(parts, ", ")
				if given == "" {
					given = "(nothing)"
				}
				want := "absent"
				if ex.Expect != nil {
					want = jsonText(ex.Expect)
				}
				p("| %s | %s |\n", esc(given), esc(want))
			}
			p("\n")
		}
	}
	p("## Features\n\n| feature | type | meaning |\n|---|---|---|\n")
	for _, f := range c.Features() {
		p("| `%s` | %s | %s |\n", f.ID, f.Type, esc(f.Description))
	}
	p("\n## Purchase filters\n\nEach adds `<id>_orders_30d`, `<id>_orders_90d`, `<id>_orders_365d`, `<id>_spend_365d`, `<id>_share_90d` and `<id>_share_365d`.\n\n| filter | condition on one purchase `p` | meaning |\n|---|---|---|\n")
	for _, f := range c.Filters {
		p("| `%s` | `%s` | %s |\n", f.ID, esc(f.Expr), esc(f.Description))
	}
	return b.String()
}
