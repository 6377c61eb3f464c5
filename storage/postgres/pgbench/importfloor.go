package pgbench

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
)

// RecreateDatabase drops db (closing its sessions) and creates it empty.
func RecreateDatabase(ctx context.Context, q postgres.Querier, db string) error {
	if _, err := q.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{db}.Sanitize()+` WITH (FORCE)`); err != nil {
		return fmt.Errorf("drop database %s: %w", db, err)
	}
	return CreateDatabase(ctx, q, db)
}

// CopyRecords is the legacy import's floor: the records (a key and a JSON
// document each) copied into a new plain table named table.
func CopyRecords(ctx context.Context, conn interface {
	postgres.Querier
	CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error)
}, table string, keys []string, records [][]byte) (int64, error) {
	if _, err := conn.Exec(ctx, `CREATE TABLE `+pgx.Identifier{table}.Sanitize()+` (key text PRIMARY KEY, record jsonb NOT NULL)`); err != nil {
		return 0, fmt.Errorf("create %s: %w", table, err)
	}
	return conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"key", "record"}, pgx.CopyFromSlice(len(keys), func(i int) ([]any, error) {
		return []any{keys[i], records[i]}, nil
	}))
}
