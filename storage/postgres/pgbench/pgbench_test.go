package pgbench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres/pgbench"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestCopyDatabase: a copy holds what its template held, and copying again
// replaces what the previous copy gained.
func TestCopyDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000_000)
	tmpl, run := "mc_test_copy_tmpl_"+suffix, "mc_test_copy_run_"+suffix
	defer func() { // before admin closes
		for _, db := range []string{run, tmpl} {
			if _, err := admin.Exec(context.Background(), `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`); err != nil {
				t.Errorf("drop %s: %v", db, err)
			}
		}
	}()
	if err := pgbench.CreateDatabase(ctx, admin, tmpl); err != nil {
		t.Fatal(err)
	}
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
