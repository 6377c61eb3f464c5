package postgres_test

import (
	"context"
	"fmt"
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
			WHERE c.contype = 'f' AND c.conrelid = $1::regclass AND a.attname = ANY($2)`, r.Table, strings.Split(r.Column, ", "))
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

	// A change of the member (its trigger makes it pending), and a pending
	// row that names the change under another member: the relay would
	// never claim it.
	var change int64
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (member_id, sequence, change_id, payload) VALUES ($1, 1, gen_random_uuid(), '\x01')
		RETURNING outbox_id`, member).Scan(&change); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.CheckReferences(ctx, pool); err != nil {
		t.Fatalf("a pending change: %v", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox_pending (outbox_id, member_id) VALUES ($1, $2)`, change, orphan); err != nil {
		t.Fatalf("a pending row of no outbox row, which the schema does not refuse: %v", err)
	}
	err = pgtest.CheckReferences(ctx, pool)
	if want := fmt.Sprintf("outbox_pending.outbox_id, member_id names no outbox row in 1 rows (%d)", change); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("CheckReferences after a pending row under another member: %v; want %q", err, want)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM outbox_pending WHERE member_id = $1`, orphan); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.CheckReferences(ctx, pool); err != nil {
		t.Fatalf("after the stray pending row went: %v", err)
	}
}
