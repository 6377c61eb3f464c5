// Package postgres owns Member Center's PostgreSQL side: connection config,
// embedded migrations and the queries the services and workers run.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// Config says how to reach PostgreSQL. Defaults match scripts/deps.sh.
type Config struct {
	URL      string `env:"MC_PG_URL, default=postgres://membercenter:membercenter@127.0.0.1:55432/membercenter?sslmode=disable"`
	MaxConns int32  `env:"MC_PG_MAX_CONNS, default=20"`
	// OutboxRetention is how long after it was written a published change
	// stays in the outbox (PruneOutbox); 0 keeps them all.
	OutboxRetention time.Duration `env:"MC_OUTBOX_RETENTION, default=24h"`
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if _, err := pgx.ParseConfig(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("MC_PG_URL: %w", err))
	}
	if c.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("MC_PG_MAX_CONNS must be at least 1, got %d", c.MaxConns))
	}
	if c.OutboxRetention < 0 {
		errs = append(errs, fmt.Errorf("MC_OUTBOX_RETENTION must not be negative (0 keeps every published change), got %s", c.OutboxRetention))
	}
	return errors.Join(errs...)
}

// Masked returns the URL with its password hidden, for logs.
func (c Config) Masked() string {
	u, err := url.Parse(c.URL)
	if err != nil {
		return "<unparseable>"
	}
	return u.Redacted()
}

// Open connects a pool whose queries are traced with tp.
func Open(ctx context.Context, cfg Config, tp trace.TracerProvider) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("parse MC_PG_URL: %w", err)
	}
	pc.MaxConns = cfg.MaxConns
	// The platform's statements are short and many; PostgreSQL's JIT
	// compiles a plan that merely looks dear (a chunk's members with their
	// labels, at a million members) in more time than it runs: 33 ms of a
	// 50 ms statement in import verify. Off unless the URL asks for it.
	if _, set := pc.ConnConfig.RuntimeParams["jit"]; !set {
		pc.ConnConfig.RuntimeParams["jit"] = "off"
	}
	// The platform's statements are prepared once per connection (pgx's
	// statement cache) and most name their keys in arrays (a batch's
	// members, = ANY($1), unnest). PostgreSQL plans such a statement again
	// at every call, because its generic plan, costed for an array of
	// unknown length, looks dearer than a custom one: for the small batches
	// of a stream at its everyday rate that planning cost more than running
	// the statements (the tag stage's direct apply, one event a batch:
	// 10 s of planning beside 8 s of execution). Generic plans unless the
	// URL asks otherwise; their keys are indexed, so the plan seldom
	// depends on the values.
	if _, set := pc.ConnConfig.RuntimeParams["plan_cache_mode"]; !set {
		pc.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	}
	pc.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
		registerTypes(c.TypeMap())
		return nil
	}
	// A span per statement (or batch), not per connection taken from the
	// pool: an acquire span cost 5% of a GetProfile's CPU at 2,000 calls a
	// second (span starts look up a request's deep context). How long calls
	// wait for a connection is in the pool's metrics (RecordPoolStats).
	pc.ConnConfig.Tracer = batchTracer{Tracer: otelpgx.NewTracer(
		otelpgx.WithTracerProvider(tp),
		otelpgx.WithDisableConnectionDetailsInAttributes(),
		otelpgx.WithDisableAcquireTracer(),
	)}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping postgres at %s: %w", cfg.Masked(), err)
	}
	return pool, nil
}

// RecordPoolStats reports pool's statistics as metrics of mp, read when
// they are collected, under the pool name given: connections in use, idle
// and being opened, acquires and how long they waited
// (pgxpool.acquire_duration, pgxpool.empty_acquire_wait_time).
func RecordPoolStats(pool *pgxpool.Pool, mp metric.MeterProvider, name string) error {
	err := otelpgx.RecordStats(pool, otelpgx.WithStatsMeterProvider(mp),
		otelpgx.WithStatsAttributes(attribute.String("db.client.connection.pool.name", name)))
	if err != nil {
		return fmt.Errorf("pool metrics of %s: %w", name, err)
	}
	return nil
}

// Querier is what queries need: a pool, a connection or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Beginner starts transactions: a pool, a connection, or a transaction
// (which starts a savepoint).
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

var (
	_ Querier = (*pgxpool.Pool)(nil)
	_ Querier = (pgx.Tx)(nil)
)

