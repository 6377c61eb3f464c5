package clickhouse_test

import (
	"context"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// queryStrings runs a query of one string column and returns its values,
// failing t on any error.
func queryStrings(t *testing.T, ctx context.Context, conn driver.Conn, query string, args ...any) []string {
	t.Helper()
	var out []string
	var s string
	eachRow(t, ctx, conn, []any{&s}, func() { out = append(out, s) }, query, args...)
	return out
}

// eachRow runs a query, scans each row into dest and calls fn after each,
// failing t on any error; the rows are closed when it returns.
func eachRow(t *testing.T, ctx context.Context, conn driver.Conn, dest []any, fn func(), query string, args ...any) {
	t.Helper()
	rows := mustQuery(t, ctx, conn, query, args...)
	defer rows.Close()
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			t.Fatal(err)
		}
		fn()
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// scanRow runs a query of one row and scans it into dest, failing t if it
// cannot.
func scanRow(t *testing.T, ctx context.Context, conn driver.Conn, query string, dest ...any) {
	t.Helper()
	if err := conn.QueryRow(ctx, query).Scan(dest...); err != nil {
		t.Fatal(err)
	}
}

// mustQuery runs a query, failing t if it cannot; the caller closes the
// rows.
func mustQuery(t *testing.T, ctx context.Context, conn driver.Conn, query string, args ...any) driver.Rows {
	t.Helper()
	rows, err := conn.Query(ctx, query, args...)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}
