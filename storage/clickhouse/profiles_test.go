package clickhouse_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

var testColumns = []clickhouse.ProfileColumn{
	{Name: "rfm_r_score", Type: "number"},
	{Name: "rfm_f_score", Type: "number"},
	{Name: "rfm_m_score", Type: "number"},
	{Name: "rfm_segment", Type: "enum"},
	{Name: "lifecycle_stage", Type: "enum"},
	{Name: "ltv_365d", Type: "number"},
	{Name: "churn_risk", Type: "number"},
	{Name: "vip", Type: "bool"},
	{Name: "select", Type: "bool"}, // a keyword as a label id must still work
	{Name: "channel_pref", Type: "enum"},
}

// randomProfiles gives n members, each with 1..3 versions written in
// shuffled order; the last element of each member's versions is the
// current one. About a fifth of the values are absent.
func randomProfiles(r *rand.Rand, n int) (all []clickhouse.ProfileRow, current map[string]clickhouse.ProfileRow) {
	current = map[string]clickhouse.ProfileRow{}
	at := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		id := fmt.Sprintf("m%04d", i)
		versions := 1 + r.IntN(3)
		for v := 1; v <= versions; v++ {
			row := clickhouse.ProfileRow{MemberID: id, Version: uint64(v * 10), UpdatedAt: at.Add(time.Duration(v) * time.Minute),
				CatalogVersion: "v" + strconv.Itoa(v), Values: map[string]any{}}
			for _, c := range testColumns {
				if r.IntN(5) == 0 {
					continue
				}
				switch c.Name {
				case "rfm_r_score", "rfm_f_score", "rfm_m_score":
					row.Values[c.Name] = float64(1 + r.IntN(5))
				case "rfm_segment":
					row.Values[c.Name] = []string{"champions", "loyal", "at_risk", "hibernating"}[r.IntN(4)]
				case "lifecycle_stage":
					row.Values[c.Name] = clickhouse.LifecycleStages[r.IntN(len(clickhouse.LifecycleStages)-2)]
				case "ltv_365d":
					row.Values[c.Name] = math.Round(r.Float64()*100000) / 100
				case "churn_risk":
					row.Values[c.Name] = math.Round(r.Float64()*100) / 100
				case "vip", "select":
					row.Values[c.Name] = r.IntN(2) == 0
				case "channel_pref":
					row.Values[c.Name] = []string{"pos", "app", "mini_program", "it's \\ odd"}[r.IntN(4)]
				}
			}
			all = append(all, row)
			current[id] = row
		}
	}
	r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all, current
}

// insertInParts writes rows in several batches so that the table has
// several unmerged parts and FINAL has work to do.
func insertInParts(t *testing.T, w *clickhouse.Writer, cols []clickhouse.ProfileColumn, rows []clickhouse.ProfileRow) {
	t.Helper()
	for start := 0; start < len(rows); start += 97 {
		end := min(start+97, len(rows))
		if err := w.InsertProfiles(context.Background(), cols, rows[start:end]); err != nil {
			t.Fatal(err)
		}
	}
}

func distributionValue(v any) string {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x)
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	panic(fmt.Sprintf("%T", v))
}

