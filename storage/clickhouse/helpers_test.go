package clickhouse_test

import (
	"context"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// queryStrings runs a query of one string column and returns its values,
// failing t on any error (closing the rows too).
func queryStrings(t *testing.T, ctx context.Context, conn driver.Conn, query string, args ...any) []string {
	t.Helper()
	rows := mustQuery(t, ctx, conn, query, args...)
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	return out
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
