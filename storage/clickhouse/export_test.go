package clickhouse_test

import (
	"context"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

// MemberRows reads the rows of the members given from every table with a
// member column (a table of any name included, views left out), typed:
// strings, numbers, arrays, nulls, times in RFC 3339.
func TestMemberRows(t *testing.T) {
	conn, _ := chtest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Date(2025, 3, 12, 4, 5, 6, 0, time.UTC)
	w := clickhouse.NewWriter(conn)
	if err := w.InsertEvents(ctx, []clickhouse.EventRow{
		{EventID: "e1", MemberID: "m1", EventType: "transaction", OccurredAt: at, IngestedAt: at, AmountMinor: 990,
			Items: []clickhouse.ItemRow{{SKU: "TEA", Category: "tea", Quantity: 2, AmountMinor: 990}}},
		{EventID: "e2", MemberID: "m9", EventType: "transaction", OccurredAt: at, IngestedAt: at},
	}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, "CREATE TABLE `odd\\`name` (`ref_member_id` String, `n` Nullable(Int32)) ENGINE = MergeTree ORDER BY ref_member_id"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, "CREATE VIEW `odd_view` AS SELECT * FROM `odd\\`name`"); err != nil {
		t.Fatal(err)
	}
	// INSERT … SELECT: the native protocol takes VALUES only as a batch.
	for _, q := range []string{"SELECT 'm2', CAST(NULL AS Nullable(Int32))", "SELECT 'm9', CAST(1 AS Nullable(Int32))"} {
		if err := conn.Exec(ctx, "INSERT INTO `odd\\`name` (ref_member_id, n) "+q); err != nil {
			t.Fatal(err)
		}
	}
	got, err := clickhouse.MemberRows(ctx, conn, []string{"m1", "m2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["odd_view"]; ok {
		t.Error("a view was read")
	}
	if rows := got["odd`name"]; len(rows) != 1 || rows[0]["ref_member_id"] != "m2" || rows[0]["n"] != nil {
		t.Errorf("odd table rows %v", rows)
	}
	ev := got["member_events"]
	if len(ev) != 1 {
		t.Fatalf("member_events rows %v; want m1's one", ev)
	}
	if r := ev[0]; r["event_id"] != "e1" || r["amount_minor"] != int64(990) || r["occurred_at"] != "2025-03-12T04:05:06Z" {
		t.Errorf("member_events row %v", r)
	}
	if skus, ok := ev[0]["items.sku"].([]any); !ok || len(skus) != 1 || skus[0] != "TEA" {
		t.Errorf("items.sku %#v", ev[0]["items.sku"])
	}
	if rows, ok := got["member_changes"]; !ok || len(rows) != 0 {
		t.Errorf("member_changes %v; want present and empty", rows)
	}
}
