package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// The references the schema does not enforce (pgtest.UncheckedReferences)
// are not foreign keys, and the tests' check of them (pgtest.CheckReferences,
// run at the end of every test on a pgtest.NewPool database) finds a value
// that names no row, as a foreign key would have refused it.
func TestUncheckedReferencesAreCheckedByTests(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPoolUnchecked(t, nil)
	for _, r := range pgtest.UncheckedReferences {
		fks := pgtest.Values[string](t, ctx, pool, `SELECT c.conname FROM pg_constraint c
			JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
			WHERE c.contype = 'f' AND c.conrelid = $1::regclass AND a.attname = $2`, r.Table, r.Column)
		if len(fks) > 0 {
			t.Errorf("%s.%s: a foreign key (%s) checks it already", r.Table, r.Column, strings.Join(fks, ", "))
		}
	}
	if err := pgtest.CheckReferences(ctx, pool); err != nil {
		t.Fatalf("empty database: %v", err)
	}

	member, orphan := uuid.New(), uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO members (member_id, created_at) VALUES ($1, now())`, member); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO member_label_sets (member_id, labels, updated_at)
		VALUES ($1, '{sharer}', now()), ($2, '{sharer}', now())`, member, orphan); err != nil {
		t.Fatalf("a label of no member, which the schema does not refuse: %v", err)
	}
	err := pgtest.CheckReferences(ctx, pool)
	if err == nil || !strings.Contains(err.Error(), "member_label_sets.member_id names no members row in 1 rows ("+orphan.String()+")") {
		t.Fatalf("CheckReferences after a label of no member: %v", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM member_label_sets WHERE member_id = $1`, orphan); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.CheckReferences(ctx, pool); err != nil {
		t.Fatalf("after the orphan went: %v", err)
	}

	// A pending change whose outbox row is not there.
	if _, err := pool.Exec(ctx, `INSERT INTO outbox_pending (outbox_id, member_id) VALUES (987654321, $1)`, member); err != nil {
		t.Fatalf("a pending change of no outbox row, which the schema does not refuse: %v", err)
	}
	err = pgtest.CheckReferences(ctx, pool)
	if err == nil || !strings.Contains(err.Error(), "outbox_pending.outbox_id names no outbox row in 1 rows (987654321)") {
		t.Fatalf("CheckReferences after a pending change of no outbox row: %v", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM outbox_pending`); err != nil {
		t.Fatal(err)
	}
}
