package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// The references migration 00039 stopped enforcing are not foreign keys any
// more, and the tests' check of them (pgtest.CheckReferences, run at the
// end of every test on a pgtest.NewPool database) finds a value that names
// no row, as the foreign key refused it.
func TestUncheckedReferencesAreCheckedByTests(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPoolUnchecked(t, nil)
	for _, r := range pgtest.UncheckedReferences {
		fks := pgtest.Values[string](t, ctx, pool, `SELECT c.conname FROM pg_constraint c
			JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
			WHERE c.contype = 'f' AND c.conrelid = $1::regclass AND a.attname = $2`, r.Table, r.Column)
		if len(fks) > 0 {
			t.Errorf("%s.%s: still a foreign key (%s); CheckReferences checks it for nothing", r.Table, r.Column, strings.Join(fks, ", "))
		}
	}
	if err := pgtest.CheckReferences(ctx, pool); err != nil {
		t.Fatalf("empty database: %v", err)
	}

	member, orphan := uuid.New(), uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO members (member_id, created_at) VALUES ($1, now())`, member); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO ingested_events (event_id, member_id, created) VALUES ('e-1', $1, true), ('e-2', $2, false)`, member, orphan); err != nil {
		t.Fatalf("an ingested event of no member, no longer refused by the schema: %v", err)
	}
	err := pgtest.CheckReferences(ctx, pool)
	if err == nil || !strings.Contains(err.Error(), "1 rows of ingested_events whose member_id names no members row ("+orphan.String()+")") {
		t.Fatalf("CheckReferences after an orphan ingested event: %v", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM ingested_events WHERE event_id = 'e-2'`); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.CheckReferences(ctx, pool); err != nil {
		t.Fatalf("after the orphan went: %v", err)
	}
}
