package tags_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"

	"github.com/membercenter/membercenter/services/tags"
)

// TestBackfillResumesAfterAnInterruption: a backfill stopped after its
// first batch continues with the members it had not reached, and the
// labels equal those of an uninterrupted run.
func TestBackfillResumesAfterAnInterruption(t *testing.T) {
	f, c := begin(t)
	conn, _ := chtest.NewDB(t)
	var members []uuid.UUID
	var rows []clickhouse.EventRow
	for i := range 5 {
		m := f.member(t)
		members = append(members, m)
		for j := range i + 1 {
			rows = append(rows, clickhouse.EventRow{EventID: fmt.Sprintf("e%d-%d", i, j), MemberID: m.String(), EventType: "transaction",
				Channel: "pos", StoreID: "SH-1", OccurredAt: t0.Add(-time.Duration(j+1) * 24 * time.Hour).UTC(), IngestedAt: t0.UTC(),
				OrderID: fmt.Sprintf("O%d-%d", i, j), Currency: "CNY", AmountMinor: 1000,
				Items: []clickhouse.ItemRow{{SKU: "c", Category: "coffee", Quantity: 1, AmountMinor: 1000}}})
		}
	}
	if err := clickhouse.NewWriter(conn).InsertEvents(c, rows); err != nil {
		t.Fatal(err)
	}
	// Stop after the second batch of one member.
	stop, cancel := context.WithCancel(c)
	batches := 0
	_, err := f.svc.Backfill(stop, conn, tagsOptions(1, func() {
		if batches++; batches == 2 {
			cancel()
		}
	}))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted backfill: %v, want context canceled", err)
	}
	p, err := f.svc.Backfill(c, conn, tagsOptions(2, nil))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Resumed || p.Done != 5 || p.Total != 5 || p.Events != int64(len(rows)-1-2) {
		t.Errorf("resumed backfill %+v; want resumed, 5 of 5 members, the last three members' %d events read", p, len(rows)-3)
	}
	for i, m := range members {
		l := f.labels(t, m)
		if l["spend_30d_value"] != float64(i+1)*10 || l["coffee_lover"] != true {
			t.Errorf("member %d labels %v; want spend %d and coffee_lover", i, l, (i+1)*10)
		}
	}
	var done bool
	if err := f.pool.QueryRow(c, `SELECT done FROM tag_backfills WHERE catalog_version = 'test-1'`).Scan(&done); err != nil || !done {
		t.Errorf("backfill progress row done=%v (%v)", done, err)
	}
}

func tagsOptions(batch int, after func()) tags.BackfillOptions {
	o := tags.BackfillOptions{Batch: batch}
	if after != nil {
		o.Progress = func(tags.BackfillProgress) { after() }
	}
	return o
}
