package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// BenchmarkClaimRelayBatchOnAGrownOutbox: the relay claims 500 pending
// changes on a connection that has claimed before, while the outbox was
// small (1,000 changes), from an outbox that has since grown to 100,000
// published ones and not been analyzed. PostgreSQL keeps the plan it made
// for the small outbox: in the pipeline bench the claim hashed or
// merge-joined every outbox row (6–19 ms a claim, 3,600 buffers for 80
// rows); each claimed row is now looked up by its key.
func BenchmarkClaimRelayBatchOnAGrownOutbox(b *testing.B) {
	const small, grown, claim = 1000, 100_000, 500
	ctx := context.Background()
	pool := pgtest.NewPool(b, nil)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	member := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(ctx, conn, member, memberCreatedAt); err != nil {
		b.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		b.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			b.Fatal(err)
		}
	}
	// changes writes n changes of member after its last, each with a
	// payload about a change's size, and leaves them pending.
	changes := func(n int) {
		b.Helper()
		exec(`WITH s AS (UPDATE members SET change_seq = change_seq + $2 WHERE member_id = $1 RETURNING change_seq)
			INSERT INTO outbox (member_id, sequence, change_id, payload)
			SELECT $1, s.change_seq - $2 + g, gen_random_uuid(), convert_to(repeat('x', 400), 'UTF8')
			  FROM s, generate_series(1, $2::bigint) g`, member, n)
	}
	for _, table := range []string{"outbox", "outbox_pending"} {
		exec(`ALTER TABLE ` + table + ` SET (autovacuum_enabled = false)`)
	}
	term, err := postgres.NewRelayTerm(ctx, conn, "g", "bench")
	if err != nil {
		b.Fatal(err)
	}
	claimAll := func(limit int, publish bool) int {
		b.Helper()
		var n int
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			id := uuid.New()
			rows, err := postgres.ClaimRelayBatch(ctx, tx, "g", term, id, limit)
			if err != nil {
				return err
			}
			n = len(rows)
			if publish {
				return postgres.MarkRelayBatchPublished(ctx, tx, "g", term, id)
			}
			return errRollback
		})
		if err != nil && !errors.Is(err, errRollback) {
			b.Fatal(err)
		}
		return n
	}
	// The small outbox, analyzed, and claims enough for PostgreSQL to keep
	// a generic plan of the claim.
	changes(small)
	exec(`ANALYZE outbox`)
	exec(`ANALYZE outbox_pending`)
	for range 20 {
		claimAll(small/20, true)
	}
	// The outbox grows by published changes, then changes wait.
	changes(grown)
	exec(`DELETE FROM outbox_pending`)
	changes(claim)
	b.ResetTimer()
	for range b.N {
		if n := claimAll(claim, false); n != claim {
			b.Fatalf("claimed %d changes, want %d", n, claim)
		}
	}
}

// errRollback ends a transaction of the benchmark without committing it.
var errRollback = errors.New("rolled back")
