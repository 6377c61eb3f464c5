// Package e2e_test drives the whole platform, in process, against the real
// PostgreSQL, Kafka and ClickHouse that scripts/deps.sh starts: a POS
// transaction published to channel.events.v1 must reach every hop, once, in
// one trace.
package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/telemetry"
)

// env is a running platform with its own databases and topics.
type env struct {
	cfg   platform.Config
	tel   *telemetry.Telemetry
	spans *tracetest.SpanRecorder
	pool  *pgxpool.Pool
	ch    driver.Conn
	conn  *grpc.ClientConn
	kafka *kafka.Client
	http  string // base URL of the HTTP/JSON gateway
	admin string // base URL of /metrics, /healthz and /readyz
	clock *clocktest.Clock
}

func start(t *testing.T) *env {
	t.Helper()
	return startWith(t, platform.AllStages)
}

// startWith runs every service and the given pipeline stages, with the
// configuration edited by edit.
func startWith(t *testing.T, stages []string, edit ...func(*platform.Config)) *env {
	t.Helper()
	return startAfter(t, stages, nil, edit...)
}

// startAfter is startWith with a step between the migrations and the
// platform's start (a server taken away, say).
func startAfter(t *testing.T, stages []string, beforeRun func(), edit ...func(*platform.Config)) *env {
	t.Helper()
	cfg, chConn := newConfig(t)
	for _, f := range edit {
		f(&cfg)
	}
	spans := tracetest.NewSpanRecorder()
	pe := platformtest.OpenT(t, cfg, testWriter{t}, telemetry.WithSpanProcessor(spans))
	if err := pe.P.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if beforeRun != nil {
		beforeRun()
	}
	clock := clocktest.New()
	tel := pe.Tel
	r := platformtest.StartT(t, pe.P, platform.Options{Services: platform.AllServices, Stages: stages, Now: clock.Now},
		platformtest.WithGateway(), platformtest.WithDialOptions(
			grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tel.Tracers), otelgrpc.WithPropagators(tel.Propagator)))))
	kc, err := kafka.NewClient(cfg.Kafka, pe.Kafka(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	return &env{cfg: cfg, tel: tel, spans: spans, pool: pe.P.Pool(), ch: chConn, conn: r.Conn, kafka: kc, http: "http://" + r.HTTP,
		admin: "http://" + r.Admin, clock: clock}
}

// newConfig is the platform's configuration on databases and topics of t's
// own, with its servers on loopback ports of their own; ch is a connection
// to its ClickHouse database.
func newConfig(t *testing.T) (cfg platform.Config, ch driver.Conn) {
	t.Helper()
	ch, chCfg := chtest.NewDB(t)
	return platform.Config{
		Postgres:   postgres.Config{URL: pgtest.NewDB(t), MaxConns: 20},
		ClickHouse: chCfg,
		Kafka:      kafkatest.Config(t),
		Telemetry:  telemetry.Config{ServiceName: "membercenter-e2e", LogLevel: "info"},
		Server:     server.Config{GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Grace: 5 * time.Second},
	}, ch
}

// within is the context of a test's calls: it ends after d, or with the
// test.
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// startWithin opens a test: the running platform, and the context of the
// test's calls, which ends d after the platform has started.
func startWithin(t *testing.T, d time.Duration) (*env, context.Context) {
	t.Helper()
	return start(t), within(t, d)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte(`"level":"ERROR"`)) || bytes.Contains(b, []byte(`"level":"WARN"`)) {
		w.t.Log(strings.TrimSpace(string(b)))
	}
	return len(b), nil
}

var _ io.Writer = testWriter{}

// eventually polls cond until it holds or the deadline passes
// (pgtest.Eventually). It is for state that settles asynchronously (rows
// written by another process); it never stands in for a synchronisation
// the test could wait on.
func eventually(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	pgtest.Eventually(t, what, cond)
}

// lastWednesdayNoon is a recent weekday noon in Shanghai on the test
// clock: no weekend or birthday campaign applies to a purchase then,
// whatever date the suite is pinned to.
func lastWednesdayNoon() time.Time {
	sh, _ := time.LoadLocation("Asia/Shanghai")
	return clocktest.LastWednesdayNoon(clocktest.Start().In(sh))
}