func TestProfilesAndViews(t *testing.T) {
	ctx := context.Background()
	conn := chtest.NewProfilesDB(t, testColumns)
	if err := clickhouse.EnsureProfiles(ctx, conn, testColumns); err != nil {
		t.Fatalf("second EnsureProfiles: %v", err)
	}
	// Every view's stored definition reads back (18.16 re-parses it at
	// start), keyword label ids included.
	for _, v := range clickhouse.ProfileViews {
		if err := conn.Exec(ctx, "SHOW CREATE TABLE "+v); err != nil {
			t.Fatalf("SHOW CREATE TABLE %s: %v", v, err)
		}
	}
	all, current := randomProfiles(rand.New(rand.NewPCG(1, 2)), 300)
	w := clickhouse.NewWriter(conn)
	insertInParts(t, w, testColumns, all)

	t.Run("current_profiles", func(t *testing.T) {
		var n uint64
		scanRow(t, ctx, conn, "SELECT count() FROM current_profiles", &n)
		if n != uint64(len(current)) {
			t.Fatalf("current_profiles has %d rows, want %d", n, len(current))
		}
		// The newest version of each member wins, absent values included.
		var id string
		var version uint64
		var pref *string
		var vip *uint8
		var ltv *float64
		eachRow(t, ctx, conn, []any{&id, &version, &pref, &vip, &ltv}, func() {
			want := current[id]
			if version != want.Version {
				t.Fatalf("%s: version %d, want %d", id, version, want.Version)
			}
			if p, ok := want.Values["channel_pref"]; ok != (pref != nil) || ok && p != *pref {
				t.Fatalf("%s: channel_pref %v, want %v", id, pref, p)
			}
			if b, ok := want.Values["vip"]; ok != (vip != nil) || ok && b.(bool) != (*vip == 1) {
				t.Fatalf("%s: vip %v, want %v", id, vip, b)
			}
			if l, ok := want.Values["ltv_365d"]; ok != (ltv != nil) || ok && l != *ltv {
				t.Fatalf("%s: ltv %v, want %v", id, ltv, l)
			}
		}, "SELECT member_id, version, `channel_pref`, `vip`, `ltv_365d` FROM current_profiles")
	})

	t.Run("label_distribution", func(t *testing.T) {
		want := map[string]uint64{}
		for _, p := range current {
			for _, c := range testColumns {
				v, ok := p.Values[c.Name]
				key := c.Name + "=<NULL>"
				if ok {
					key = c.Name + "=" + distributionValue(v)
				}
				want[key]++
			}
		}
		got := map[string]uint64{}
		var label string
		var value *string
		var n uint64
		eachRow(t, ctx, conn, []any{&label, &value, &n}, func() {
			key := label + "=<NULL>"
			if value != nil {
				key = label + "=" + *value
			}
			got[key] = n
		}, "SELECT label_id, value, members FROM label_distribution")
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("label_distribution\n got %v\nwant %v", got, want)
		}
	})

	t.Run("lifecycle_funnel", func(t *testing.T) {
		counts := map[string]uint64{}
		var staged uint64
		for _, p := range current {
			if s, ok := p.Values["lifecycle_stage"].(string); ok {
				counts[s]++
				staged++
			}
		}
		var stages []string
		var stage string
		var order uint8
		var n uint64
		var share *float64
		eachRow(t, ctx, conn, []any{&stage, &order, &n, &share}, func() {
			stages = append(stages, stage)
			if n != counts[stage] {
				t.Errorf("stage %s: %d members, want %d", stage, n, counts[stage])
			}
			if share == nil || math.Abs(*share-float64(counts[stage])/float64(staged)) > 1e-9 {
				t.Errorf("stage %s: share %v, want %v", stage, share, float64(counts[stage])/float64(staged))
			}
		}, "SELECT stage, stage_order, members, share FROM lifecycle_funnel ORDER BY stage_order")
		// Every stage of the model, in funnel order, even those nobody is in.
		if strings.Join(stages, ",") != strings.Join(clickhouse.LifecycleStages, ",") {
			t.Fatalf("stages %v", stages)
		}
	})

	t.Run("rfm_matrix", func(t *testing.T) {
		type cell struct {
			n            uint64
			mSum, ltvSum float64
			mN, ltvN     int
		}
		want := map[[2]float64]*cell{}
		for _, p := range current {
			r, okR := p.Values["rfm_r_score"].(float64)
			f, okF := p.Values["rfm_f_score"].(float64)
			if !okR || !okF {
				continue
			}
			c := want[[2]float64{r, f}]
			if c == nil {
				c = &cell{}
				want[[2]float64{r, f}] = c
			}
			c.n++
			if m, ok := p.Values["rfm_m_score"].(float64); ok {
				c.mSum += m
				c.mN++
			}
			if l, ok := p.Values["ltv_365d"].(float64); ok {
				c.ltvSum += l
				c.ltvN++
			}
		}
		seen := 0
		var r, f float64
		var n uint64
		var m, ltv *float64
		eachRow(t, ctx, conn, []any{&r, &f, &n, &m, &ltv}, func() {
			seen++
			c := want[[2]float64{r, f}]
			if c == nil || c.n != n {
				t.Fatalf("cell r=%v f=%v: %d members, want %+v", r, f, n, c)
			}
			if c.mN > 0 && (m == nil || math.Abs(*m-c.mSum/float64(c.mN)) > 1e-9) {
				t.Errorf("cell r=%v f=%v: avg m %v, want %v", r, f, m, c.mSum/float64(c.mN))
			}
			if c.ltvN > 0 && (ltv == nil || math.Abs(*ltv-c.ltvSum/float64(c.ltvN)) > 1e-6) {
				t.Errorf("cell r=%v f=%v: avg ltv %v, want %v", r, f, ltv, c.ltvSum/float64(c.ltvN))
			}
		}, "SELECT r_score, f_score, members, avg_m_score, avg_ltv_365d FROM rfm_matrix")
		if seen != len(want) {
			t.Fatalf("%d cells, want %d", seen, len(want))
		}
	})
}

