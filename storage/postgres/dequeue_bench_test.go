package postgres_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// BenchmarkDequeueAfterAnEmptyQueue: the profile exporter dequeues 700
// exported members from a queue of 8,000 that autovacuum last saw empty:
// its pages left in place (a busy queue's vacuum cannot take the lock to
// cut them), so PostgreSQL estimates it at one row whatever it holds. On
// that estimate the dequeue joined the exported members back to the queue
// in a nested loop over every queued row: 1.2–1.5 s a dequeue here.
func BenchmarkDequeueAfterAnEmptyQueue(b *testing.B) {
	const queued, exported = 8000, 700
	ctx := context.Background()
	pool := pgtest.NewPool(b, nil)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	members := make([]uuid.UUID, queued)
	versions := make([]int64, queued)
	for i := range members {
		members[i], versions[i] = uuid.New(), 1
	}
	fill := func() {
		b.Helper()
		batch := &pgx.Batch{}
		postgres.QueueProfileExports(batch, members, versions)
		if err := conn.SendBatch(ctx, batch).Close(); err != nil {
			b.Fatal(err)
		}
	}
	// The queue as autovacuum leaves a busy one that emptied, and more
	// dequeues on it than PostgreSQL plans anew before it keeps a plan.
	fill()
	for _, sql := range []string{`DELETE FROM profile_exports`, `VACUUM (TRUNCATE false) profile_exports`} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
	}
	for range 10 {
		if err := postgres.DequeueProfileExports(ctx, conn, []uuid.UUID{uuid.New()}, []int64{1}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		fill()
		b.StartTimer()
		if err := postgres.DequeueProfileExports(ctx, conn, members[:exported], versions[:exported]); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		var left int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM profile_exports`).Scan(&left); err != nil {
			b.Fatal(err)
		}
		if left != queued-exported {
			b.Fatalf("%d members queued after the dequeue; want %d", left, queued-exported)
		}
		if _, err := conn.Exec(ctx, `DELETE FROM profile_exports`); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