// exec runs a statement; what names it in an error.
func exec(ctx context.Context, q Querier, what, sql string, args ...any) error {
	_, err := execRows(ctx, q, what, sql, args...)
	return err
}

// execRows runs a statement and returns how many rows it affected; what
// names it in an error.
func execRows(ctx context.Context, q Querier, what, sql string, args ...any) (int64, error) {
	tag, err := q.Exec(ctx, sql, args...)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return tag.RowsAffected(), nil
}

// rowErr wraps the error of reading a statement's one row: no row is
// ErrNotFound, named by missing (a format and its args); any other error is
// named by what.
func rowErr(err error, what, missing string, args ...any) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", fmt.Sprintf(missing, args...), ErrNotFound)
	}
	return rowErrOr(err, what, nil)
}

// rowErrOr wraps the error of reading a statement's one row: no row answers
// noRow (nil when the row's zero value is the answer); any other error is
// named by what.
func rowErrOr(err error, what string, noRow error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return noRow
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// collectOne collects the one row of a query's result (rows, err) with scan:
// a failed query is named by what; no row is ErrNotFound, named by missing
// (a format and its args).
func collectOne[T any](rows pgx.Rows, err error, scan pgx.RowToFunc[T], what, missing string, args ...any) (T, error) {
	if err != nil {
		var zero T
		return zero, fmt.Errorf("%s: %w", what, err)
	}
	v, err := pgx.CollectExactlyOneRow(rows, scan)
	if errors.Is(err, pgx.ErrNoRows) {
		return v, rowErr(err, what, missing, args...)
	}
	return v, err
}

// collectAll collects the rows of a query's result (rows, err) with scan: a
// failed query is named by what.
func collectAll[T any](rows pgx.Rows, err error, scan pgx.RowToFunc[T], what string) ([]T, error) {
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return pgx.CollectRows(rows, scan)
}

// queryValues runs a statement whose rows are one column each and returns
// the values; what names the statement in an error.
func queryValues[T any](ctx context.Context, q Querier, what, sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	vs, err := pgx.CollectRows(rows, pgx.RowTo[T])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return vs, nil
}

// queryStringSet is queryValues for a statement that returns strings, as a
// set.
func queryStringSet(ctx context.Context, q Querier, what, sql string, args ...any) (map[string]bool, error) {
	vs, err := queryValues[string](ctx, q, what, sql, args...)
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(vs))
	for _, v := range vs {
		set[v] = true
	}
	return set, nil
}

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("not found")

// IsUniqueViolation reports whether err is a unique-constraint violation,
// the signal that a concurrent writer got there first.
func IsUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// IsSerializationFailure reports whether err is a retryable conflict between
// concurrent transactions.
func IsSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// RetryTx runs fn in a transaction and retries it, up to five attempts, when
// it fails with a unique violation or a serialization failure: the signs that
// a concurrent writer got there first, after which a fresh attempt sees its
// rows and takes the other branch (ErrMemberSeparated is one too).
func RetryTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = pgx.BeginFunc(ctx, pool, fn)
		if err == nil || !(IsUniqueViolation(err) || IsSerializationFailure(err) || errors.Is(err, ErrMemberSeparated)) {
			return err
		}
	}
	return fmt.Errorf("gave up after 5 conflicting attempts: %w", err)
}

// batchTracer is otelpgx's tracer with a batch's statements as events of
// the batch's span ("batch query", the statement in db.query.text), not
// spans of their own. otelpgx starts and ends such a span at once, when
// the statement's results have been read, so it holds no time of its own;
// as spans they were 6% of a Quote's CPU with every span recorded (a
// Quote's load is one batch of several statements), and as many spans
// more for an exporter to send. A statement that failed keeps its span, with
// its error, as otelpgx records it. A span keeps as many events as the
// tracer provider allows (the platform's: telemetry.SpanEventLimit); the
// rest are counted as dropped.
type batchTracer struct{ *otelpgx.Tracer }

func (t batchTracer) TraceBatchQuery(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	if span := trace.SpanFromContext(ctx); data.Err == nil && span.IsRecording() {
		span.AddEvent("batch query", trace.WithAttributes(semconv.DBQueryText(data.SQL)))
		return
	}
	t.Tracer.TraceBatchQuery(ctx, conn, data)
}
