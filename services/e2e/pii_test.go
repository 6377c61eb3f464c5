package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

// After ingest and an attribute update, no raw phone number, e-mail address
// or name appears in any Kafka topic the platform writes, in any ClickHouse
// table, or in any PostgreSQL column (attributes, idempotency records and
// outbox payloads included): identifiers are found by keyed hash and shown
// from ciphertext, PII attributes are sealed and shown masked.
func TestNoRawPIIAfterIngest(t *testing.T) {
	e, ctx := startWithin(t, 90*time.Second)
	stream := e.subscribe(t, ctx, &mcv1.SubscribeRequest{})

	// Known values, in the forms a channel might send them.
	const national, e164, mail = "13712349876", "+8613712349876", "Wei.Zhang.PII@Example.com"
	needles := []string{national, e164, "8613712349876", strings.ToLower(mail), "wei.zhang.pii", "Wei.Zhang.PII"}
	events := []*mcv1.ChannelEvent{
		{EventId: "pii-1", Channel: mcv1.Channel_CHANNEL_POS, StoreId: "S1", OccurredAt: timestamppb.New(lastWednesdayNoon()),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: national}},
			Payload:     &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-pii-1", Total: &mcv1.Money{Currency: "CNY", AmountMinor: 5000}}}},
		{EventId: "pii-2", Channel: mcv1.Channel_CHANNEL_APP, OccurredAt: timestamppb.New(lastWednesdayNoon()),
			Identifiers: []*mcv1.Identifier{
				{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "+86 137-1234-9876"},
				{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: " " + mail + " "}},
			Payload: &mcv1.ChannelEvent_SignUp{SignUp: &mcv1.SignUp{}}},
		{EventId: "pii-3", Channel: mcv1.Channel_CHANNEL_MINIPROGRAM, OccurredAt: timestamppb.New(lastWednesdayNoon()),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: mail}},
			Payload:     &mcv1.ChannelEvent_Referral{Referral: &mcv1.Referral{ReferralCode: "R1", Referee: &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13712340000"}}}},
	}
	needles = append(needles, "13712340000")
	for _, ev := range events {
		e.publishEvent(t, ctx, national, ev)
	}
	// Created, e-mail linked, points credited: three changes.
	member := nextChange(t, stream).GetMemberId()
	for i := 0; i < 2; i++ {
		nextChange(t, stream)
	}
	// Contact details as attributes (a channel's profile form).
	needles = append(needles, "13600001234", "8613600001234", "Li.Na.Contact", "li.na.contact", "Li Nana Contact", "Jinji Lake Road 88")
	resp, err := mcv1.NewProfileServiceClient(e.conn).UpdateAttributes(ctx, &mcv1.UpdateAttributesRequest{MemberId: member, IdempotencyKey: "pii-attrs",
		Attributes: map[string]string{"mobile": "136 0000 1234", "contact_email": "Li.Na.Contact@Example.com", "name": "Li Nana Contact",
			"address": "Jinji Lake Road 88, Suzhou", "city": "Suzhou"}})
	if err != nil {
		t.Fatal(err)
	}
	if a := resp.GetProfile().GetAttributes(); a["mobile"] != "+8613*******34" || a["contact_email"] != "L***@example.com" || a["city"] != "Suzhou" {
		t.Errorf("attributes shown as %v", a)
	}
	for {
		if c := nextChange(t, stream); c.GetAttributesChanged() != nil {
			if c.GetAttributesChanged().GetAttributes()["name"] != "L***" {
				t.Errorf("attributes change %v", c)
			}
			break
		}
	}
	// An undeclared attribute is refused.
	if _, err := mcv1.NewProfileServiceClient(e.conn).UpdateAttributes(ctx, &mcv1.UpdateAttributesRequest{MemberId: member, IdempotencyKey: "pii-bad",
		Attributes: map[string]string{"wechat_phone": "13600001234"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("undeclared attribute: %v", err)
	}
	eventually(t, "every event and change in ClickHouse", func() (bool, error) {
		var evs, chs uint64
		if err := e.ch.QueryRow(ctx, `SELECT count() FROM member_events FINAL`).Scan(&evs); err != nil {
			return false, err
		}
		if err := e.ch.QueryRow(ctx, `SELECT count() FROM member_changes FINAL`).Scan(&chs); err != nil {
			return false, err
		}
		var outbox uint64
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&outbox); err != nil {
			return false, err
		}
		return evs == 3 && chs == outbox, nil
	})

	// A record ingest refuses, with the phone in its key and value: its
	// dead letter is sealed.
	e.publish(t, ctx, national, []byte("not a ChannelEvent: "+national+" "+mail))
	// A JSON event whose refusal quotes the phone (a number where a string
	// belongs): the reason in the clear header hides it.
	jsonEvent := &kgo.Record{Topic: e.cfg.Kafka.Topics.ChannelEvents, Key: []byte(national),
		Value:   []byte(`{"eventId":"pii-json","identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":` + national + `}]}`),
		Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte(kafka.ContentTypeJSON)}}}
	if err := e.kafka.ProduceSync(ctx, jsonEvent).FirstErr(); err != nil {
		t.Fatal(err)
	}

	// Kafka: every record the platform wrote after ingest, and the dead
	// letters: the three member events (ClickHouse has them), every change
	// of the outbox (published: ClickHouse has as many) and the two letters.
	var changes int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&changes); err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]int{e.cfg.Kafka.Topics.MemberEvents: len(events), e.cfg.Kafka.Topics.MemberChanges: changes, e.cfg.Kafka.Topics.DLQ: 2} {
		recs := readTopic(t, ctx, e.cfg.Kafka.Brokers, topic, want, 2*time.Second)
		for _, r := range recs {
			blob := append(append([]byte{}, r.Key...), r.Value...)
			for _, h := range r.Headers {
				blob = append(append(blob, h.Key...), h.Value...)
			}
			for _, n := range needles {
				if bytes.Contains(blob, []byte(n)) {
					t.Errorf("%s record %d@%d contains %q", topic, r.Partition, r.Offset, n)
				}
			}
		}
	}

	// ClickHouse: every column of every table.
	rows, err := e.ch.Query(ctx, `SELECT name FROM system.tables WHERE database = currentDatabase()`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	if len(tables) < 3 {
		t.Fatalf("ClickHouse tables = %v", tables)
	}
	for _, table := range tables {
		for _, row := range dumpCH(t, ctx, e, table) {
			for _, n := range needles {
				if strings.Contains(row, n) {
					t.Errorf("ClickHouse %s holds %q: %s", table, n, row)
				}
			}
		}
	}

	// PostgreSQL: every text, JSON, array and byte column of every table.
	pgRows, err := e.pool.Query(ctx, `SELECT table_name, column_name, data_type FROM information_schema.columns
		WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb', 'bytea', 'character varying', 'ARRAY')`)
	if err != nil {
		t.Fatal(err)
	}
	type col struct{ table, column, typ string }
	var cols []col
	for pgRows.Next() {
		var c col
		_ = pgRows.Scan(&c.table, &c.column, &c.typ)
		cols = append(cols, c)
	}
	pgRows.Close()
	if len(cols) < 20 {
		t.Fatalf("only %d columns to scan", len(cols))
	}
	for _, c := range cols {
		q := fmt.Sprintf(`SELECT count(*) FROM %q WHERE position($1 IN %q::text) > 0`, c.table, c.column)
		if c.typ == "bytea" {
			q = fmt.Sprintf(`SELECT count(*) FROM %q WHERE position(convert_to($1, 'UTF8') IN %q) > 0`, c.table, c.column)
		}
		for _, n := range needles {
			var hits int
			if err := e.pool.QueryRow(ctx, q, n).Scan(&hits); err != nil {
				t.Fatalf("scan %s.%s: %v", c.table, c.column, err)
			}
			if hits > 0 {
				t.Errorf("PostgreSQL %s.%s holds %q in %d rows", c.table, c.column, n, hits)
			}
		}
	}
}

// dumpCH renders every row of a ClickHouse table as text.
func dumpCH(t *testing.T, ctx context.Context, e *env, table string) []string {
	t.Helper()
	rows, err := e.ch.Query(ctx, "SELECT * FROM "+table)
	if err != nil {
		t.Fatalf("select %s: %v", table, err)
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	var out []string
	for rows.Next() {
		vals := make([]any, len(types))
		for i := range vals {
			vals[i] = reflect.New(types[i].ScanType()).Interface()
		}
		if err := rows.Scan(vals...); err != nil {
			t.Fatalf("scan %s: %v", table, err)
		}
		var cells []string
		for _, v := range vals {
			cells = append(cells, fmt.Sprint(reflect.ValueOf(v).Elem().Interface()))
		}
		out = append(out, strings.Join(cells, "|"))
	}
	return out
}
