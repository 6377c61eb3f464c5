package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestRequeueMergedProfilesMigration: member_profiles' rows gained
// merged_into, and the rows written before it say ” for every id; 00045
// queues the profiles of the members merged into others for export again,
// one version up (so that the new row wins), and no one else's.
func TestRequeueMergedProfilesMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPoolUnchecked(t, nil)
	p := migrations(t, pool)
	if _, err := p.DownTo(ctx, 44); err != nil {
		t.Fatal(err)
	}
	survivor, merged, active, bare := newMember(t, pool), newMember(t, pool), newMember(t, pool), newMember(t, pool)
	if _, err := pool.Exec(ctx, `UPDATE members SET status = 'merged', merged_into = $2 WHERE member_id = ANY($1)`,
		[]uuid.UUID{merged, bare}, survivor); err != nil {
		t.Fatal(err)
	}
	// bare was merged without a features row: it has no profile to fix.
	if _, err := pool.Exec(ctx, `INSERT INTO member_features (member_id, version) VALUES ($1, 7), ($2, 3), ($3, 5)`,
		survivor, merged, active); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT q.member_id, q.version, f.version FROM profile_exports q JOIN member_features f USING (member_id)`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID][2]int64{} // queued version, features version
	var m uuid.UUID
	var q, v int64
	if _, err := pgx.ForEachRow(rows, []any{&m, &q, &v}, func() error { got[m] = [2]int64{q, v}; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[merged] != [2]int64{4, 4} {
		t.Fatalf("queued after 00045 (member: queued version, features version): %v; want only the merged member %s, at 4 (was 3)", got, merged)
	}
	if _, err := p.DownTo(ctx, 44); err != nil {
		t.Fatal(err)
	}
}
