package pgtest

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TerminateBackends ends every other session of pool's database as a
// PostgreSQL restart does ("FATAL: terminating connection due to
// administrator command", SQLSTATE 57P01), without touching the shared
// server or other tests' databases. It returns how many it ended.
func TerminateBackends(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	// Only the clients' sessions: an autovacuum worker on the database runs
	// as a superuser, which this role may not end (and a restart's clients
	// are what the tests are about).
	err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()
		  AND backend_type = 'client backend' AND usename = current_user`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pgtest: terminate backends: %w", err)
	}
	return n, nil
}
