package cli

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/services/platform/platformtest"
)

// onPlatform points the command line's environment (MC_*) at the test's
// own databases and topics, and returns a context that ends after within.
func onPlatform(t *testing.T, within time.Duration) context.Context {
	t.Helper()
	platformtest.Setenv(t)
	ctx, cancel := context.WithTimeout(context.Background(), within)
	t.Cleanup(cancel)
	return ctx
}

// platformPool is a pool on the test's PostgreSQL database (onPlatform's),
// for a test to look at what a command wrote.
func platformPool(t *testing.T, ctx context.Context) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(ctx, os.Getenv("MC_PG_URL"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// cliOnPlatform runs the command line on the test platform's databases,
// returning what it printed.
func cliOnPlatform(t *testing.T) func(args ...string) (string, error) {
	ctx := onPlatform(t, 2*time.Minute)
	return func(args ...string) (string, error) {
		var out, log bytes.Buffer
		err := Execute(ctx, args, &out, &log)
		return out.String(), err
	}
}
