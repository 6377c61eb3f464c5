package segment_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"testing"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// docLabels are the catalogue labels docs/analytics.md's examples use, with
// their types and values as services/tags/catalog.yaml defines them.
var docLabels = []segment.Label{
	{ID: "lifecycle_stage", Type: "enum", Values: clickhouse.LifecycleStages},
	{ID: "spend_band_90d", Type: "enum", Values: []string{"none", "low", "mid", "high", "top"}},
	{ID: "rfm_segment", Type: "enum", Values: []string{"champions", "loyal_customers", "potential_loyalists", "new_customers",
		"promising", "need_attention", "about_to_sleep", "at_risk", "cannot_lose_them", "hibernating", "lost"}},
	{ID: "preferred_channel", Type: "enum", Values: []string{"pos", "app", "miniprogram", "web", "other"}},
	{ID: "age_band", Type: "enum", Values: []string{"under_18", "18_24", "25_34", "35_44", "45_54", "55_64", "65_plus"}},
	{ID: "city_tier", Type: "enum", Values: []string{"tier1", "new_tier1", "tier2", "tier3_plus"}},
	{ID: "affinity_coffee", Type: "bool"},
	{ID: "weekend_shopper", Type: "bool"},
	{ID: "churn_risk_high", Type: "bool"},
	{ID: "high_ltv", Type: "bool"},
	{ID: "churn_risk", Type: "number"},
	{ID: "ltv_365d", Type: "number"},
	{ID: "rfm_m_score", Type: "number"},
}

// TestAnalyticsDocSegments compiles and counts every segment expression of
// docs/analytics.md, and checks its error example word for word.
func TestAnalyticsDocSegments(t *testing.T) {
	ctx := context.Background()
	raw, err := os.ReadFile("../../../docs/analytics.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	var exprs []string
	for _, m := range regexp.MustCompile("(?s)```segment\n(.*?)```").FindAllStringSubmatch(doc, -1) {
		exprs = append(exprs, m[1])
	}
	for _, m := range regexp.MustCompile(`membercenter segment (?:count|export) --purpose [a-z-]+ (?:--sql )?'([^']*)'`).FindAllStringSubmatch(doc, -1) {
		exprs = append(exprs, m[1])
	}
	if len(exprs) < 8 {
		t.Fatalf("only %d segment examples in docs/analytics.md", len(exprs))
	}
	conn := chtest.NewProfilesDB(t, profileColumns(docLabels))
	r := rand.New(rand.NewPCG(9, 9))
	var rows []clickhouse.ProfileRow
	for i := range 300 {
		values := map[string]any{}
		for _, l := range docLabels {
			if r.IntN(5) > 0 {
				values[l.ID] = randomValue(r, l)
			}
		}
		if v, ok := values["ltv_365d"].(float64); ok {
			values["ltv_365d"] = v * 20
		}
		rows = append(rows, clickhouse.ProfileRow{MemberID: fmt.Sprintf("d%04d", i), Version: 1, Values: values})
	}
	if err := clickhouse.NewWriter(conn).InsertProfiles(ctx, profileColumns(docLabels), rows); err != nil {
		t.Fatal(err)
	}
	c, err := segment.NewCompiler(docLabels)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exprs {
		q, err := c.Compile(e)
		if err != nil {
			t.Errorf("%s: %v", e, err)
			continue
		}
		if _, err := segment.Count(ctx, conn, q); err != nil {
			t.Errorf("%s: %v", e, err)
		}
	}

	m := regexp.MustCompile("(?s)```\n(segment expression [^\n]*)\n```\n\nfor `([^`]*)`").FindStringSubmatch(doc)
	if m == nil {
		t.Fatal("docs/analytics.md has no error example")
	}
	_, err = c.Compile(m[2])
	if err == nil || err.Error() != m[1] {
		t.Fatalf("%s gives\n%v\nbut the documentation says\n%s", m[2], err, m[1])
	}
}
