package postgres_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

func TestMigrateIsIdempotent(t *testing.T) {
	pool := pgtest.NewPool(t, nil)
	applied, err := postgres.Migrate(context.Background(), pool)
	if err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	if len(applied) != 0 {
		t.Fatalf("second migrate applied %v, want nothing", applied)
	}
}

// memberCreatedAt is when newMember's members were created: a fixed day,
// so nothing in these tests depends on the day they run.
var memberCreatedAt = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func newMember(t *testing.T, q postgres.Querier) uuid.UUID {
	t.Helper()
	return newMemberAt(t, q, memberCreatedAt)
}

// newMemberAt inserts a new member created at.
func newMemberAt(t *testing.T, q postgres.Querier, at time.Time) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(context.Background(), q, id, at); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestLedgerRejectsUnbalancedTransaction(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, nil)
	member := newMember(t, pool)

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return postgres.InsertLedgerTransaction(ctx, tx, postgres.LedgerTransaction{
			TransactionID: uuid.New(), MemberID: member, Kind: "earn", Reason: "test", CauseID: "evt-1",
			CreatedAt: time.Now(),
			Entries: []postgres.LedgerEntry{
				{Account: postgres.MemberAccount(member), MemberID: &member, Delta: 10},
				{Account: postgres.LiabilityAccount, Delta: -9},
			},
		})
	})
	if err == nil {
		t.Fatal("unbalanced transaction committed")
	}
	lines, _, err := postgres.ListLedger(ctx, pool, member, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 0 {
		t.Fatalf("ledger has %d lines after a rejected transaction", len(lines))
	}
}

// TestLedgerChecksEveryTransactionOfABatch: the batch writer's one
// statement for many ledger transactions is checked transaction by
// transaction. One unbalanced among balanced ones is refused, naming its
// sum, and none of them is written; an entry added later to a balanced
// transaction, on its own, is refused too.
func TestLedgerChecksEveryTransactionOfABatch(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPoolUnchecked(t, nil) // ledger rows without lots or accounts
	member := newMember(t, pool)
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC) // any instant: nothing here reads it
	earn := func(cause string, pts, liability int64) postgres.LedgerTransaction {
		return postgres.LedgerTransaction{
			TransactionID: uuid.New(), MemberID: member, Kind: "earn", Reason: "purchase", CauseID: cause,
			CreatedAt: at,
			Entries: []postgres.LedgerEntry{
				{Account: postgres.MemberAccount(member), MemberID: &member, Delta: pts},
				{Account: postgres.LiabilityAccount, Delta: liability},
			},
		}
	}
	write := func(txs ...postgres.LedgerTransaction) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			w := postgres.LoyaltyWrites{ProgramVersion: "test", Ledger: txs}
			b := &pgx.Batch{}
			w.Queue(b, func() { t.Error("no shared limit in these writes") })
			return tx.SendBatch(ctx, b).Close()
		})
	}
	lines := func() int {
		t.Helper()
		got, _, err := postgres.ListLedger(ctx, pool, member, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}

	err := write(earn("a", 5, -5), earn("b", 7, -6), earn("c", 3, -3))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" || !strings.Contains(pgErr.Message, "does not balance (sum 1)") {
		t.Fatalf("a statement with one unbalanced transaction: err = %v, want check_violation naming it", err)
	}
	if n := lines(); n != 0 {
		t.Fatalf("the refused statement left %d ledger lines", n)
	}

	balanced := earn("d", 4, -4)
	if err := write(balanced, earn("e", 2, -2)); err != nil {
		t.Fatalf("balanced transactions in one statement: %v", err)
	}
	if n := lines(); n != 2 {
		t.Fatalf("%d ledger lines after two balanced transactions, want 2", n)
	}

	_, err = pool.Exec(ctx, `INSERT INTO ledger_entries (transaction_id, account, member_id, delta, created_at) VALUES ($1, $2, $3, 1, now())`,
		balanced.TransactionID, postgres.MemberAccount(member), member)
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
		t.Fatalf("an entry added to a balanced transaction: err = %v, want check_violation", err)
	}
	var sum int64
	if err := pool.QueryRow(ctx, `SELECT sum(delta) FROM ledger_entries WHERE transaction_id = $1`, balanced.TransactionID).Scan(&sum); err != nil || sum != 0 {
		t.Fatalf("transaction %s sums to %d (%v) after the refused entry", balanced.TransactionID, sum, err)
	}
}

