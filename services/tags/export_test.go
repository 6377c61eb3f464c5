package tags_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/fault/faulttest"
	"github.com/membercenter/membercenter/services/tags"
)

// logSink records log messages so a test can wait for a loop to have met
// a fault.
type logSink struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (l *logSink) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		msg += " " + a.Key + "=" + a.Value.String()
		return true
	})
	l.msgs = append(l.msgs, msg)
	return nil
}
func (l *logSink) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logSink) WithGroup(string) slog.Handler      { return l }

func (l *logSink) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// TestProfileExporterRidesOutPostgresAndClickHouseRestarts: the exporter
// keeps exporting across a PostgreSQL restart (its listen connection
// terminated by the server) and a ClickHouse outage (the connection cut and
// refused), and catches up by itself; before, the first ended the pipeline
// process with "wait for profile exports: FATAL: terminating connection
// due to administrator command".
func TestProfileExporterRidesOutPostgresAndClickHouseRestarts(t *testing.T) {
	logs := &logSink{}
	f := newFixtureLogged(t, logs)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	chConn, chCfg := chtest.NewDB(t)
	proxy := faulttest.NewProxy(t, chCfg.Addr)
	viaProxy := chCfg
	viaProxy.Addr = proxy.Addr()
	conn, err := clickhouse.Open(ctx, viaProxy)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	loops := pgtest.StartLoops(ctx, f.svc.NewExporter(conn, clickhouse.NewSchema(viaProxy, conn)).Run)

	exported := func(m uuid.UUID) func() (bool, error) {
		return func() (bool, error) {
			var n uint64
			err := chConn.QueryRow(ctx, `SELECT count() FROM member_profiles WHERE member_id = ?`, m.String()).Scan(&n)
			return n > 0, err
		}
	}
	buy := func(id string) uuid.UUID {
		m := f.member(t)
		f.apply(t, ctx, purchase(id, m, t0.Add(-time.Hour), 3000, "coffee"))
		return m
	}
	loops.WaitFor(t, "first member exported", exported(buy("e1")))

	// PostgreSQL restarts: every session of the database is terminated,
	// among them idle connections of the pool the exporter draws from.
	var held []*pgxpool.Conn
	for range 3 {
		c, err := f.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	for _, c := range held {
		c.Release()
	}
	if n, err := pgtest.TerminateBackends(ctx, f.pool); err != nil || n == 0 {
		t.Fatalf("terminated %d sessions: %v", n, err)
	}
	loops.WaitFor(t, "member changed after the PostgreSQL restart exported", exported(buy("e2")))

	// ClickHouse goes away while labels change, then comes back.
	proxy.Cut()
	failedBefore := logs.count("profile export failed")
	m3 := buy("e3")
	loops.WaitFor(t, "an export attempted while ClickHouse is away", func() (bool, error) {
		return logs.count("profile export failed") > failedBefore, nil
	})
	proxy.Restore()
	loops.WaitFor(t, "member changed during the ClickHouse outage exported", exported(m3))

	loops.Stop(t)
}

// TestCatalogueWatchAndSweeperRideOutAPostgresRestart: after every session
// of the database is terminated, the catalogue watcher still picks up a
// newly loaded version and the sweeper still recomputes a member whose
// window ended; neither loop returns.
func TestCatalogueWatchAndSweeperRideOutAPostgresRestart(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m := f.member(t)
	f.apply(t, ctx, purchase("e1", m, t0.Add(-time.Hour), 3000, "coffee"))
	loops := pgtest.StartLoops(ctx,
		func(ctx context.Context) error { return f.svc.Watch(ctx, 50*time.Millisecond) },
		func(ctx context.Context) error { return f.svc.RunSweeper(ctx, 50*time.Millisecond) })

	if _, err := pgtest.TerminateBackends(ctx, f.pool); err != nil {
		t.Fatal(err)
	}
	// A new catalogue version, and a member whose labels are due now.
	if _, err := tags.LoadCatalog(ctx, f.pool, []byte(strings.Replace(testCatalog, "version: test-1", "version: test-9", 1))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `UPDATE member_features SET due_at = $2 WHERE member_id = $1`, m, t0.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	loops.WaitFor(t, "catalogue test-9 in force", func() (bool, error) {
		return f.svc.Catalog().Version == "test-9", nil
	})
	loops.WaitFor(t, "the due member swept", func() (bool, error) {
		var due *time.Time
		err := f.pool.QueryRow(ctx, `SELECT due_at FROM member_features WHERE member_id = $1`, m).Scan(&due)
		return err == nil && (due == nil || due.After(t0)), err
	})
	loops.Stop(t)
}

// A member erased while its profile was queued for ClickHouse: the row the
// exporter writes is deleted again, whichever of the exporter and the sink's
// erasure came first, and the queue empties.
func TestExporterDoesNotBringBackAnErasedProfile(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, cfg := chtest.NewDB(t)
	kept, erased := f.member(t), f.member(t)
	f.apply(t, ctx, purchase("x1", kept, t0.Add(-time.Hour), 3000, "coffee"))
	f.apply(t, ctx, purchase("x2", erased, t0.Add(-time.Hour), 3000, "coffee"))
	// Erased after its export was queued (as EraseMember leaves a member:
	// only its status matters to the exporter).
	if _, err := f.pool.Exec(ctx, `UPDATE members SET status = 'erased' WHERE member_id = $1`, erased); err != nil {
		t.Fatal(err)
	}
	n, err := f.svc.NewExporter(conn, clickhouse.NewSchema(cfg, conn)).Export(ctx, 100)
	if err != nil || n != 2 {
		t.Fatalf("exported %d: %v", n, err)
	}
	for m, want := range map[uuid.UUID]uint64{kept: 1, erased: 0} {
		var rows uint64
		if err := conn.QueryRow(ctx, `SELECT count() FROM member_profiles WHERE member_id = ?`, m.String()).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows != want {
			t.Errorf("member %s: %d profile rows, want %d", m, rows, want)
		}
	}
	var queued int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM profile_exports`).Scan(&queued); err != nil || queued != 0 {
		t.Errorf("%d exports still queued (%v)", queued, err)
	}
}