func columnTypes(t *testing.T, conn driver.Conn) map[string]string {
	t.Helper()
	out := map[string]string{}
	var n, typ string
	eachRow(t, context.Background(), conn, []any{&n, &typ}, func() { out[n] = typ },
		"SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'member_profiles'")
	return out
}

func viewExists(t *testing.T, conn driver.Conn, name string) bool {
	t.Helper()
	var n uint64
	scanRow(t, context.Background(), conn,
		"SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = '"+name+"' AND engine = 'View'", &n)
	return n == 1
}

func TestEnsureProfilesEvolves(t *testing.T) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(t)
	w := clickhouse.NewWriter(conn)
	v1 := []clickhouse.ProfileColumn{{Name: "vip", Type: "bool"}, {Name: "spend_30d", Type: "number"}}
	if err := clickhouse.EnsureProfiles(ctx, conn, v1); err != nil {
		t.Fatal(err)
	}
	// Without the fixed labels the views that need them are not created.
	for _, v := range []string{"rfm_matrix", "lifecycle_funnel"} {
		if viewExists(t, conn, v) {
			t.Fatalf("%s created without its labels", v)
		}
	}
	for _, v := range []string{"current_profiles", "label_distribution", "daily_kpis"} {
		if !viewExists(t, conn, v) {
			t.Fatalf("%s missing", v)
		}
	}
	at := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	if err := w.InsertProfiles(ctx, v1, []clickhouse.ProfileRow{
		{MemberID: "a", Version: 1, UpdatedAt: at, Values: map[string]any{"vip": true, "spend_30d": 12.5}},
	}); err != nil {
		t.Fatal(err)
	}

	// v2 drops spend_30d and adds two labels, one of them a fixed one.
	v2 := []clickhouse.ProfileColumn{{Name: "vip", Type: "bool"}, {Name: "lifecycle_stage", Type: "enum"}, {Name: "orders_30d", Type: "number"}}
	if err := clickhouse.EnsureProfiles(ctx, conn, v2); err != nil {
		t.Fatal(err)
	}
	cols := columnTypes(t, conn)
	for name, typ := range map[string]string{"vip": "Nullable(UInt8)", "spend_30d": "Nullable(Float64)",
		"lifecycle_stage": "Nullable(String)", "orders_30d": "Nullable(Float64)"} {
		if cols[name] != typ {
			t.Errorf("column %s is %q, want %s", name, cols[name], typ)
		}
	}
	if !viewExists(t, conn, "lifecycle_funnel") {
		t.Fatal("lifecycle_funnel not created once lifecycle_stage exists")
	}
	if err := w.InsertProfiles(ctx, v2, []clickhouse.ProfileRow{
		{MemberID: "b", Version: 1, UpdatedAt: at, Values: map[string]any{"lifecycle_stage": "loyal", "orders_30d": 3}},
	}); err != nil {
		t.Fatal(err)
	}
	// label_distribution follows the catalogue: spend_30d is gone from it,
	// the new labels are there.
	labels := queryStrings(t, ctx, conn, "SELECT DISTINCT label_id FROM label_distribution ORDER BY label_id")
	if strings.Join(labels, ",") != "lifecycle_stage,orders_30d,vip" {
		t.Fatalf("label_distribution labels %v", labels)
	}
	// The retired column keeps member a's old value; b's row has NULL there.
	var spend *float64
	scanRow(t, ctx, conn, "SELECT spend_30d FROM current_profiles WHERE member_id = 'a'", &spend)
	if spend == nil || *spend != 12.5 {
		t.Fatalf("retired column lost its value: %v", spend)
	}
	scanRow(t, ctx, conn, "SELECT spend_30d FROM current_profiles WHERE member_id = 'b'", &spend)
	if spend != nil {
		t.Fatalf("b.spend_30d = %v, want NULL", *spend)
	}

	// A label that changes type under the same id is refused, naming it.
	err := clickhouse.EnsureProfiles(ctx, conn, []clickhouse.ProfileColumn{{Name: "vip", Type: "enum"}})
	if err == nil || !strings.Contains(err.Error(), `label "vip" is enum`) || !strings.Contains(err.Error(), "Nullable(UInt8)") {
		t.Fatalf("type change: %v", err)
	}
	// Invalid ids and types, reserved names, and keywords 18.16 cannot read
	// back from a view's stored definition.
	for _, bad := range [][]clickhouse.ProfileColumn{
		{{Name: "Bad-Id", Type: "bool"}},
		{{Name: "x", Type: "string"}},
		{{Name: "version", Type: "number"}},
		{{Name: "y", Type: "bool"}, {Name: "y", Type: "bool"}},
		{{Name: "not", Type: "bool"}},
		{{Name: "interval", Type: "number"}},
		{{Name: "distinct", Type: "enum"}},
	} {
		if err := clickhouse.EnsureProfiles(ctx, conn, bad); err == nil {
			t.Errorf("EnsureProfiles(%v) accepted", bad)
		}
	}
}

