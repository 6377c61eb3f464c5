package migration_test

import (
	"bufio"
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/cdc"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"

	"github.com/membercenter/membercenter/services/migration"
)

// debezium renders the sample deltas as a PostgreSQL connector's change
// events (lsn = pos), every other one with the schema/payload wrapper.
func debezium(t *testing.T) []*kgo.Record {
	t.Helper()
	var out []*kgo.Record
	for _, name := range []string{"delta-2026-06-10T09.jsonl", "delta-2026-06-12T09.jsonl"} {
		f, err := os.Open(filepath.Join("testdata/catchup", name))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var d struct {
				Pos           int64
				Table, Op     string
				Before, After map[string]any
			}
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				t.Fatal(err)
			}
			row := d.After
			if row == nil {
				row = d.Before
			}
			out = append(out, envelope(t, len(out)%2 == 1, row["legacy_id"].(string), map[string]any{"op": d.Op, "before": d.Before, "after": d.After,
				"source": map[string]any{"connector": "postgresql", "db": "crm", "schema": "public", "table": d.Table, "lsn": d.Pos * 100, "snapshot": "false"},
				"ts_ms":  1781000000000}))
		}
		f.Close()
	}
	return out
}

// envelope is a change event's record, keyed by legacy id (a member's
// changes in one partition, in order).
func envelope(t *testing.T, wrapped bool, key string, payload map[string]any) *kgo.Record {
	t.Helper()
	var v any = payload
	if wrapped {
		v = map[string]any{"schema": map[string]any{"type": "struct", "name": "crm.public.Envelope", "fields": []any{
			map[string]any{"field": "after", "type": "struct", "optional": true, "fields": []any{
				map[string]any{"field": "legacy_id", "type": "string"}}}}}, "payload": payload}
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Key: []byte(key), Value: b}
}

