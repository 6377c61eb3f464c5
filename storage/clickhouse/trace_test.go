package clickhouse_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

// TestQueriesAndBatchInsertsAreSpans: an SRE following a sink flush or a
// segment count sees each ClickHouse statement as a client span of the
// caller's trace, named by operation and table, with the rows it moved,
// and never a value the statement carried.
func TestQueriesAndBatchInsertsAreSpans(t *testing.T) {
	_, cfg := chtest.NewDB(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	conn, err := clickhouse.Dial(cfg, clickhouse.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const secret = "13812345678" // a phone number: never in a span
	ctx, parent := tp.Tracer("test").Start(context.Background(), "sink flush")
	at := time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)
	ev := clickhouse.EventRow{EventID: "e1", MemberID: "m1", EventType: "transaction", Channel: "pos", StoreID: "store-" + secret,
		OccurredAt: at, IngestedAt: at, OrderID: "order-" + secret, Currency: "CNY", AmountMinor: 100}
	ev2 := ev
	ev2.EventID = "e2"
	if err := clickhouse.NewWriter(conn).InsertEvents(ctx, []clickhouse.EventRow{ev, ev2}); err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM member_events WHERE order_id = 'order-"+secret+"'").Scan(&n); err != nil || n != 2 {
		t.Fatalf("count: %d, %v", n, err)
	}
	if ids := queryStrings(t, ctx, conn, "SELECT event_id FROM member_events WHERE store_id = ? ORDER BY event_id", "store-"+secret); len(ids) != 2 {
		t.Fatalf("rows %v", ids)
	}
	if err := conn.Exec(ctx, "OPTIMIZE TABLE member_events FINAL"); err != nil {
		t.Fatal(err)
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO member_changes (member_id, sequence, change_id)")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append("m1", uint64(1), "c-"+secret); err != nil {
		t.Fatal(err)
	}
	if err := b.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT count() FROM no_such_table WHERE x = '"+secret+"'").Scan(&n); err == nil {
		t.Fatal("a query of a missing table succeeded")
	}
	parent.End()

	type want struct {
		op     string
		table  string
		rows   int64
		failed bool
	}
	wants := map[string]want{
		"INSERT member_events":   {op: "INSERT", table: "member_events", rows: 2},
		"SELECT member_events":   {op: "SELECT", table: "member_events"},
		"OPTIMIZE member_events": {op: "OPTIMIZE", table: "member_events"},
		"INSERT member_changes":  {op: "INSERT", table: "member_changes"},
		"SELECT no_such_table":   {op: "SELECT", table: "no_such_table", failed: true},
	}
	seen := map[string]int{}
	for _, s := range rec.Ended() {
		if s.Name() == "sink flush" {
			continue
		}
		seen[s.Name()]++
		w, ok := wants[s.Name()]
		if !ok {
			t.Errorf("unexpected span %q", s.Name())
			continue
		}
		if s.Parent().SpanID() != parent.SpanContext().SpanID() || s.SpanKind() != trace.SpanKindClient {
			t.Errorf("%s: parent %s kind %s; want a client span under the caller's", s.Name(), s.Parent().SpanID(), s.SpanKind())
		}
		attrs := map[string]attribute.Value{}
		for _, kv := range s.Attributes() {
			attrs[string(kv.Key)] = kv.Value
			if strings.Contains(kv.Value.String(), secret) {
				t.Errorf("%s: attribute %s = %q holds a value of the statement", s.Name(), kv.Key, kv.Value.String())
			}
		}
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				if strings.Contains(kv.Value.String(), secret) {
					t.Errorf("%s: event %s: %s = %q holds a value of the statement", s.Name(), ev.Name, kv.Key, kv.Value.String())
				}
			}
		}
		if strings.Contains(s.Status().Description, secret) {
			t.Errorf("%s: status %q holds a value of the statement", s.Name(), s.Status().Description)
		}
		for k, v := range map[string]string{"db.system.name": "clickhouse", "db.system": "clickhouse", "db.namespace": cfg.Database,
			"db.operation.name": w.op, "db.collection.name": w.table, "server.address": "127.0.0.1"} {
			if got := attrs[k].String(); got != v {
				t.Errorf("%s: %s = %q, want %q", s.Name(), k, got, v)
			}
		}
		if _, ok := attrs["db.query.text"]; ok {
			t.Errorf("%s: the statement's text is recorded", s.Name())
		}
		switch s.Name() {
		case "INSERT member_events":
			if got := attrs["clickhouse.batch.rows"].AsInt64(); got != w.rows {
				t.Errorf("%s: clickhouse.batch.rows = %d, want %d", s.Name(), got, w.rows)
			}
		case "INSERT member_changes":
			if !attrs["clickhouse.batch.aborted"].AsBool() {
				t.Errorf("%s: an aborted batch is not marked aborted: %v", s.Name(), attrs)
			}
		}
		if failed := s.Status().Code == codes.Error; failed != w.failed {
			t.Errorf("%s: status %v %q", s.Name(), s.Status().Code, s.Status().Description)
		}
		if w.failed && (attrs["db.response.status_code"].String() != "60" || !strings.Contains(s.Status().Description, "60")) {
			t.Errorf("%s: status code %q, description %q; want ClickHouse's code 60 (UNKNOWN_TABLE)",
				s.Name(), attrs["db.response.status_code"].String(), s.Status().Description)
		}
	}
	// Two queries of member_events: the count and the rows (with the
	// number of rows read).
	if seen["SELECT member_events"] != 2 || len(seen) != len(wants) {
		t.Errorf("spans %v; want one per statement: %v", seen, wants)
	}
	for _, s := range rec.Ended() {
		if s.Name() == "SELECT member_events" {
			for _, kv := range s.Attributes() {
				if kv.Key == "db.response.returned_rows" && kv.Value.AsInt64() != 2 {
					t.Errorf("the rows query read %d rows, want 2", kv.Value.AsInt64())
				}
			}
		}
	}
}