func TestLedgerDuplicateCauseAndPaging(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPoolUnchecked(t, nil) // ledger rows without lots or accounts
	member := newMember(t, pool)
	earn := func(cause string, pts int64) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return postgres.InsertLedgerTransaction(ctx, tx, postgres.LedgerTransaction{
				TransactionID: uuid.New(), MemberID: member, Kind: "earn", Reason: "purchase", CauseID: cause,
				CreatedAt: time.Now(),
				Entries: []postgres.LedgerEntry{
					{Account: postgres.MemberAccount(member), MemberID: &member, Delta: pts},
					{Account: postgres.LiabilityAccount, Delta: -pts},
				},
			})
		})
	}
	for i, c := range []string{"a", "b", "c"} {
		if err := earn(c, int64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := earn("b", 5); err == nil {
		t.Fatal("second transaction for the same cause was accepted")
	}
	first, next, err := postgres.ListLedger(ctx, pool, member, 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 2 || first[0].CauseID != "c" || first[1].CauseID != "b" || next == 0 {
		t.Fatalf("first page = %+v next=%d", first, next)
	}
	if first[0].CounterAccount != postgres.LiabilityAccount {
		t.Fatalf("counter account = %q", first[0].CounterAccount)
	}
	second, next, err := postgres.ListLedger(ctx, pool, member, next, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(second) != 1 || second[0].CauseID != "a" || next != 0 {
		t.Fatalf("second page = %+v next=%d", second, next)
	}
}

func TestAccountNeverNegative(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPoolUnchecked(t, nil) // writes an account without a ledger on purpose
	member := newMember(t, pool)
	if _, err := postgres.AddToAccount(ctx, pool, member, 5, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.AddToAccount(ctx, pool, member, -6, 0); err == nil {
		t.Fatal("balance went negative")
	}
	a, err := postgres.GetAccount(ctx, pool, member)
	if err != nil {
		t.Fatal(err)
	}
	if a.Balance != 5 || a.LifetimeEarned != 5 {
		t.Fatalf("account = %+v, want a balance of 5, 5 earned", a)
	}
}

func TestOutboxSequenceClaimAndWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	member := newMember(t, pool)

	l, err := postgres.AcquireRelayConn(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Nothing waits: the wait lasts its whole timeout.
	start := time.Now()
	if err := l.WaitOutbox(ctx, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("wait on an empty outbox returned after %v, before its timeout", waited)
	}

	for want := int64(1); want <= 2; want++ {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			seq, err := postgres.NextSequence(ctx, tx, member)
			if err != nil {
				return err
			}
			if seq != want {
				t.Errorf("sequence = %d, want %d", seq, want)
			}
			return postgres.InsertOutbox(ctx, tx, postgres.OutboxRow{MemberID: member, Sequence: seq, ChangeID: uuid.New(), Payload: []byte{1}})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Rows wait: the wait returns at once (the test's context would end
	// long before its hour).
	if err := l.WaitOutbox(ctx, time.Hour); err != nil {
		t.Fatalf("wait for the outbox: %v", err)
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := postgres.ClaimOutbox(ctx, tx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Sequence != 1 || rows[1].Sequence != 2 {
		t.Fatalf("claimed %+v", rows)
	}
	// A second relay sees nothing while the rows are claimed.
	other, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := postgres.ClaimOutbox(ctx, other, 10); err != nil || len(got) != 0 {
		t.Fatalf("second relay claimed %d rows (err %v)", len(got), err)
	}
	_ = other.Rollback(ctx)
	if err := postgres.MarkPublished(ctx, tx, []int64{rows[0].OutboxID, rows[1].OutboxID}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx2, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback(ctx) //nolint:errcheck
	if got, err := postgres.ClaimOutbox(ctx, tx2, 10); err != nil || len(got) != 0 {
		t.Fatalf("published rows claimed again: %d (err %v)", len(got), err)
	}
}

func TestIdentifierUniqueness(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, nil)
	a, b := newMember(t, pool), newMember(t, pool)
	key := postgres.IdentifierKey{Type: 1, Hash: []byte("hash")}
	row := postgres.IdentifierRow{IdentifierKey: key, MemberID: a, Unique: true, Masked: "138****0000", LinkedAt: time.Now(), CauseID: "t"}
	if err := postgres.InsertIdentifier(ctx, pool, row); err != nil {
		t.Fatal(err)
	}
	row.MemberID = b
	if err := postgres.InsertIdentifier(ctx, pool, row); !postgres.IsUniqueViolation(err) {
		t.Fatalf("second owner of one identifier: err = %v, want unique violation", err)
	}
	// A shared identifier type (device ids) may belong to several members.
	shared := postgres.IdentifierRow{IdentifierKey: postgres.IdentifierKey{Type: 5, Hash: []byte("tablet")}, Masked: "tab***et", LinkedAt: time.Now(), CauseID: "t"}
	for _, m := range []uuid.UUID{a, b} {
		shared.MemberID = m
		if err := postgres.InsertIdentifier(ctx, pool, shared); err != nil {
			t.Fatalf("shared identifier for %s: %v", m, err)
		}
	}
	if got, err := postgres.FindIdentifiers(ctx, pool, []postgres.IdentifierKey{shared.IdentifierKey}); err != nil || len(got) != 2 {
		t.Fatalf("shared identifier found %d times (err %v), want 2", len(got), err)
	}
	got, err := postgres.FindIdentifiers(ctx, pool, []postgres.IdentifierKey{key, {Type: 2, Hash: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].MemberID != a {
		t.Fatalf("found %+v, want the identifier of %s", got, a)
	}
}

// TestOpenTurnsJITOff: the platform's pools run without PostgreSQL's JIT
// (it compiled import verify's member reads for longer than they ran),
// unless the URL asks for it.
func TestOpenTurnsJITOff(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDB(t)
	for _, c := range []struct{ url, want string }{{url, "off"}, {url + "&jit=on", "on"}} {
		pool, err := postgres.Open(ctx, postgres.Config{URL: c.url, MaxConns: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var jit string
		err = pool.QueryRow(ctx, "SHOW jit").Scan(&jit)
		pool.Close()
		if err != nil {
			t.Fatal(err)
		}
		if jit != c.want {
			t.Errorf("jit with %s = %s, want %s", c.url[strings.Index(c.url, "?"):], jit, c.want)
		}
	}
}

// TestOpenPlansArrayStatementsOnce: a statement that names its keys in an
// array (a batch's members) is planned once per connection, not at every
// call, unless the URL asks for PostgreSQL's default (plan_cache_mode=auto).
func TestOpenPlansArrayStatementsOnce(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDB(t)
	const calls = 10
	for _, c := range []struct {
		url        string
		maxPlanned int64
	}{{url, 1}, {url + "&plan_cache_mode=auto", calls}} {
		pool, err := postgres.Open(ctx, postgres.Config{URL: c.url, MaxConns: 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		members := []uuid.UUID{newMember(t, pool), newMember(t, pool)}
		var planned int64
		for range calls {
			var n int
			if err = pool.QueryRow(ctx, `SELECT count(*) FROM members WHERE member_id = ANY($1)`, members).Scan(&n); err != nil || n != 2 {
				t.Fatalf("counted %d of 2 members: %v", n, err)
			}
		}
		err = pool.QueryRow(ctx, `SELECT custom_plans + CASE WHEN generic_plans > 0 THEN 1 ELSE 0 END FROM pg_prepared_statements
			WHERE statement LIKE 'SELECT count(*) FROM members WHERE member_id = ANY%'`).Scan(&planned)
		pool.Close()
		if err != nil {
			t.Fatal(err)
		}
		if planned > c.maxPlanned {
			t.Errorf("with %s: planned %d times in %d calls, want at most %d", c.url[strings.Index(c.url, "?"):], planned, calls, c.maxPlanned)
		}
		if c.maxPlanned == calls && planned != calls {
			t.Errorf("with %s: planned %d times in %d calls; PostgreSQL's default plans such a statement at every call", c.url[strings.Index(c.url, "?"):], planned, calls)
		}
	}
}

// TestPruneOutboxKeepsWhatIsUnpublishedOrRecent: published changes older
// than the cut-off leave the outbox, oldest first and at most the limit at
// a time; recent published changes and unpublished ones stay, whatever
// their age, and the member's sequence goes on from where it was.
func TestPruneOutboxKeepsWhatIsUnpublishedOrRecent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	member := newMember(t, pool)
	// Sequences 1-4 written 3 days ago and published, 5 written an hour
	// ago and published, 6 written 3 days ago and never published.
	for seq := int64(1); seq <= 6; seq++ {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			s, err := postgres.NextSequence(ctx, tx, member)
			if err != nil {
				return err
			}
			return postgres.InsertOutbox(ctx, tx, postgres.OutboxRow{MemberID: member, Sequence: s, ChangeID: uuid.New(), Payload: []byte{1}})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox SET created_at = CASE WHEN sequence = 5 THEN now() - interval '1 hour' ELSE now() - interval '3 days' END`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM outbox_pending p USING outbox o WHERE o.outbox_id = p.outbox_id AND o.sequence <= 5`); err != nil {
		t.Fatal(err)
	}
	left := func() []int64 {
		t.Helper()
		var seqs []int64
		rows, err := pool.Query(ctx, `SELECT sequence FROM outbox ORDER BY sequence`)
		if err != nil {
			t.Fatal(err)
		}
		seqs, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		return seqs
	}
	for _, want := range []struct {
		deleted int
		left    []int64
	}{{3, []int64{4, 5, 6}}, {1, []int64{5, 6}}, {0, []int64{5, 6}}} {
		n, err := postgres.PruneOutbox(ctx, pool, 24*time.Hour, 3)
		if err != nil {
			t.Fatal(err)
		}
		if got := left(); n != want.deleted || !slices.Equal(got, want.left) {
			t.Fatalf("pruned %d, left %v; want %d pruned, %v left", n, got, want.deleted, want.left)
		}
	}
	// A recent change among the oldest stays, and the older ones beside it
	// leave.
	late := newMember(t, pool)
	for seq := int64(1); seq <= 3; seq++ {
		if err := postgres.InsertOutbox(ctx, pool, postgres.OutboxRow{MemberID: late, Sequence: seq, ChangeID: uuid.New(), Payload: []byte{1}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox SET created_at = CASE WHEN sequence = 1 THEN now() - interval '1 hour' ELSE now() - interval '2 days' END
		WHERE member_id = $1`, late); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM outbox_pending WHERE member_id = $1`, late); err != nil {
		t.Fatal(err)
	}
	if n, err := postgres.PruneOutbox(ctx, pool, 24*time.Hour, 10); err != nil || n != 2 {
		t.Fatalf("pruned %d (%v) with a recent change first; want its 2 older neighbours", n, err)
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		s, err := postgres.NextSequence(ctx, tx, member)
		if err == nil && s != 7 {
			t.Errorf("next sequence after pruning = %d, want 7", s)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tracedPool is a pool of a new database (closed when the test ends) whose
// spans tp records in spans.
func tracedPool(t *testing.T, ctx context.Context) (*pgxpool.Pool, *sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	pool, err := postgres.Open(ctx, postgres.Config{URL: pgtest.NewDB(t), MaxConns: 2}, tp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, tp, spans
}

// TestPoolWaitsAreMetricsAndStatementsSpans: a request's trace holds its
// statements, not a span for every connection taken from the pool; how
// often and how long calls waited for a connection is in the pool's
// metrics, under the pool's name.
func TestPoolWaitsAreMetricsAndStatementsSpans(t *testing.T) {
	ctx := context.Background()
	pool, tp, spans := tracedPool(t, ctx)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	if err := postgres.RecordPoolStats(pool, mp, "platform"); err != nil {
		t.Fatal(err)
	}
	rctx, request := tp.Tracer("test").Start(ctx, "request")
	for range 3 {
		var one int
		if err := pool.QueryRow(rctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
	}
	request.End()
	var statements int
	for _, s := range spans.Ended() {
		if s.Parent().SpanID() != request.SpanContext().SpanID() {
			continue
		}
		if s.Name() == "pool.acquire" {
			t.Errorf("a span for taking a connection: %s", s.Name())
		} else {
			statements++
		}
	}
	if statements != 3 {
		t.Errorf("%d statement spans under the request, want 3", statements)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	acquires := int64(-1)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != "pgxpool.acquires" || !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				if name, _ := dp.Attributes.Value("db.client.connection.pool.name"); name.AsString() == "platform" {
					acquires = dp.Value
				}
			}
		}
	}
	// The ping at Open and the three statements each took a connection.
	if acquires < 3 {
		t.Errorf("pgxpool.acquires of pool platform = %d, want at least 3", acquires)
	}
}

// TestABatchsStatementsAreEventsOfItsSpan: a batch is one span under the
// request, with an event for each statement that names it, in order; a
// statement that fails still has a span of its own, with its error.
func TestABatchsStatementsAreEventsOfItsSpan(t *testing.T) {
	ctx := context.Background()
	pool, tp, spans := tracedPool(t, ctx)
	send := func(sqls ...string) (trace.SpanContext, error) {
		rctx, request := tp.Tracer("test").Start(ctx, "request")
		defer request.End()
		b := &pgx.Batch{}
		for _, q := range sqls {
			b.Queue(q)
		}
		return request.SpanContext(), pool.SendBatch(rctx, b).Close()
	}
	under := func(request trace.SpanContext) []sdktrace.ReadOnlySpan {
		var out []sdktrace.ReadOnlySpan
		for _, s := range spans.Ended() {
			if s.SpanContext().TraceID() == request.TraceID() && s.SpanContext().SpanID() != request.SpanID() {
				out = append(out, s)
			}
		}
		return out
	}

	sqls := []string{"SELECT 1", "SELECT 2", "SELECT 'three'"}
	request, err := send(sqls...)
	if err != nil {
		t.Fatal(err)
	}
	got := under(request)
	if len(got) != 1 || got[0].Parent().SpanID() != request.SpanID() {
		t.Fatalf("%d spans under the request; want the batch's alone", len(got))
	}
	events := func(s sdktrace.ReadOnlySpan) []string {
		var out []string
		for _, e := range s.Events() {
			for _, a := range e.Attributes {
				if e.Name == "batch query" && a.Key == semconv.DBQueryTextKey {
					out = append(out, a.Value.AsString())
				}
			}
		}
		return out
	}
	if got := events(got[0]); !slices.Equal(got, sqls) {
		t.Errorf("the batch span's statement events %q; want %q", got, sqls)
	}

	request, err = send("SELECT 1", "SELECT 1/0")
	if err == nil {
		t.Fatal("a division by zero in a batch did not fail it")
	}
	var batch, failed sdktrace.ReadOnlySpan
	for _, s := range under(request) {
		if s.Parent().SpanID() == request.SpanID() {
			batch = s
		} else {
			failed = s
		}
	}
	switch {
	case batch == nil || failed == nil || len(under(request)) != 2:
		t.Fatalf("%d spans under the request; want the batch's and its failed statement's", len(under(request)))
	case failed.Parent().SpanID() != batch.SpanContext().SpanID() || failed.Status().Code != codes.Error:
		t.Errorf("the failed statement's span %q: parent %s, status %v; want under the batch, with its error", failed.Name(), failed.Parent().SpanID(), failed.Status())
	case !slices.Equal(events(batch), []string{"SELECT 1"}):
		t.Errorf("the failed batch's statement events %q; want the statement that ran", events(batch))
	}
}