// The sample deltas as a Debezium stream, with bad records among them,
// produced twice to a real topic: consumed until caught up, the platform
// reaches the final export (verify agrees at 100%), every bad record is
// dead-lettered with its reason while its neighbours apply, and the second
// copy of the stream — or a second run over the topic — changes nothing.
// cdcTopic makes a two-partition topic for the test, deleted after it, and
// returns a client producing to it.
func cdcTopic(t *testing.T, ctx context.Context, kcfg kafka.Config, topic string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 2, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), topic) })
	if err := kafka.WaitTopicsKnown(ctx, cl, map[string]int32{topic: 2}); err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestCDCStreamTwice(t *testing.T) {
	c, pool, conn, cu := imported(t)
	kcfg := kafkatest.Config(t)
	kcfg.DLQSealer = cu.Identity.PII()
	topic := kcfg.GroupPrefix + ".legacy.crm.cdc"
	cl := cdcTopic(t, c, kcfg, topic)

	src := func(table string, pos int64) map[string]any {
		return map[string]any{"connector": "postgresql", "table": table, "lsn": pos}
	}
	bad := []*kgo.Record{
		{Key: []byte("L0001"), Value: []byte(`{"op":"u","after":{"legacy_id":"L0001"`)},
		envelope(t, false, "L0001", map[string]any{"op": "c", "after": map[string]any{"legacy_id": "L0001", "store": "SH-01"}, "source": src("stores", 200000)}),
		envelope(t, true, "L0002", map[string]any{"op": "c", "after": map[string]any{"legacy_id": "L0002", "earned": 10, "remaining": 10,
			"earned_at": "2026-06-01"}, "source": src("lots", 200001)}),
		envelope(t, false, "L0002", map[string]any{"op": "c", "after": map[string]any{"legacy_id": "L0002", "ref": "X-1", "earned": 10,
			"remaining": 12.5, "earned_at": "2026-06-01"}, "source": src("lots", 200002)}),
		envelope(t, false, "L0002", map[string]any{"op": "c", "after": map[string]any{"legacy_id": "L0002", "type": "phone", "scope": nil,
			"value": "13900010001"}, "source": src("identifiers", 200003)}),
	}
	good := envelope(t, true, "L0002", map[string]any{"op": "c", "after": map[string]any{"legacy_id": "L0002", "type": "member_card",
		"scope": nil, "value": "CARD-0002"}, "source": src("identifiers", 200004)})
	stream := append(debezium(t), bad...)
	stream = append(stream, &kgo.Record{Key: []byte("L0002")}, good) // a tombstone, then a good change
	for range 2 {
		for _, r := range stream {
			cp := *r
			if err := cl.ProduceSync(c, &cp).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}

	run := func(group string) migration.CatchUpReport {
		t.Helper()
		cu := &migration.CatchUp{Importer: cu.Importer, Facts: conn}
		if err := cdc.Run(c, kcfg, kafkatest.Telemetry(), cdc.Config{Topics: []string{topic}, Group: group, DLQTopic: kcfg.Topics.DLQ,
			UntilCaughtUp: true, Poll: 20e6}, cu); err != nil {
			t.Fatalf("cdc: %v", err)
		}
		return cu.Report()
	}
	rep := run(kcfg.Group("import-cdc-crm"))
	// The first copy: 13 applied (the sample's 12 and the card), one member
	// imported, one deletion reported; the second copy stale (15); the 5
	// bad records refused in each.
	if rep.Applied != 13 || rep.Imported != 1 || len(rep.Deleted) != 1 || rep.Stale != 15 || len(rep.Refused) != 10 || rep.Conflicts != 2 {
		t.Fatalf("cdc: applied %d, imported %d, deleted %d, stale %d, refused %d (%d conflicts): %v",
			rep.Applied, rep.Imported, len(rep.Deleted), rep.Stale, len(rep.Refused), rep.Conflicts, rep.Refused)
	}
	var reasons []string
	for _, r := range rep.Refused {
		reasons = append(reasons, r.Error())
	}
	sort.Strings(reasons)
	joined := strings.Join(reasons, "\n")
	for _, want := range []string{"not a Debezium change event", `unknown table "stores"`, "missing key column ref",
		`remaining: "12.5" is not a whole number`, "conflict: an identifier already belongs to a member: phone 139****0001"} {
		if strings.Count(joined, want) != 2 {
			t.Errorf("refusal %q not reported once per copy:\n%s", want, joined)
		}
	}
	// Dead-lettered with their reasons (sealed: the rows hold identifiers).
	letters := kafkatest.ReadTopic(t, c, kcfg, kcfg.Topics.DLQ)
	n := 0
	for _, l := range letters {
		if kafka.Header(l, dlq.HeaderStage) == cdc.Stage {
			n++
			if kafka.Header(l, dlq.HeaderTopic) != topic || kafka.Header(l, dlq.HeaderReason) == "" || kafka.Header(l, dlq.HeaderSealed) == "" {
				t.Errorf("letter headers: %v", l.Headers)
			}
		}
	}
	if n != 10 {
		t.Errorf("%d dead letters, want 10", n)
	}
	v, err := cu.Verify(c, open(t, "testdata/catchup-final"), nil)
	if err != nil || !v.OK() {
		t.Fatalf("verify after the CDC stream: %v %v", err, v.Mismatches)
	}
	want := migration.OrderTotals{Orders: 7, Amount: 348000, Lines: 4}
	if source, stored, err := cu.VerifyOrders(c, open(t, "testdata/catchup-final"), conn); err != nil || source != want || stored != want {
		t.Fatalf("verify orders: source %s, ClickHouse %s, want %s: %v", source, stored, want, err)
	}

	// The same group again finds nothing new; another group reads the
	// topic from its start and changes nothing.
	before := state(t, pool)
	if rep := run(kcfg.Group("import-cdc-crm")); rep.Read != 0 {
		t.Errorf("the same group read %d changes again", rep.Read)
	}
	if rep := run(kcfg.Group("import-cdc-crm-again")); rep.Applied+rep.Imported != 0 || rep.Stale != 30 {
		t.Errorf("a second group over the topic: %+v", rep)
	}
	if after := state(t, pool); after != before {
		t.Errorf("a second run over the topic changed the state:\n before %s\n after  %s", before, after)
	}
}

// Debezium envelopes of each connector give the change's table, operation,
// rows and position; a tombstone is nothing.
func TestDecodeDebezium(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		pos         []int64
		table, op   string
		after       map[string]string
	}{
		{"postgresql", `{"op":"c","after":{"legacy_id":"L1","remaining":5,"earned_at":1780000000000},"source":{"table":"lots","lsn":33832456}}`,
			[]int64{33832456}, "lots", "c", map[string]string{"legacy_id": "L1", "remaining": "5", "earned_at": "2026-05-28T20:26:40Z"}},
		{"mysql", `{"schema":{"type":"struct","fields":[{"field":"after","type":"struct","fields":[{"field":"month","type":"int32","name":"io.debezium.time.Date"}]}]},
			"payload":{"op":"u","before":null,"after":{"legacy_id":"L1","month":20604,"spend":1},"source":{"table":"months","file":"mysql-bin.000003","pos":154,"row":2}}}`,
			[]int64{3, 154, 2}, "months", "u", map[string]string{"legacy_id": "L1", "month": "2026-05", "spend": "1"}},
		{"oracle", `{"op":"r","after":{"LEGACY_ID":"x"},"source":{"table":"members","scn":"2926781"}}`,
			[]int64{2926781}, "members", "r", map[string]string{"LEGACY_ID": "x"}},
	} {
		c, err := migration.DecodeDebezium([]byte(tc.value))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c.Table != tc.table || c.Op != tc.op || !slices.Equal(c.Position, tc.pos) || !maps.Equal(c.After, tc.after) {
			t.Errorf("%s: %+v", tc.name, c)
		}
	}
	if c, err := migration.DecodeDebezium(nil); c != nil || err != nil {
		t.Errorf("tombstone: %v %v", c, err)
	}
	if _, err := migration.DecodeDebezium([]byte(`{"op":"c","after":{},"source":{"table":"lots"}}`)); err == nil || !strings.Contains(err.Error(), "no position") {
		t.Errorf("no position: %v", err)
	}
}