func TestInsertProfilesRefusesBadValues(t *testing.T) {
	ctx := context.Background()
	cols := []clickhouse.ProfileColumn{{Name: "vip", Type: "bool"}, {Name: "stage", Type: "enum"}, {Name: "spend", Type: "number"}}
	conn := chtest.NewProfilesDB(t, cols)
	w := clickhouse.NewWriter(conn)
	for _, tc := range []struct {
		values map[string]any
		want   string
	}{
		{map[string]any{"vip": "yes"}, `label "vip" is bool: want a Go bool, got string`},
		{map[string]any{"stage": 3}, `label "stage" is enum: want a Go string, got int`},
		{map[string]any{"spend": "12"}, `label "spend" is a number, got string`},
	} {
		err := w.InsertProfiles(ctx, cols, []clickhouse.ProfileRow{{MemberID: "m1", Version: 1, Values: tc.values}})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "m1") {
			t.Errorf("%v: got %v, want %q", tc.values, err, tc.want)
		}
	}
	// NaN and nil are stored as absent; ints are numbers; labels that are
	// not columns are ignored.
	if err := w.InsertProfiles(ctx, cols, []clickhouse.ProfileRow{
		{MemberID: "m1", Version: 1, Withheld: true, Values: map[string]any{"spend": math.NaN(), "vip": nil}},
		{MemberID: "m2", Version: 1, Values: map[string]any{"spend": 7, "retired_label": "ignored"}},
	}); err != nil {
		t.Fatal(err)
	}
	var absent, withheld uint64
	var sum float64
	scanRow(t, ctx, conn, "SELECT countIf(isNull(spend)), sum(ifNull(spend, 0)), sum(behavioural_withheld) FROM member_profiles FINAL",
		&absent, &sum, &withheld)
	if absent != 1 || sum != 7 || withheld != 1 {
		t.Fatalf("absent=%d sum=%v withheld=%d", absent, sum, withheld)
	}
}