// identifiers are a shopper's phone and, unless card is empty, member card.
func identifiers(phone, card string) []*mcv1.Identifier {
	ids := []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}}
	if card != "" {
		ids = append(ids, &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: card})
	}
	return ids
}

func posTransaction(id, phone, card string, amountMinor int64) *mcv1.ChannelEvent {
	return &mcv1.ChannelEvent{
		EventId: id, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-001", OccurredAt: timestamppb.New(lastWednesdayNoon()),
		Identifiers: identifiers(phone, card),
		Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{
			OrderId: "O-" + id, Total: &mcv1.Money{Currency: "CNY", AmountMinor: amountMinor},
			Items: []*mcv1.LineItem{{Sku: "TEA-L", Category: "tea", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amountMinor}}},
		}},
	}
}

// publish writes value to channel.events.v1 under key, as a channel does.
func (e *env) publish(t *testing.T, ctx context.Context, key string, value []byte) {
	t.Helper()
	r := &kgo.Record{Topic: e.cfg.Kafka.Topics.ChannelEvents, Key: []byte(key), Value: value}
	if err := e.kafka.ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// publishEvent is publish of a channel event.
func (e *env) publishEvent(t *testing.T, ctx context.Context, key string, ev *mcv1.ChannelEvent) {
	t.Helper()
	v, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	e.publish(t, ctx, key, v)
}

// buyOnce has each shopper (a phone) buy once at a POS, under event ids
// prefix-0, prefix-1, …, and returns their members in the same order.
func (e *env) buyOnce(t *testing.T, ctx context.Context, prefix string, phones ...string) []string {
	t.Helper()
	members := make([]string, len(phones))
	for i, phone := range phones {
		e.publishEvent(t, ctx, phone, posTransaction(fmt.Sprintf("%s-%d", prefix, i), phone, fmt.Sprintf("c-%s-%d", prefix, i), 10_000))
	}
	for i := range phones {
		eventually(t, "the shopper's member", func() (bool, error) {
			err := e.pool.QueryRow(ctx, `SELECT member_id::text FROM ingested_events WHERE event_id = $1`, fmt.Sprintf("%s-%d", prefix, i)).Scan(&members[i])
			return err == nil, nil
		})
	}
	return members
}

// exportSegment is the sorted member ids ExportSegment streams for expr
// and purpose p.
func exportSegment(ctx context.Context, profiles mcv1.ProfileServiceClient, expr string, p mcv1.ConsentPurpose) ([]string, error) {
	s, err := profiles.ExportSegment(ctx, &mcv1.ExportSegmentRequest{Expression: expr, Purpose: p})
	if err != nil {
		return nil, err
	}
	var ids []string
	for {
		m, err := s.Recv()
		if err == io.EOF {
			slices.Sort(ids)
			return ids, nil
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, m.GetMemberIds()...)
	}
}

// createMember resolves phone (and card, unless empty) on channel ch,
// creating the member, and returns its id.
func (e *env) createMember(t *testing.T, ctx context.Context, ch mcv1.Channel, key, phone, card string) string {
	t.Helper()
	r, err := mcv1.NewIdentityServiceClient(e.conn).Resolve(ctx, &mcv1.ResolveRequest{Channel: ch, CreateIfMissing: true,
		IdempotencyKey: key, Identifiers: identifiers(phone, card)})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetMemberId()
}

// forEachRow runs sql on pool, scans each row into dest and calls fn after
// each, failing t on any error.
func forEachRow(t *testing.T, ctx context.Context, pool *pgxpool.Pool, dest []any, fn func(), sql string, args ...any) {
	t.Helper()
	rows, _ := pool.Query(ctx, sql, args...) // a failed query's error is ForEachRow's too
	if _, err := pgx.ForEachRow(rows, dest, func() error { fn(); return nil }); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// readTopic reads the committed records of topic from its start until it
// has want of them and a poll of quiet brings no more; it fails t if that
// takes more than 90 seconds.
func readTopic(t *testing.T, ctx context.Context, brokers []string, topic string, want int, quiet time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	rctx, cancelRead := context.WithTimeout(ctx, 90*time.Second)
	defer cancelRead()
	for {
		pctx, cancel := context.WithTimeout(rctx, quiet)
		fs := cl.PollFetches(pctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r); n++ })
		if n == 0 && len(out) >= want {
			return out
		}
		if rctx.Err() != nil {
			t.Fatalf("%s: %d records, want %d", topic, len(out), want)
		}
	}
}