// A CDC topic written in Kafka transactions (Debezium with exactly-once
// delivery) ends in a commit marker that no record reaches, and holds an
// aborted transaction: `import cdc --until-caught-up` still stops once
// every committed change is applied, and the aborted one is never applied.
func TestCDCUntilCaughtUpOnATransactionalTopic(t *testing.T) {
	c, _, conn, cu := imported(t)
	kcfg := kafkatest.Config(t)
	kcfg.DLQSealer = cu.Identity.PII()
	topic := kcfg.GroupPrefix + ".legacy.crm.cdc-eos"
	cdcTopic(t, c, kcfg, topic)
	tx, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.DefaultProduceTopic(topic), kgo.TransactionalID(topic+"-producer"))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	send := func(commit kgo.TransactionEndTry, rs ...*kgo.Record) {
		t.Helper()
		if err := tx.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			cp := *r
			if err := tx.ProduceSync(c, &cp).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.EndTransaction(c, commit); err != nil {
			t.Fatal(err)
		}
	}
	aborted := envelope(t, false, "L0002", map[string]any{"op": "c", "after": map[string]any{"legacy_id": "L0002", "type": "member_card",
		"scope": nil, "value": "CARD-ABORTED"}, "source": map[string]any{"connector": "postgresql", "table": "identifiers", "lsn": 300000}})
	stream := debezium(t)
	send(kgo.TryCommit, stream[:len(stream)/2]...)
	send(kgo.TryAbort, aborted)
	send(kgo.TryCommit, stream[len(stream)/2:]...)

	run := &migration.CatchUp{Importer: cu.Importer, Facts: conn}
	if err := cdc.Run(c, kcfg, kafkatest.Telemetry(), cdc.Config{Topics: []string{topic}, Group: kcfg.Group("import-cdc-eos"), DLQTopic: kcfg.Topics.DLQ,
		UntilCaughtUp: true, Poll: 20e6}, run); err != nil {
		t.Fatalf("cdc over a transactional topic: %v", err)
	}
	if rep := run.Report(); rep.Applied != 12 || rep.Imported != 1 || len(rep.Refused) != 0 {
		t.Fatalf("cdc: applied %d, imported %d, refused %v; want the sample's 12 and 1, none refused", rep.Applied, rep.Imported, rep.Refused)
	}
	v, err := cu.Verify(c, open(t, "testdata/catchup-final"), nil)
	if err != nil || !v.OK() {
		t.Fatalf("verify after the CDC stream: %v %v", err, v.Mismatches)
	}
}