// TestProfileColumnsAsValues: a row given as values in the columns' order
// is stored as the same row given by label id, and a row with as many
// values as there are not columns is refused, naming the member.
func TestProfileColumnsAsValues(t *testing.T) {
	ctx := context.Background()
	cols := []clickhouse.ProfileColumn{{Name: "vip", Type: "bool"}, {Name: "stage", Type: "enum"}, {Name: "spend", Type: "number"}}
	conn := chtest.NewProfilesDB(t, cols)
	w := clickhouse.NewWriter(conn)
	err := w.InsertProfiles(ctx, cols, []clickhouse.ProfileRow{{MemberID: "m9", Version: 1, Columns: []any{true, "gold"}}})
	if err == nil || !strings.Contains(err.Error(), "m9") || !strings.Contains(err.Error(), "2 label values for 3 columns") {
		t.Errorf("two values for three columns: %v", err)
	}
	if err := w.InsertProfiles(ctx, cols, []clickhouse.ProfileRow{
		{MemberID: "by-id", Version: 1, Values: map[string]any{"vip": true, "stage": "gold", "spend": 12.5}},
		{MemberID: "by-column", Version: 1, Columns: []any{true, "gold", 12.5}},
		{MemberID: "absent-by-id", Version: 1, Values: map[string]any{"stage": "silver"}},
		{MemberID: "absent-by-column", Version: 1, Columns: []any{nil, "silver", math.NaN()}},
	}); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	rs, err := conn.Query(ctx, `SELECT member_id, toString(vip), toString(stage), toString(spend) FROM member_profiles FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var m string
		var vip, stage, spend *string
		if err := rs.Scan(&m, &vip, &stage, &spend); err != nil {
			t.Fatal(err)
		}
		show := func(p *string) string {
			if p == nil {
				return "NULL"
			}
			return *p
		}
		got[m] = show(vip) + "," + show(stage) + "," + show(spend)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{"by-id", "by-column"}, {"absent-by-id", "absent-by-column"}} {
		if got[pair[0]] == "" || got[pair[0]] != got[pair[1]] {
			t.Errorf("%s reads %q, %s reads %q; want the same row", pair[0], got[pair[0]], pair[1], got[pair[1]])
		}
	}
	if got["by-column"] != "1,gold,12.5" || got["absent-by-column"] != "NULL,silver,NULL" {
		t.Errorf("rows %v", got)
	}
}

func TestInsertLabelChangesAndNewEventColumns(t *testing.T) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(t)
	w := clickhouse.NewWriter(conn)
	at := time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)
	lc := []clickhouse.LabelChangeRow{
		{MemberID: "m1", LabelID: "vip", Value: "true", Sequence: 7, ChangedAt: at, CauseID: "e1", CatalogVersion: "c1", InsertedAt: at},
		{MemberID: "m1", LabelID: "stage", Cleared: true, Sequence: 7, ChangedAt: at, CauseID: "e1", InsertedAt: at},
	}
	// Twice, as after a redelivery.
	for range 2 {
		if err := w.InsertLabelChanges(ctx, lc); err != nil {
			t.Fatal(err)
		}
	}
	var n, cleared uint64
	var values string
	scanRow(t, ctx, conn, "SELECT count(), sum(cleared), arrayStringConcat(groupArray(value), ',') FROM (SELECT * FROM label_changes FINAL ORDER BY label_id DESC)",
		&n, &cleared, &values)
	if n != 2 || cleared != 1 || values != "true," {
		t.Fatalf("n=%d cleared=%d values=%q", n, cleared, values)
	}

	if err := w.InsertEvents(ctx, []clickhouse.EventRow{
		{EventID: "e1", MemberID: "m1", EventType: "transaction", OccurredAt: at, IngestedAt: at, CouponCount: 2},
		{EventID: "e2", MemberID: "m1", OriginMemberID: "m0", EventType: "review", OccurredAt: at, IngestedAt: at, ReviewRating: 4},
	}); err != nil {
		t.Fatal(err)
	}
	var got []string
	var id, origin string
	var coupons uint16
	var rating uint8
	eachRow(t, ctx, conn, []any{&id, &origin, &coupons, &rating}, func() {
		got = append(got, fmt.Sprintf("%s/%s/%d/%d", id, origin, coupons, rating))
	}, "SELECT event_id, origin_member_id, coupon_count, review_rating FROM member_events FINAL ORDER BY event_id")
	if strings.Join(got, " ") != "e1/m1/2/0 e2/m0/0/4" {
		t.Fatalf("events %q", got)
	}
}

// kpiFixture is a random history of members, purchases, visits and points,
// all more than 40 days old so that every window of daily_kpis is closed.
type kpiFixture struct {
	created map[string]time.Time
	events  []clickhouse.EventRow
	changes []clickhouse.ChangeRow
	ltv     map[string]float64
}

func newKPIFixture(r *rand.Rand, now time.Time) kpiFixture {
	f := kpiFixture{created: map[string]time.Time{}, ltv: map[string]float64{}}
	start := now.Add(-80 * 24 * time.Hour).Truncate(24 * time.Hour)
	seq := map[string]uint64{}
	change := func(m string, at time.Time, typ, kind string, delta int64) {
		seq[m]++
		f.changes = append(f.changes, clickhouse.ChangeRow{MemberID: m, Sequence: seq[m], ChangeID: fmt.Sprintf("%s-%d", m, seq[m]),
			ChangeType: typ, OccurredAt: at, PointsDelta: delta, PointsKind: kind, InsertedAt: at})
	}
	for i := range 120 {
		m := fmt.Sprintf("k%03d", i)
		created := start.Add(time.Duration(r.IntN(10*24*60)) * time.Minute)
		f.created[m] = created
		change(m, created, "member_created", "", 0)
		if r.IntN(4) > 0 {
			f.ltv[m] = float64(r.IntN(100000)) / 100
		}
		for e := range r.IntN(6) {
			at := created.Add(time.Duration(r.IntN(40*24*60)) * time.Minute)
			typ := []string{"transaction", "transaction", "visit", "sign_up", "browse"}[r.IntN(5)]
			ev := clickhouse.EventRow{EventID: fmt.Sprintf("%s-e%d", m, e), MemberID: m, EventType: typ, OccurredAt: at, IngestedAt: at}
			if typ == "transaction" {
				ev.AmountMinor = int64(100 + r.IntN(10000))
				earned := ev.AmountMinor / 100
				change(m, at, "points_changed", "earn", earned)
				if r.IntN(3) == 0 {
					change(m, at.Add(time.Hour), "points_changed", "redeem", -int64(r.IntN(int(earned)+1)))
				}
				if r.IntN(5) == 0 {
					change(m, at.Add(time.Hour), "points_changed", "expire", -1)
				}
			}
			f.events = append(f.events, ev)
		}
	}
	return f
}

type kpiDay struct {
	newMembers, converted, retained, buyers, firstBuyers, repeatBuyers, orders uint64
	revenue, earned, redeemed                                                  int64
	ltvSum                                                                     float64
	ltvN                                                                       int
}

// expected computes daily_kpis' definitions (docs/analytics.md) directly.
func (f kpiFixture) expected(loc *time.Location) map[string]*kpiDay {
	days := map[string]*kpiDay{}
	day := func(t time.Time) string { return t.In(loc).Format("2006-01-02") }
	get := func(d string) *kpiDay {
		if days[d] == nil {
			days[d] = &kpiDay{}
		}
		return days[d]
	}
	firstPurchase := map[string]time.Time{}
	buyDays := map[string]map[string]bool{}
	activeDays := map[string]map[string]bool{}
	for _, e := range f.events {
		if e.EventType != "sign_up" {
			if activeDays[e.MemberID] == nil {
				activeDays[e.MemberID] = map[string]bool{}
			}
			activeDays[e.MemberID][day(e.OccurredAt)] = true
		}
		if e.EventType != "transaction" {
			continue
		}
		if fp, ok := firstPurchase[e.MemberID]; !ok || e.OccurredAt.Before(fp) {
			firstPurchase[e.MemberID] = e.OccurredAt
		}
		if buyDays[e.MemberID] == nil {
			buyDays[e.MemberID] = map[string]bool{}
		}
		buyDays[e.MemberID][day(e.OccurredAt)] = true
		k := get(day(e.OccurredAt))
		k.orders++
		k.revenue += e.AmountMinor
	}
	for m, ds := range buyDays {
		first := day(firstPurchase[m])
		for d := range ds {
			k := get(d)
			k.buyers++
			if d == first {
				k.firstBuyers++
			} else {
				k.repeatBuyers++
			}
		}
	}
	for m, c := range f.created {
		k := get(day(c))
		k.newMembers++
		if fp, ok := firstPurchase[m]; ok && !fp.After(c.Add(7*24*time.Hour)) {
			k.converted++
		}
		cd, _ := time.ParseInLocation("2006-01-02", day(c), loc)
		for d := range activeDays[m] {
			ad, _ := time.ParseInLocation("2006-01-02", d, loc)
			if ad.After(cd) && !ad.After(cd.AddDate(0, 0, 30)) {
				k.retained++
				break
			}
		}
		if l, ok := f.ltv[m]; ok {
			k.ltvSum += l
			k.ltvN++
		}
	}
	for _, c := range f.changes {
		k := get(day(c.OccurredAt))
		switch c.PointsKind {
		case "earn":
			k.earned += c.PointsDelta
		case "redeem":
			k.redeemed -= c.PointsDelta
		}
	}
	return days
}

func TestDailyKPIs(t *testing.T) {
	ctx := context.Background()
	cols := []clickhouse.ProfileColumn{{Name: "ltv_365d", Type: "number"}}
	conn := chtest.NewProfilesDB(t, cols)
	var tz string
	var now time.Time
	scanRow(t, ctx, conn, "SELECT timezone(), now()", &tz, &now)
	loc, err := time.LoadLocation(tz)
	if err != nil {
		t.Fatalf("server time zone %q: %v", tz, err)
	}
	f := newKPIFixture(rand.New(rand.NewPCG(3, 4)), now)
	w := clickhouse.NewWriter(conn)
	if err := w.InsertEvents(ctx, f.events); err != nil {
		t.Fatal(err)
	}
	if err := w.InsertEvents(ctx, f.events[:len(f.events)/2]); err != nil { // redelivered
		t.Fatal(err)
	}
	if err := w.InsertChanges(ctx, f.changes); err != nil {
		t.Fatal(err)
	}
	var profiles []clickhouse.ProfileRow
	var ltvAll float64
	for m, l := range f.ltv {
		profiles = append(profiles, clickhouse.ProfileRow{MemberID: m, Version: 1, Values: map[string]any{"ltv_365d": l}})
		ltvAll += l
	}
	ltvAvg := ltvAll / float64(len(f.ltv))
	if err := w.InsertProfiles(ctx, cols, profiles); err != nil {
		t.Fatal(err)
	}
	want := f.expected(loc)

	near := func(got *float64, want float64, ok bool) bool {
		if !ok {
			return got == nil
		}
		return got != nil && math.Abs(*got-want) <= 1e-9*math.Max(1, math.Abs(want))
	}
	var seen []string
	var d string
	var g kpiDay
	var conv, ret, rep, aov, ltvIdx, eff *float64
	eachRow(t, ctx, conn, []any{&d, &g.newMembers, &g.converted, &conv, &g.retained, &ret, &g.buyers, &g.firstBuyers, &g.repeatBuyers, &rep,
		&g.orders, &g.revenue, &aov, &ltvIdx, &g.earned, &g.redeemed, &eff}, func() {
		seen = append(seen, d)
		w := want[d]
		if w == nil {
			t.Errorf("unexpected day %s", d)
			return
		}
		if g.newMembers != w.newMembers || g.converted != w.converted || g.retained != w.retained || g.buyers != w.buyers ||
			g.firstBuyers != w.firstBuyers || g.repeatBuyers != w.repeatBuyers || g.orders != w.orders || g.revenue != w.revenue ||
			g.earned != w.earned || g.redeemed != w.redeemed {
			t.Errorf("%s counts\n got %+v\nwant %+v", d, g, *w)
		}
		if !near(conv, float64(w.converted)/float64(w.newMembers), w.newMembers > 0) ||
			!near(ret, float64(w.retained)/float64(w.newMembers), w.newMembers > 0) ||
			!near(rep, float64(w.repeatBuyers)/float64(w.buyers), w.buyers > 0) ||
			!near(aov, float64(w.revenue)/float64(w.orders), w.orders > 0) ||
			!near(ltvIdx, w.ltvSum/float64(w.ltvN)/ltvAvg, w.ltvN > 0) ||
			!near(eff, float64(w.redeemed)/float64(w.earned), w.earned > 0) {
			t.Errorf("%s rates: conversion %v retention %v repurchase %v aov %v ltv %v efficiency %v; want from %+v",
				d, fp(conv), fp(ret), fp(rep), fp(aov), fp(ltvIdx), fp(eff), *w)
		}
	}, `SELECT toString(day), new_members, converted_members_7d, member_conversion_rate,
		retained_members_30d, retention_30d, buyers, first_time_buyers, repeat_buyers, repurchase_rate,
		orders, revenue_minor, average_order_value_minor, ltv_index, points_earned, points_redeemed, benefit_usage_efficiency
		FROM daily_kpis ORDER BY day`)
	if len(seen) != len(want) {
		var days []string
		for d := range want {
			days = append(days, d)
		}
		sort.Strings(days)
		t.Fatalf("days\n got %v\nwant %v", seen, days)
	}
}

func fp(p *float64) string {
	if p == nil {
		return "NULL"
	}
	return strconv.FormatFloat(*p, 'g', 6, 64)
}

func TestDailyKPIsRecentWindowsAreNull(t *testing.T) {
	ctx := context.Background()
	conn := chtest.NewProfilesDB(t, nil)
	var now time.Time
	scanRow(t, ctx, conn, "SELECT now()", &now)
	w := clickhouse.NewWriter(conn)
	if err := w.InsertChanges(ctx, []clickhouse.ChangeRow{{MemberID: "m1", Sequence: 1, ChangeID: "c1",
		ChangeType: "member_created", OccurredAt: now, InsertedAt: now}}); err != nil {
		t.Fatal(err)
	}
	var n uint64
	var conv, ret, ltv *float64
	scanRow(t, ctx, conn, "SELECT new_members, member_conversion_rate, retention_30d, ltv_index FROM daily_kpis WHERE day = today()",
		&n, &conv, &ret, &ltv)
	if n != 1 || conv != nil || ret != nil || ltv != nil {
		t.Fatalf("today: new=%d conversion=%s retention=%s ltv=%s; want 1 and NULLs (windows open, no ltv_365d label)", n, fp(conv), fp(ret), fp(ltv))
	}
}

// TestAnalyticsDocQueries runs every SQL example of docs/analytics.md
// against a database with profiles and history, so that the documentation
// stays runnable on the server we ship against.
func TestAnalyticsDocQueries(t *testing.T) {
	ctx := context.Background()
	doc, err := os.ReadFile("../../docs/analytics.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```sql\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) < 10 {
		t.Fatalf("only %d sql examples in docs/analytics.md", len(blocks))
	}
	cols := append([]clickhouse.ProfileColumn{{Name: "city_tier", Type: "enum"}, {Name: "gender_group", Type: "enum"}}, testColumns...)
	conn := chtest.NewProfilesDB(t, cols)
	w := clickhouse.NewWriter(conn)
	all, _ := randomProfiles(rand.New(rand.NewPCG(5, 6)), 200)
	insertInParts(t, w, testColumns, all)
	var now time.Time
	scanRow(t, ctx, conn, "SELECT now()", &now)
	f := newKPIFixture(rand.New(rand.NewPCG(7, 8)), now)
	// And a purchase yesterday, for the examples over recent days.
	f.events = append(f.events, clickhouse.EventRow{EventID: "recent", MemberID: "k000", EventType: "transaction",
		OccurredAt: now.Add(-24 * time.Hour), IngestedAt: now, AmountMinor: 1000})
	if err := w.InsertEvents(ctx, f.events); err != nil {
		t.Fatal(err)
	}
	if err := w.InsertChanges(ctx, f.changes); err != nil {
		t.Fatal(err)
	}
	if err := w.InsertOperatorAudit(ctx, []clickhouse.OperatorAuditRow{
		{AuditID: "o1", At: now, Actor: "backoffice/alice", Action: "coupon.issued", MemberID: "k000", CauseID: "rpc:i",
			Detail: `{"template": "C10", "code": "C10-k000-1", "cause": "issued: sorry"}`, InsertedAt: now},
		{AuditID: "o2", At: now, Actor: "cli/bob", Action: "program.loaded", Document: "program_versions", Version: "v2",
			SHA256: strings.Repeat("ab", 32), Detail: "{}", InsertedAt: now},
	}); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		q := b[1]
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Errorf("%s\n%v", q, err)
			continue
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil {
			t.Errorf("%s\n%v", q, err)
		}
		rows.Close()
		if n == 0 {
			t.Errorf("%s\nreturned no rows on the fixture", q)
		}
	}
}