// nextChange reads the stream until the next change other than a label
// change (the tag worker's label changes interleave with the others, in an
// order that depends on which worker gets to the member first).
func nextChange(t *testing.T, s mcv1.SyncService_SubscribeClient) *mcv1.MemberChange {
	t.Helper()
	for {
		msg, err := s.Recv()
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if c := msg.GetChange(); c != nil && c.GetLabelsChanged() == nil {
			return c
		}
		if r := msg.GetResyncRequired(); r != nil {
			t.Fatalf("resync required: %s", r.GetReason())
		}
	}
}

func TestPOSTransactionEndToEnd(t *testing.T) {
	e, ctx := startWithin(t, 90*time.Second)

	stream := e.subscribe(t, ctx, &mcv1.SubscribeRequest{})

	// The POS checkout starts the trace every hop must join.
	const phone, card = "13912345678", "c0012345"
	tctx, root := e.tel.Tracers.Tracer("pos").Start(ctx, "pos checkout")
	ev := posTransaction("pos-e2e-1", phone, card, 12_345) // ¥123.45 → 123 points
	value, _ := proto.Marshal(ev)
	// A malformed record on the same partition, produced with it (so ingest
	// gets both in one batch), must neither block it nor break its trace.
	garbage := []byte("\x0a\xff\xff not an event")
	topic := e.cfg.Kafka.Topics.ChannelEvents
	if err := e.kafka.ProduceSync(ctx,
		&kgo.Record{Topic: topic, Key: []byte(phone), Value: value, Context: tctx},
		&kgo.Record{Topic: topic, Key: []byte(phone), Value: garbage, Context: ctx},
	).FirstErr(); err != nil {
		t.Fatal(err)
	}
	root.End()
	traceID := root.SpanContext().TraceID()

	// Hop: the change stream gets the member's creation, then the points.
	created := nextChange(t, stream)
	if created.GetMemberCreated() == nil || created.GetSequence() != 1 {
		t.Fatalf("first change = %v, want member_created with sequence 1", created)
	}
	memberID := created.GetMemberId()
	earned := nextChange(t, stream)
	if earned.GetMemberId() != memberID || earned.GetSequence() <= created.GetSequence() {
		t.Fatalf("next change = %v, want a later sequence of %s", earned, memberID)
	}
	if p := earned.GetPointsChanged(); p.GetDelta() != 123 || p.GetBalance() != 123 || p.GetKind() != mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EARN {
		t.Fatalf("points change = %v, want +123 → 123", p)
	}
	if earned.GetCauseId() != ev.GetEventId() {
		t.Fatalf("points change cause = %q, want the event id", earned.GetCauseId())
	}

	// Hop: PostgreSQL holds the member, its identifiers (hashed, never raw),
	// the balanced ledger transaction and the published outbox rows.
	var members, idents, rawPhones int
	q := func(sql string, dst *int, args ...any) {
		t.Helper()
		if err := e.pool.QueryRow(ctx, sql, args...).Scan(dst); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	q(`SELECT count(*) FROM members WHERE member_id = $1`, &members, memberID)
	q(`SELECT count(*) FROM member_identifiers WHERE member_id = $1`, &idents, memberID)
	q(`SELECT count(*) FROM member_identifiers
	    WHERE masked LIKE '%12345678%' OR cause_id LIKE '%12345678%'
	       OR position(convert_to('12345678', 'UTF8') IN value_hash) > 0
	       OR position(convert_to('12345678', 'UTF8') IN coalesce(value_cipher, ''::bytea)) > 0`, &rawPhones)
	if members != 1 || idents != 2 || rawPhones != 0 {
		t.Fatalf("members=%d identifiers=%d raw phone rows=%d; want 1, 2, 0", members, idents, rawPhones)
	}
	var memberLeg, liabilityLeg int
	q(`SELECT coalesce(sum(delta), 0) FROM ledger_entries WHERE member_id = $1`, &memberLeg, memberID)
	q(`SELECT coalesce(sum(delta), 0) FROM ledger_entries WHERE account = 'programme:liability'`, &liabilityLeg)
	if memberLeg != 123 || liabilityLeg != -123 {
		t.Fatalf("ledger legs: member %d, liability %d; want 123 and -123", memberLeg, liabilityLeg)
	}
	// The relay marks rows published right after Kafka acknowledges them.
	eventually(t, "every outbox row marked published", func() (bool, error) {
		var published int
		q(`SELECT count(*) FROM outbox o WHERE member_id = $1 AND NOT EXISTS (SELECT FROM outbox_pending p WHERE p.outbox_id = o.outbox_id)`, &published, memberID)
		return published >= int(earned.GetSequence()), nil
	})

	// Hop: the dead-letter topic has the malformed record, bytes intact.
	letter := e.readDLQ(t, ctx)
	if !bytes.Equal(letter.Record.Value, garbage) || letter.Stage != "ingest" || !strings.Contains(letter.Reason, "not a ChannelEvent") {
		t.Fatalf("dead letter = stage %q reason %q value %q", letter.Stage, letter.Reason, letter.Record.Value)
	}

	// Hop: ClickHouse has the fact row, stamped with the POS trace.
	eventually(t, "ClickHouse member_events row", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM member_events FINAL WHERE event_id = 'pos-e2e-1' AND member_id = ? AND amount_minor = 12345 AND trace_id = ?`,
			memberID, traceID.String()).Scan(&n)
		return n == 1, err
	})
	eventually(t, "ClickHouse member_changes rows", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM member_changes FINAL WHERE member_id = ? AND sequence IN (1, ?)`, memberID, earned.GetSequence()).Scan(&n)
		return n == 2, err
	})

	// One trace from the till to the subscriber and to ClickHouse.
	wantSpans := []string{
		e.cfg.Kafka.Topics.ChannelEvents + " publish",
		e.cfg.Kafka.Topics.ChannelEvents + " process", // ingest
		e.cfg.Kafka.Topics.MemberEvents + " publish",
		e.cfg.Kafka.Topics.MemberEvents + " process",  // benefits and sink
		e.cfg.Kafka.Topics.MemberChanges + " publish", // relay
		e.cfg.Kafka.Topics.MemberChanges + " process", // sync hub and sink
		"sync deliver",
	}
	eventually(t, "every hop's span in the POS trace", func() (bool, error) {
		names := spanNames(e.spans.Ended(), traceID)
		for _, w := range wantSpans {
			if names[w] == 0 {
				return false, errors.New("missing span " + w)
			}
		}
		return names[e.cfg.Kafka.Topics.MemberEvents+" process"] >= 2 && names[e.cfg.Kafka.Topics.MemberChanges+" process"] >= 2, nil
	})
	if !hasDBSpan(e.spans.Ended(), traceID) {
		t.Fatal("no PostgreSQL span in the POS trace")
	}
}

