// Package identitytest builds the identity service over a test's database.
package identitytest

import (
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
)

// New is the identity service on pool, with the default configuration,
// changes written without trace context and no log.
func New(t testing.TB, pool *pgxpool.Pool) *identity.Service {
	t.Helper()
	svc, err := identity.New(identity.Config{}, pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// Keys are the development PII keys (the platform's in tests) with the
// members' data keys kept on pool: what opens what the platform sealed.
func Keys(t testing.TB, pool *pgxpool.Pool) *identity.PII {
	t.Helper()
	p, err := identity.NewPII(identity.DevKeys)
	if err != nil {
		t.Fatal(err)
	}
	p.UseKeyStore(pool)
	return p
}
