package clickhouse_test

import (
	"context"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

func TestMigrateIsIdempotent(t *testing.T) {
	conn, _ := chtest.NewDB(t)
	applied, err := clickhouse.Migrate(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 0 {
		t.Fatalf("second migrate applied %v", applied)
	}
}

func TestInsertEventsAndChanges(t *testing.T) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(t)
	w := clickhouse.NewWriter(conn)
	at := time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)
	ev := clickhouse.EventRow{
		EventID: "e1", MemberID: "m1", EventType: "transaction", Channel: "pos", StoreID: "s1",
		OccurredAt: at, IngestedAt: at.Add(time.Second), OrderID: "o1", Currency: "CNY", AmountMinor: 12345,
		Items: []clickhouse.ItemRow{{SKU: "sku-1", Category: "coffee", Quantity: 2, AmountMinor: 12345}},
	}
	// The same event twice, as after a redelivery: FINAL shows one row.
	if err := w.InsertEvents(ctx, []clickhouse.EventRow{ev, ev}); err != nil {
		t.Fatal(err)
	}
	var n uint64
	var sum int64
	var sku string
	scanRow(t, ctx, conn, `SELECT count(), sum(amount_minor), any(items.sku[1]) FROM member_events FINAL WHERE member_id = 'm1'`, &n, &sum, &sku)
	if n != 1 || sum != 12345 || sku != "sku-1" {
		t.Fatalf("count=%d sum=%d sku=%q", n, sum, sku)
	}
	if err := w.InsertChanges(ctx, []clickhouse.ChangeRow{{MemberID: "m1", Sequence: 1, ChangeID: "c1", ChangeType: "points_changed",
		OccurredAt: at, PointsDelta: 123, PointsBalance: 123, InsertedAt: at}}); err != nil {
		t.Fatal(err)
	}
	var bal int64
	scanRow(t, ctx, conn, `SELECT points_balance FROM member_changes FINAL WHERE member_id = 'm1' AND sequence = 1`, &bal)
	if bal != 123 {
		t.Fatalf("balance = %d", bal)
	}
}