func spanNames(spans []sdktrace.ReadOnlySpan, id trace.TraceID) map[string]int {
	out := map[string]int{}
	for _, s := range spans {
		if s.SpanContext().TraceID() == id {
			out[s.Name()]++
		}
	}
	return out
}

// hasDBSpan reports whether a database statement ran for trace id: in
// the trace itself, or in a batch's trace linked to it (a stage that
// applies several records at once runs their statements in a batch span
// that links to each record's span, as an SRE's trace viewer follows).
func hasDBSpan(spans []sdktrace.ReadOnlySpan, id trace.TraceID) bool {
	traces := map[trace.TraceID]bool{id: true}
	for _, s := range spans {
		for _, l := range s.Links() {
			if l.SpanContext.TraceID() == id {
				traces[s.SpanContext().TraceID()] = true
			}
		}
	}
	for _, s := range spans {
		if !traces[s.SpanContext().TraceID()] {
			continue
		}
		for _, a := range s.Attributes() {
			if a.Key == "db.system" || a.Key == "db.system.name" {
				return true
			}
		}
	}
	return false
}

func (e *env) readDLQ(t *testing.T, ctx context.Context) dlq.Letter {
	t.Helper()
	return e.readLetters(t, ctx, 1)[0]
}

func TestRedeliveredEventChangesNothing(t *testing.T) {
	e, ctx := startWithin(t, 90*time.Second)
	stream := e.subscribe(t, ctx, &mcv1.SubscribeRequest{})

	const phone, card = "13700000001", "c-dup"
	first, second := posTransaction("dup-1", phone, card, 5_000), posTransaction("dup-2", phone, card, 700)
	// The first event twice (as after a producer retry), then another one.
	// Same key, same partition: the second is processed after the copy.
	e.publishEvent(t, ctx, phone, first)
	e.publishEvent(t, ctx, phone, first)
	e.publishEvent(t, ctx, phone, second)

	var changes []*mcv1.MemberChange
	for len(changes) < 3 {
		changes = append(changes, nextChange(t, stream))
	}
	member := changes[0].GetMemberId()
	for i, c := range changes {
		if c.GetMemberId() != member || (i > 0 && c.GetSequence() <= changes[i-1].GetSequence()) {
			t.Fatalf("change %d = %v; want increasing sequences of one member", i, c)
		}
	}
	if d := changes[1].GetPointsChanged().GetDelta(); d != 50 {
		t.Fatalf("first credit = %d, want 50", d)
	}
	if p := changes[2].GetPointsChanged(); p.GetDelta() != 7 || p.GetBalance() != 57 {
		t.Fatalf("second credit = %v, want +7 → 57 (the copy credited nothing)", p)
	}
	bal, err := mcv1.NewBenefitsServiceClient(e.conn).GetBalance(ctx, &mcv1.GetBalanceRequest{MemberId: member})
	if err != nil {
		t.Fatal(err)
	}
	if bal.GetAvailable()+bal.GetPending() != 57 || bal.GetLifetimeEarned() != 57 {
		t.Fatalf("balance = %v, want 57", bal)
	}
	led, err := mcv1.NewBenefitsServiceClient(e.conn).ListLedger(ctx, &mcv1.ListLedgerRequest{MemberId: member})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(led.GetEntries()); n != 2 {
		t.Fatalf("ledger has %d entries, want 2", n)
	}
	eventually(t, "ClickHouse dedupes the redelivered event", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM member_events FINAL WHERE member_id = ?`, member).Scan(&n)
		return n == 2, err
	})
}

// A flow started by a gRPC call is one trace too: Resolve creates a member,
// and the change reaches a subscriber through the outbox relay and the hub.
func TestResolveRPCTraceReachesSubscriber(t *testing.T) {
	e, ctx := startWithin(t, 60*time.Second)
	stream := e.subscribe(t, ctx, &mcv1.SubscribeRequest{})
	tctx, root := e.tel.Tracers.Tracer("app").Start(ctx, "app sign-up")
	resp, err := mcv1.NewIdentityServiceClient(e.conn).Resolve(tctx, &mcv1.ResolveRequest{
		Identifiers:     []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: " Mei.Lin@Example.COM "}},
		Channel:         mcv1.Channel_CHANNEL_APP,
		CreateIfMissing: true,
		IdempotencyKey:  "signup-1",
	})
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetCreated() || resp.GetMemberId() == "" {
		t.Fatalf("Resolve = %v, want a created member", resp)
	}
	c := nextChange(t, stream)
	if c.GetMemberId() != resp.GetMemberId() || c.GetMemberCreated() == nil {
		t.Fatalf("change = %v, want member_created of %s", c, resp.GetMemberId())
	}
	if m := c.GetMemberCreated().GetIdentifiers()[0].GetMasked(); strings.Contains(m, "mei.lin") {
		t.Fatalf("change carries the raw e-mail: %q", m)
	}
	traceID := root.SpanContext().TraceID()
	eventually(t, "relay and sync spans in the Resolve trace", func() (bool, error) {
		names := spanNames(e.spans.Ended(), traceID)
		for _, w := range []string{
			"membercenter.v1.IdentityService/Resolve",
			e.cfg.Kafka.Topics.MemberChanges + " publish",
			e.cfg.Kafka.Topics.MemberChanges + " process",
			"sync deliver",
		} {
			if names[w] == 0 {
				return false, errors.New("missing span " + w)
			}
		}
		return true, nil
	})
}

// A request that breaks its .proto rules is refused with InvalidArgument
// naming the field, and changes nothing.
func TestInvalidRequestsNameTheField(t *testing.T) {
	e, ctx := startWithin(t, 30*time.Second)
	idc := mcv1.NewIdentityServiceClient(e.conn)
	cases := []struct {
		name  string
		req   *mcv1.ResolveRequest
		field string
	}{
		{"no identifiers", &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, IdempotencyKey: "k"}, "identifiers"},
		{"no channel", &mcv1.ResolveRequest{IdempotencyKey: "k",
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13812345678"}}}, "channel"},
		{"no idempotency key", &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS,
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13812345678"}}}, "idempotency_key"},
		{"unparseable phone", &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, IdempotencyKey: "k2", CreateIfMissing: true,
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "call me"}}}, "identifiers[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := idc.Resolve(ctx, tc.req)
			st, _ := status.FromError(err)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("Resolve = %v; want InvalidArgument naming %s", err, tc.field)
			}
		})
	}
	var members int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM members`).Scan(&members); err != nil {
		t.Fatal(err)
	}
	if members != 0 {
		t.Fatalf("%d members created by invalid requests", members)
	}
	_, err := mcv1.NewBenefitsServiceClient(e.conn).GetBalance(ctx, &mcv1.GetBalanceRequest{MemberId: "01a2081c-7e05-7692-b601-0b712861c640"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetBalance of an unknown member = %v, want NotFound", err)
	}
}

// Identity refusals reach a channel as the right status, naming the rule,
// and change nothing.
func TestIdentityRefusalsOverGRPC(t *testing.T) {
	e, ctx := startWithin(t, 30*time.Second)
	idc := mcv1.NewIdentityServiceClient(e.conn)
	member := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "ok", "13512345678", "")
	var before int
	count := func() int {
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM members) + (SELECT count(*) FROM member_identifiers) + (SELECT count(*) FROM merges)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before = count()
	cases := []struct {
		name string
		call func() error
		code codes.Code
		want string
	}{
		{"blocked phone", func() error {
			_, err := idc.Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "b",
				Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13800000000"}}})
			return err
		}, codes.FailedPrecondition, "phone.blocked"},
		{"device alone cannot create", func() error {
			_, err := idc.Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_APP, CreateIfMissing: true, IdempotencyKey: "d",
				Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: "tablet-9"}}})
			return err
		}, codes.FailedPrecondition, "may_create"},
		{"merge an unknown member", func() error {
			_, err := idc.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: "01a2081c-7e05-7692-b601-0b712861c640", TargetMemberId: member, Reason: "x", IdempotencyKey: "m"})
			return err
		}, codes.NotFound, "01a2081c-7e05-7692-b601-0b712861c640"},
		{"merge into itself", func() error {
			_, err := idc.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: member, TargetMemberId: member, Reason: "x", IdempotencyKey: "m2"})
			return err
		}, codes.FailedPrecondition, "itself"},
		{"unmerge a malformed id", func() error {
			_, err := idc.Unmerge(ctx, &mcv1.UnmergeRequest{MergeId: "nope", Reason: "x", IdempotencyKey: "u"})
			return err
		}, codes.InvalidArgument, "merge_id"},
		{"merge without reason", func() error {
			_, err := idc.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: member, TargetMemberId: member, IdempotencyKey: "m3"})
			return err
		}, codes.InvalidArgument, "reason"},
		{"graph of an unknown member", func() error {
			_, err := idc.GetIdentityGraph(ctx, &mcv1.GetIdentityGraphRequest{MemberId: "01a2081c-7e05-7692-b601-0b712861c641"})
			return err
		}, codes.NotFound, "01a2081c-7e05-7692-b601-0b712861c641"},
		{"wrong member code", func() error {
			_, err := idc.VerifyMemberCode(ctx, &mcv1.VerifyMemberCodeRequest{Code: "0000000001123456"})
			return err
		}, codes.Unauthenticated, "invalid or expired"},
		{"assertion from an unknown terminal", func() error {
			_, err := idc.VerifyDeviceAssertion(ctx, &mcv1.VerifyDeviceAssertionRequest{DeviceId: "t-1", Assertion: []byte{1}, Signature: []byte{2}})
			return err
		}, codes.PermissionDenied, "not registered"},
	}
	for _, tc := range cases {
		err := tc.call()
		st, _ := status.FromError(err)
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.want) {
			t.Errorf("%s: %v; want %s naming %q", tc.name, err, tc.code, tc.want)
		}
	}
	if after := count(); after != before {
		t.Fatalf("refused requests changed the database: %d rows → %d", before, after)
	}
}

