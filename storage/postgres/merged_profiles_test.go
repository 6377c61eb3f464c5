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
	survivor, merged, active, bare, consented := newMember(t, pool), newMember(t, pool), newMember(t, pool), newMember(t, pool), newMember(t, pool)
	if _, err := pool.Exec(ctx, `UPDATE members SET status = 'merged', merged_into = $2 WHERE member_id = ANY($1)`,
		[]uuid.UUID{merged, bare, consented}, survivor); err != nil {
		t.Fatal(err)
	}
	// consented has consents and no features: its profile row is a
	// consent's (version 0).
	if _, err := pool.Exec(ctx, `INSERT INTO member_consents (member_id, purpose, granted, decided_at, cause) VALUES ($1, 1, false, now(), 'test')`,
		consented); err != nil {
		t.Fatal(err)
	}
	// bare was merged without features or consents: it has no profile to fix.
	if _, err := pool.Exec(ctx, `INSERT INTO member_features (member_id, version) VALUES ($1, 7), ($2, 3), ($3, 5)`,
		survivor, merged, active); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT q.member_id, q.version, coalesce(f.version, -1) FROM profile_exports q LEFT JOIN member_features f USING (member_id)`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID][2]int64{} // queued version, features version
	var m uuid.UUID
	var q, v int64
	if _, err := pgx.ForEachRow(rows, []any{&m, &q, &v}, func() error { got[m] = [2]int64{q, v}; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[merged] != [2]int64{4, 4} || got[consented] != [2]int64{0, -1} {
		t.Fatalf("queued after 00045 (member: queued version, features version or -1): %v; want the merged member %s at 4 (was 3) and %s at 0",
			got, merged, consented)
	}
	if _, err := p.DownTo(ctx, 44); err != nil {
		t.Fatal(err)
	}
}
