package tags_test

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/membercenter/membercenter/pipeline/contract"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/facts"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestExporterAndSinkWriteThroughDistributedTables: on a database sharded
// over a two-shard cluster (two clickhouse-server processes on loopback),
// the profile exporter creates member_profiles as local tables plus a
// Distributed table and writes its rows through it, and the sink's facts
// writer does the same with member events, changes and label history.
// Each member's rows land on the shard its member id hashes to, both
// shards hold members, and segments, profiles and history answer as they
// do on one server given the same rows.
func TestExporterAndSinkWriteThroughDistributedTables(t *testing.T) {
	f := newFixture(t)
	cl := chtest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sharded, cfg := cl.NewDB(t)
	plain, plainCfg := cl.NewUnshardedDB(t)

	const members = 40
	var events []*mcv1.MemberEvent
	for i := range members {
		m := f.member(t)
		cats := [][]string{{"coffee"}, {"bakery"}, {"coffee", "bakery"}}[i%3]
		ev := purchase(fmt.Sprintf("e%d", i), m, t0.Add(-time.Duration(i)*time.Hour), int64(1000+250*i), cats...)
		if err := f.svc.Apply(ctx, ev); err != nil {
			t.Fatal(err)
		}
		events = append(events, ev)
	}

	// The profile exporter: the queue exported to one server, queued
	// again, then exported to the cluster.
	pending, err := postgres.PendingProfileExports(ctx, f.pool, 1000)
	if err != nil || len(pending) != members {
		t.Fatalf("%d members queued for export (%v), want %d", len(pending), err, members)
	}
	if n, err := f.svc.NewExporter(plain, clickhouse.NewSchema(plainCfg, plain)).Export(ctx, 1000); err != nil || n != members {
		t.Fatalf("export to one server: %d, %v", n, err)
	}
	var ids []uuid.UUID
	var versions []int64
	for _, p := range pending {
		ids, versions = append(ids, p.Member), append(versions, p.Version)
	}
	b := &pgx.Batch{}
	postgres.QueueProfileExports(b, ids, versions)
	if err := f.pool.SendBatch(ctx, b).Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := f.svc.NewExporter(sharded, clickhouse.NewSchema(cfg, sharded)).Export(ctx, 1000); err != nil || n != members {
		t.Fatalf("export to the cluster: %d, %v", n, err)
	}

	// The sink's facts writer: the events and every change in the outbox.
	payloads := pgtest.Values[[]byte](t, ctx, f.pool, `SELECT payload FROM outbox ORDER BY member_id, sequence`)
	var changes []contract.FactChange
	for _, p := range payloads {
		ch := &mcv1.MemberChange{}
		if err := proto.Unmarshal(p, ch); err != nil {
			t.Fatal(err)
		}
		changes = append(changes, contract.FactChange{Msg: ch})
	}
	var evs []contract.FactEvent
	for _, ev := range events {
		evs = append(evs, contract.FactEvent{Msg: ev})
	}
	for _, conn := range []driver.Conn{sharded, plain} {
		w := facts.Writer{W: clickhouse.NewWriter(conn), Now: func() time.Time { return t0 }}
		if err := w.WriteEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteChanges(ctx, changes); err != nil {
			t.Fatal(err)
		}
	}

	// Where the rows went.
	shards := cl.Shards(t, cfg)
	for _, tbl := range []string{clickhouse.ProfilesTable, "member_events", "member_changes", "label_changes"} {
		var total, one uint64
		if err := sharded.QueryRow(ctx, "SELECT count() FROM "+tbl+" FINAL").Scan(&total); err != nil {
			t.Fatal(err)
		}
		if err := plain.QueryRow(ctx, "SELECT count() FROM "+tbl+" FINAL").Scan(&one); err != nil {
			t.Fatal(err)
		}
		var sum uint64
		for i, sh := range shards {
			var n, misplaced uint64
			if err := sh.QueryRow(ctx, fmt.Sprintf("SELECT count(), countIf(cityHash64(member_id) %% 2 != %d) FROM %s%s FINAL",
				i, tbl, clickhouse.LocalSuffix)).Scan(&n, &misplaced); err != nil {
				t.Fatal(err)
			}
			if n == 0 || misplaced != 0 {
				t.Errorf("%s on shard %d: %d rows, %d of them of members of the other shard", tbl, i+1, n, misplaced)
			}
			sum += n
		}
		if total == 0 || sum != total || total != one {
			t.Errorf("%s FINAL: %d rows through the Distributed table, %d on the shards, %d on one server", tbl, total, sum, one)
		}
	}

	// The same answers.
	comp, err := f.svc.Catalog().Segments()
	if err != nil {
		t.Fatal(err)
	}
	for _, expr := range []string{"coffee_lover", "active_30d && spend_30d_value > 40", "!coffee_lover && present(spend_30d_value)"} {
		q, err := comp.Compile(expr)
		if err != nil {
			t.Fatal(err)
		}
		var got [2][]string
		for i, conn := range []driver.Conn{sharded, plain} {
			n, err := segment.Count(ctx, conn, q)
			if err != nil {
				t.Fatal(err)
			}
			if err := segment.Export(ctx, conn, q, 0, func(b []string) error { got[i] = append(got[i], b...); return nil }); err != nil {
				t.Fatal(err)
			}
			if int(n) != len(got[i]) {
				t.Errorf("segment %s: count %d, export %d", expr, n, len(got[i]))
			}
		}
		if len(got[0]) == 0 || !reflect.DeepEqual(got[0], got[1]) {
			t.Errorf("segment %s: cluster %v, one server %v", expr, got[0], got[1])
		}
	}
	if a, b := profilesText(ctx, t, sharded), profilesText(ctx, t, plain); a != b || a == "" {
		t.Errorf("current profiles: cluster\n%s\none server\n%s", a, b)
	}
	var origins []string
	for _, id := range ids {
		origins = append(origins, id.String())
	}
	var hist [2][]clickhouse.HistoryEvent
	for i, conn := range []driver.Conn{sharded, plain} {
		if err := clickhouse.ReadHistory(ctx, conn, origins, func(e clickhouse.HistoryEvent) { hist[i] = append(hist[i], e) }); err != nil {
			t.Fatal(err)
		}
	}
	if len(hist[0]) != members || !reflect.DeepEqual(hist[0], hist[1]) {
		t.Errorf("history: cluster %d events, one server %d, or they differ", len(hist[0]), len(hist[1]))
	}
}

// profilesText renders the current profiles' catalogue columns, one line
// per member in member order.
func profilesText(ctx context.Context, t *testing.T, conn driver.Conn) string {
	t.Helper()
	rows, err := conn.Query(ctx, "SELECT member_id, version, catalog_version, coffee_lover, active_30d, spend_30d_value FROM current_profiles")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, catalog string
		var version uint64
		var coffee, active *uint8
		var spend *float64
		if err := rows.Scan(&id, &version, &catalog, &coffee, &active, &spend); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, fmt.Sprintf("%s v%d %s coffee=%s active=%s spend=%s", id, version, catalog, deref(coffee), deref(active), deref(spend)))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func deref[T any](p *T) string {
	if p == nil {
		return "NULL"
	}
	return fmt.Sprint(*p)
}