// Baskets that break the rules are refused with the right status, naming
// the field or the reason, and change nothing.
func TestBenefitsRefusalsOverGRPC(t *testing.T) {
	e, ctx := startWithin(t, 30*time.Second)
	m := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "m", "13512340000", "")
	bc := mcv1.NewBenefitsServiceClient(e.conn)
	basket := func(total int64, currency string, items int) *mcv1.Basket {
		b := &mcv1.Basket{OrderId: "O-1", Channel: mcv1.Channel_CHANNEL_POS, Total: &mcv1.Money{Currency: currency, AmountMinor: total}}
		for i := 0; i < items; i++ {
			b.Items = append(b.Items, &mcv1.LineItem{Sku: "S", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: total}})
		}
		return b
	}
	count := func() (n int) {
		if err := e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM ledger_transactions) + (SELECT count(*) FROM orders)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	withRedeem := basket(10_000, "CNY", 1)
	withRedeem.RedeemPoints = 1_000
	future := basket(100, "CNY", 1)
	future.At = timestamppb.New(e.clock.Now().Add(time.Hour))
	cases := []struct {
		name string
		b    *mcv1.Basket
		code codes.Code
		want string
	}{
		{"empty basket", basket(100, "CNY", 0), codes.InvalidArgument, "items"},
		{"negative total", basket(-5, "CNY", 1), codes.InvalidArgument, "total"},
		{"malformed currency", basket(100, "yuan", 1), codes.InvalidArgument, "currency"},
		{"unknown currency", basket(100, "USD", 1), codes.InvalidArgument, "basket.total.currency"},
		{"future time", future, codes.InvalidArgument, "basket.at"},
		{"overspend", withRedeem, codes.FailedPrecondition, "only 0 points are available"},
	}
	for _, tc := range cases {
		_, err := bc.Commit(ctx, &mcv1.CommitRequest{MemberId: m, Basket: tc.b, IdempotencyKey: tc.name})
		if st, _ := status.FromError(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.want) {
			t.Errorf("%s: %v; want %s naming %q", tc.name, err, tc.code, tc.want)
		}
	}
	if _, err := bc.Adjust(ctx, &mcv1.AdjustRequest{MemberId: m, Points: 10, IdempotencyKey: "adj"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("adjust without a reason: %v", err)
	}
	if after := count(); after != before {
		t.Fatalf("refused requests changed the ledger or orders: %d → %d", before, after)
	}
}

// subscribe opens a change stream and reads its Ready: what follows is live.
func (e *env) subscribe(t *testing.T, ctx context.Context, req *mcv1.SubscribeRequest) mcv1.SyncService_SubscribeClient {
	t.Helper()
	stream, err := mcv1.NewSyncServiceClient(e.conn).Subscribe(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetReady() == nil {
		t.Fatalf("first message = %v, %v; want ready", m, err)
	}
	return stream
}
