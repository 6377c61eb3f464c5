package postgres_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestOutboxPendingMigration: migration 00040 makes every change not yet
// published (published_at NULL) pending and drops published_at; a change
// inserted as the version before inserts it is pending too; rolled back,
// the changes still pending are unpublished again and the others published
// (at their creation: the time of publication is not kept).
func TestOutboxPendingMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPoolUnchecked(t, nil)
	p := migrations(t, pool)
	if _, err := p.DownTo(ctx, 39); err != nil {
		t.Fatal(err)
	}
	member := newMember(t, pool)
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (member_id, sequence, change_id, payload, created_at, published_at) VALUES
		($1, 1, gen_random_uuid(), '\x01', now() - interval '2 hours', now() - interval '1 hour'),
		($1, 2, gen_random_uuid(), '\x02', now() - interval '2 hours', NULL),
		($1, 3, gen_random_uuid(), '\x03', now(), NULL)`, member); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	pending := func() []int64 {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT o.sequence FROM outbox_pending p JOIN outbox o USING (outbox_id, member_id) ORDER BY p.outbox_id`)
		if err != nil {
			t.Fatal(err)
		}
		seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		return seqs
	}
	if got := pending(); !slices.Equal(got, []int64{2, 3}) {
		t.Fatalf("pending after 00040: sequences %v, want [2 3]", got)
	}
	// A writer of the version before inserts into the outbox alone (a
	// rolling upgrade runs it beside the migrated database): its change is
	// pending too.
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (member_id, sequence, change_id, payload, traceparent) VALUES ($1, 4, gen_random_uuid(), '\x04', '')`, member); err != nil {
		t.Fatal(err)
	}
	if got := pending(); !slices.Equal(got, []int64{2, 3, 4}) {
		t.Fatalf("pending after the version before's insert: sequences %v, want [2 3 4]", got)
	}
	var hasColumn bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_name = 'outbox' AND column_name = 'published_at')`).Scan(&hasColumn); err != nil || hasColumn {
		t.Fatalf("outbox.published_at after 00040: there %v (%v)", hasColumn, err)
	}
	// The relay publishes sequence 2; then the rollback.
	if _, err := pool.Exec(ctx, `DELETE FROM outbox_pending p USING outbox o WHERE o.outbox_id = p.outbox_id AND o.sequence = 2`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 39); err != nil {
		t.Fatal(err)
	}
	var published []bool
	if err := pool.QueryRow(ctx, `SELECT array_agg(published_at IS NOT NULL ORDER BY sequence) FROM outbox WHERE member_id = $1`, member).Scan(&published); err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, true, false, false}; !slices.Equal(published, want) {
		t.Errorf("published after rolling 00040 back, by sequence: %v, want %v", published, want)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pending(); !slices.Equal(got, []int64{3, 4}) {
		t.Fatalf("pending after 00040 again: sequences %v, want [3 4]", got)
	}
}
