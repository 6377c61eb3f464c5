package postgres_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestRelayBatchClaimsWithoutWritingTheRows: a claimed batch holds the next
// unpublished rows by id, in outbox order, without writing them (their row
// versions stay those the writers committed); it is found in flight with
// those rows until marked, and marking publishes exactly them, without
// writing them either (marking it again, nothing more). A batch
// recorded before migration 00034 (its rows tagged, no ids) is still found
// and marked by its tag.
func TestRelayBatchClaimsWithoutWritingTheRows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	member := newMember(t, pool)
	for range 5 {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			s, err := postgres.NextSequence(ctx, tx, member)
			if err != nil {
				return err
			}
			return postgres.InsertOutbox(ctx, tx, postgres.OutboxRow{MemberID: member, Sequence: s, ChangeID: uuid.New(), Payload: []byte{byte(s)}})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	versions := func() map[int64]string {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT outbox_id, xmin::text FROM outbox`)
		if err != nil {
			t.Fatal(err)
		}
		out := map[int64]string{}
		var id int64
		var xmin string
		if _, err := pgx.ForEachRow(rows, []any{&id, &xmin}, func() error { out[id] = xmin; return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	unpublished := func() []int64 {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT outbox_id FROM outbox_pending ORDER BY outbox_id`)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	sequences := func(rows []postgres.OutboxRow) []int64 {
		var out []int64
		for _, r := range rows {
			out = append(out, r.Sequence)
		}
		return out
	}
	term, err := postgres.NewRelayTerm(ctx, pool, "g", "test")
	if err != nil {
		t.Fatal(err)
	}
	before := versions()
	batch := uuid.New()
	var claimed []postgres.OutboxRow
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) (err error) {
		claimed, err = postgres.ClaimRelayBatch(ctx, tx, "g", term, batch, 3)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := sequences(claimed); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("claimed sequences %v, want the first three", got)
	}
	if after := versions(); !maps.Equal(before, after) {
		t.Errorf("claiming wrote the rows: versions %v, then %v", before, after)
	}
	id, inFlight, err := postgres.RelayBatchInFlight(ctx, pool, "g")
	if err != nil || id != batch || !slices.Equal(sequences(inFlight), []int64{1, 2, 3}) {
		t.Fatalf("in flight: %s %v %v; want %s with sequences 1-3", id, sequences(inFlight), err, batch)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := postgres.ClaimRelayBatch(ctx, tx, "g", term, uuid.New(), 3)
		return err
	}); err == nil {
		t.Error("a second batch was claimed while one is in flight")
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return postgres.MarkRelayBatchPublished(ctx, tx, "g", term, batch)
	}); err != nil {
		t.Fatal(err)
	}
	ids := slices.Sorted(maps.Keys(before))
	if got := unpublished(); !slices.Equal(got, ids[3:]) {
		t.Fatalf("unpublished after marking %v, want %v", got, ids[3:])
	}
	// Marking deletes the pending rows: the outbox rows are not rewritten
	// (migration 00040; an update of published_at rewrote each, payload
	// and all).
	if after := versions(); !maps.Equal(before, after) {
		t.Errorf("marking wrote the outbox rows: versions %v, then %v", before, after)
	}
	if id, _, err := postgres.RelayBatchInFlight(ctx, pool, "g"); err != nil || id != (uuid.UUID{}) {
		t.Fatalf("in flight after marking: %s %v", id, err)
	}
	// Marking a batch that has ended (a retry after a commit whose answer
	// was lost) marks nothing more.
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return postgres.MarkRelayBatchPublished(ctx, tx, "g", term, batch)
	}); err != nil {
		t.Fatalf("marking the ended batch again: %v", err)
	}
	if got := unpublished(); !slices.Equal(got, ids[3:]) {
		t.Fatalf("unpublished after marking again %v, want %v", got, ids[3:])
	}

	// A batch recorded before migration 00034: rows tagged, no ids.
	legacy := uuid.New()
	if _, err := pool.Exec(ctx, `UPDATE outbox SET relay_batch = $1 WHERE outbox_id IN (SELECT outbox_id FROM outbox_pending)`, legacy); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO relay_batches (batch_id, relay_group, term) VALUES ($1, 'g', $2)`, legacy, term); err != nil {
		t.Fatal(err)
	}
	id, inFlight, err = postgres.RelayBatchInFlight(ctx, pool, "g")
	if err != nil || id != legacy || !slices.Equal(sequences(inFlight), []int64{4, 5}) {
		t.Fatalf("legacy batch in flight: %s %v %v; want %s with sequences 4-5", id, sequences(inFlight), err, legacy)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return postgres.MarkRelayBatchPublished(ctx, tx, "g", term, legacy)
	}); err != nil {
		t.Fatal(err)
	}
	if got := unpublished(); len(got) != 0 {
		t.Fatalf("unpublished after marking the legacy batch: %v", got)
	}
}
