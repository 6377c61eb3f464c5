package clickhouse_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// TestShardedClusterAnswersAsOneServer writes the same facts, label
// history, audit and profiles through a database sharded over a two-shard
// cluster (two clickhouse-server processes on loopback) and into a database
// on one server, and checks that every member's rows live on one shard,
// both shards hold members, and the history, purchase, segment, view and
// analyst-doc queries give the same answers on both.
func TestShardedClusterAnswersAsOneServer(t *testing.T) {
	cl := chtest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sharded, cfg := cl.NewDB(t)
	plain, plainCfg := cl.NewUnshardedDB(t)
	shards := cl.Shards(t, cfg)

	// The layout: on each shard a local table per member table and a
	// Distributed table over them; the schema applied again is a no-op and
	// a database is never migrated in the other layout.
	for i, sh := range shards {
		engines := map[string]string{}
		var name, engine string
		eachRow(t, ctx, sh, []any{&name, &engine}, func() { engines[name] = engine },
			"SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
		for _, tbl := range clickhouse.ShardedTables {
			if tbl == clickhouse.ProfilesTable {
				continue // created by EnsureProfiles
			}
			if engines[tbl] != "Distributed" || engines[tbl+clickhouse.LocalSuffix] != "ReplacingMergeTree" {
				t.Errorf("shard %d: %s is %q, %s%s is %q", i+1, tbl, engines[tbl], tbl, clickhouse.LocalSuffix, engines[tbl+clickhouse.LocalSuffix])
			}
		}
	}
	// Inserts return once every shard holds its rows.
	var sync string
	if err := sharded.QueryRow(ctx, "SELECT value FROM system.settings WHERE name = 'insert_distributed_sync'").Scan(&sync); err != nil || sync != "1" {
		t.Fatalf("insert_distributed_sync = %q (%v) on a connection to a sharded database", sync, err)
	}
	schema := clickhouse.NewSchema(cfg, sharded)
	if applied, err := schema.Migrate(ctx); err != nil || len(applied) != 0 {
		t.Fatalf("second sharded migrate: applied %v, %v", applied, err)
	}
	if _, err := clickhouse.Migrate(ctx, sharded); err == nil || !strings.Contains(err.Error(), "MC_CLICKHOUSE_CLUSTER") {
		t.Fatalf("migrating a sharded database as one server: %v", err)
	}
	wrong := plainCfg
	wrong.Cluster = cfg.Cluster
	if _, err := clickhouse.NewSchema(wrong, plain).Migrate(ctx); err == nil || !strings.Contains(err.Error(), "not Distributed") {
		t.Fatalf("sharding a database migrated on one server: %v", err)
	}

	// The same data into both. The two extra label columns stay NULL, as
	// in TestAnalyticsDocQueries (the doc's first example groups by them).
	cols := append([]clickhouse.ProfileColumn{{Name: "city_tier", Type: "enum"}, {Name: "gender_group", Type: "enum"}}, testColumns...)
	if err := schema.EnsureProfiles(ctx, cols); err != nil {
		t.Fatal(err)
	}
	if err := clickhouse.EnsureProfiles(ctx, plain, cols); err != nil {
		t.Fatal(err)
	}
	var now time.Time
	scanRow(t, ctx, plain, "SELECT now()", &now)
	d := newClusterFixture(now)
	for _, conn := range []driver.Conn{sharded, plain} {
		w := clickhouse.NewWriter(conn)
		// In parts, and some twice as after a redelivery, so that FINAL
		// has rows to collapse on each shard.
		for _, part := range [][]clickhouse.EventRow{d.events[:len(d.events)/2], d.events[len(d.events)/2:], d.events[:len(d.events)/3]} {
			if err := w.InsertEvents(ctx, part); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			if err := w.InsertChanges(ctx, d.changes); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.InsertLabelChanges(ctx, d.labels); err != nil {
			t.Fatal(err)
		}
		if err := w.InsertAudit(ctx, d.audit); err != nil {
			t.Fatal(err)
		}
		if err := w.InsertOperatorAudit(ctx, d.operators); err != nil {
			t.Fatal(err)
		}
		insertInParts(t, w, testColumns, d.profiles)
	}

	// Where the rows went: each member's rows on the one shard its hash
	// picks, members on both shards, nothing lost or added. Counts are
	// taken with FINAL: background merges collapse duplicates at their
	// own pace.
	for _, tbl := range clickhouse.ShardedTables {
		var total, plainN uint64
		scanRow(t, ctx, sharded, "SELECT count() FROM "+tbl+" FINAL", &total)
		scanRow(t, ctx, plain, "SELECT count() FROM "+tbl+" FINAL", &plainN)
		var sum uint64
		for i, sh := range shards {
			var n, misplaced, members uint64
			scanRow(t, ctx, sh, fmt.Sprintf("SELECT count(), countIf(cityHash64(member_id) %% 2 != %d), uniqExact(member_id) FROM %s%s FINAL",
				i, tbl, clickhouse.LocalSuffix), &n, &misplaced, &members)
			if n == 0 || misplaced != 0 {
				t.Errorf("%s on shard %d: %d rows of %d members, %d of them belong to the other shard", tbl, i+1, n, members, misplaced)
			}
			t.Logf("%s: shard %d holds %d rows of %d members", tbl, i+1, n, members)
			sum += n
		}
		if sum != total || total != plainN {
			t.Errorf("%s FINAL: %d rows through the Distributed table, %d on the shards, %d on one server", tbl, total, sum, plainN)
		}
	}

	// The same answers.
	same := func(what string, get func(conn driver.Conn) any) {
		t.Helper()
		a, b := get(sharded), get(plain)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: sharded and one server differ:\nsharded: %v\none:     %v", what, a, b)
		}
		if reflect.ValueOf(a).Len() == 0 {
			t.Errorf("%s: no answer to compare", what)
		}
	}
	origins := slices.Sorted(func(yield func(string) bool) {
		for o := range d.origins {
			if !yield(o) {
				return
			}
		}
	})
	same("ReadHistory", func(conn driver.Conn) any {
		var out []clickhouse.HistoryEvent
		if err := clickhouse.ReadHistory(ctx, conn, origins, func(e clickhouse.HistoryEvent) { out = append(out, e) }); err != nil {
			t.Fatal(err)
		}
		return out
	})
	same("ReadHistory of three members", func(conn driver.Conn) any {
		var out []clickhouse.HistoryEvent
		if err := clickhouse.ReadHistory(ctx, conn, origins[:3], func(e clickhouse.HistoryEvent) { out = append(out, e) }); err != nil {
			t.Fatal(err)
		}
		return out
	})
	same("ReadPurchases", func(conn driver.Conn) any {
		var out []clickhouse.Purchase
		if err := clickhouse.ReadPurchases(ctx, conn, now.Add(-100*24*time.Hour), now, func(p clickhouse.Purchase) error {
			out = append(out, p)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	})
	var labels []segment.Label
	for _, c := range testColumns {
		labels = append(labels, segment.Label{ID: c.Name, Type: c.Type})
	}
	comp, err := segment.NewCompiler(labels)
	if err != nil {
		t.Fatal(err)
	}
	for _, expr := range []string{
		"vip",
		"rfm_r_score >= 3 && !vip",
		`lifecycle_stage in ["new", "loyal"] || ltv_365d > 500`,
		`!(channel_pref == "pos") && present(churn_risk)`,
		"!present(rfm_segment) || select",
	} {
		q, err := comp.Compile(expr)
		if err != nil {
			t.Fatal(err)
		}
		same("segment count "+expr, func(conn driver.Conn) any {
			n, err := segment.Count(ctx, conn, q)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				t.Errorf("segment %s matches no member", expr)
			}
			return []uint64{n}
		})
		same("segment export "+expr, func(conn driver.Conn) any {
			var ids []string
			if err := segment.Export(ctx, conn, q, 37, func(b []string) error {
				ids = append(ids, b...)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			return ids
		})
	}
	for _, v := range clickhouse.ProfileViews {
		same("view "+v, func(conn driver.Conn) any { return dump(ctx, t, conn, "SELECT * FROM "+v) })
	}
	for _, tbl := range clickhouse.ShardedTables {
		same(tbl+" FINAL", func(conn driver.Conn) any { return dump(ctx, t, conn, "SELECT * FROM "+tbl+" FINAL") })
	}
	doc, err := os.ReadFile("../../docs/analytics.md")
	if err != nil {
		t.Fatal(err)
	}
	// LIMIT is cut: among ties, which rows a LIMIT keeps is arbitrary.
	limit := regexp.MustCompile(`(?m)^LIMIT \d+\s*$`)
	for _, b := range regexp.MustCompile("(?s)```sql\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		q := limit.ReplaceAllString(b[1], "")
		same("docs/analytics.md query\n"+q, func(conn driver.Conn) any { return dump(ctx, t, conn, q) })
	}
}

// clusterFixture is the data the sharded test writes: the daily KPI
// fixture's members, events and points (and a purchase yesterday), with some events attributed to a
// merged member, label history, audit rows, and profiles of 300 members.
type clusterFixture struct {
	events  []clickhouse.EventRow
	changes []clickhouse.ChangeRow
	labels  []clickhouse.LabelChangeRow
	audit   []clickhouse.AuditRow
	// operators: an operator audit record of each member created, and a
	// configuration load (no member).
	operators []clickhouse.OperatorAuditRow
	profiles  []clickhouse.ProfileRow
	origins   map[string]bool
}

func newClusterFixture(now time.Time) clusterFixture {
	r := rand.New(rand.NewPCG(11, 12))
	k := newKPIFixture(r, now)
	// And a purchase yesterday, for the doc's examples over recent days.
	k.events = append(k.events, clickhouse.EventRow{EventID: "recent", MemberID: "k000", EventType: "transaction",
		OccurredAt: now.Add(-24 * time.Hour), IngestedAt: now, AmountMinor: 1000})
	d := clusterFixture{events: k.events, changes: k.changes, origins: map[string]bool{}}
	for i := range d.events {
		e := &d.events[i]
		e.StoreID = fmt.Sprintf("S%d", r.IntN(5))
		if r.IntN(5) == 0 { // merged in from another member
			e.OriginMemberID = "o-" + e.MemberID
		}
		if e.EventType == "transaction" {
			e.OrderID = "O-" + e.EventID
			e.Items = []clickhouse.ItemRow{{SKU: "sku", Category: []string{"coffee", "bakery"}[r.IntN(2)], Quantity: 1, AmountMinor: e.AmountMinor}}
		}
		o := e.OriginMemberID
		if o == "" {
			o = e.MemberID
		}
		d.origins[o] = true
	}
	for _, c := range k.changes {
		d.labels = append(d.labels, clickhouse.LabelChangeRow{MemberID: c.MemberID, LabelID: "active_30d", Value: "true",
			Sequence: c.Sequence, ChangedAt: c.OccurredAt, CauseID: c.ChangeID, InsertedAt: c.InsertedAt})
		if c.ChangeType == "member_created" {
			d.audit = append(d.audit, clickhouse.AuditRow{AuditID: "a-" + c.MemberID, At: c.OccurredAt, Action: "create",
				MemberID: c.MemberID, Sequence: c.Sequence, InsertedAt: c.InsertedAt})
			d.operators = append(d.operators, clickhouse.OperatorAuditRow{AuditID: "o-" + c.MemberID, At: c.OccurredAt,
				Actor: "backoffice/alice", Action: "coupon.issued", MemberID: c.MemberID, CauseID: c.ChangeID, Detail: `{"template":"C10"}`,
				InsertedAt: c.InsertedAt})
		}
	}
	if len(d.operators) > 0 {
		first := d.operators[0]
		d.operators = append(d.operators, clickhouse.OperatorAuditRow{AuditID: "config-1", At: first.At, Actor: "cli/alice",
			Action: "program.loaded", Document: "program_versions", Version: "v1", SHA256: strings.Repeat("ab", 32), Detail: "{}",
			InsertedAt: first.InsertedAt})
	}
	d.profiles, _ = randomProfiles(r, 300)
	for m, l := range k.ltv {
		d.profiles = append(d.profiles, clickhouse.ProfileRow{MemberID: m, Version: 1, Values: map[string]any{"ltv_365d": l}})
	}
	return d
}

// dump runs q and renders each row as text, sorted: rows compare as a
// multiset whatever order the shards answered in. Floats are rounded to 10
// significant digits (sums over shards add in another order).
func dump(ctx context.Context, t *testing.T, conn driver.Conn, q string) []string {
	t.Helper()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		t.Fatalf("%s\n%v", q, err)
	}
	defer rows.Close()
	cts := rows.ColumnTypes()
	var out []string
	for rows.Next() {
		dest := make([]any, len(cts))
		for i, ct := range cts {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			t.Fatalf("%s\n%v", q, err)
		}
		parts := make([]string, len(dest))
		for i, v := range dest {
			parts[i] = text(reflect.ValueOf(v))
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s\n%v", q, err)
	}
	sort.Strings(out)
	return out
}

func text(v reflect.Value) string {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "NULL"
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Float32, reflect.Float64:
		return fmt.Sprintf("%.10g", v.Float())
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = text(v.Index(i))
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprint(v.Interface())
}
