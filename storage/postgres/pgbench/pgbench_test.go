package pgbench_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/postgres/pgbench"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestCopyDatabase: a copy holds what its template held, and copying again
// replaces what the previous copy gained.
func TestCopyDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u, err := url.Parse(pgtest.NewDB(t)) // the template, dropped when the test ends
	if err != nil {
		t.Fatal(err)
	}
	tmpl := strings.TrimPrefix(u.Path, "/")
	run := tmpl + "_run"
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	defer func() { // before admin closes
		if _, err := admin.Exec(context.Background(), `DROP DATABASE IF EXISTS `+run+` WITH (FORCE)`); err != nil {
			t.Errorf("drop %s: %v", run, err)
		}
	}()
	connect := func(db string) *pgx.Conn {
		t.Helper()
		u, err := pgbench.DatabaseURL(pgtest.AdminURL(), db)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	exec := func(db, sql string) {
		t.Helper()
		c := connect(db)
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	count := func(db string) int {
		t.Helper()
		c := connect(db)
		defer c.Close(ctx)
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM history`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	exec(tmpl, `CREATE TABLE history (n int); INSERT INTO history SELECT generate_series(1, 3)`)
	if err := pgbench.CopyDatabase(ctx, admin, tmpl, run); err != nil {
		t.Fatal(err)
	}
	if n := count(run); n != 3 {
		t.Fatalf("the copy holds %d rows, want the template's 3", n)
	}
	exec(run, `INSERT INTO history SELECT generate_series(4, 10)`) // what a run adds
	if err := pgbench.CopyDatabase(ctx, admin, tmpl, run); err != nil {
		t.Fatal(err)
	}
	if n, m := count(run), count(tmpl); n != 3 || m != 3 {
		t.Fatalf("after copying again: the copy holds %d rows and the template %d, want 3 and 3", n, m)
	}
}

// TestCheckSchema: a database as the migrations build it passes; one with
// an index dropped, or an index added by hand, is refused naming it.
func TestCheckSchema(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := pgxpool.New(ctx, pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	ref := strings.TrimPrefix(db.Config().ConnConfig.Database, "/") + "_ref"
	check := func() error { return pgbench.CheckSchema(ctx, admin, pgtest.AdminURL(), db, ref) }
	if err := check(); err != nil {
		t.Fatalf("a freshly migrated database: %v", err)
	}
	for _, c := range []struct{ change, undo, want string }{
		{`DROP INDEX point_lots_pending`, `CREATE INDEX point_lots_pending ON point_lots (member_id, available_at) INCLUDE (remaining, expires_at) WHERE remaining > 0`,
			"missing: index point_lots.point_lots_pending btree (member_id, available_at) INCLUDE (remaining, expires_at) WHERE (remaining > 0)"},
		{`CREATE INDEX by_hand ON members (created_at)`, `DROP INDEX by_hand`, "not in the migrations: index members.by_hand btree (created_at)"},
	} {
		if _, err := db.Exec(ctx, c.change); err != nil {
			t.Fatal(err)
		}
		if err := check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("after %s: %v, want an error with %q", c.change, err, c.want)
		}
		if _, err := db.Exec(ctx, c.undo); err != nil {
			t.Fatal(err)
		}
	}
	var left bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, ref).Scan(&left); err != nil || left {
		t.Fatalf("the reference database %s is left behind (%v)", ref, err)
	}
}
