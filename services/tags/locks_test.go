package tags_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// The label sweep takes a member's locks in the order the tag worker does
// (the members' rows in id order, then their features), so neither ever
// waits for the other in a cycle. A cycle would lose nothing (PostgreSQL
// breaks it after deadlock_timeout and the loser retries) but stalls both
// for a second each time: in the bench's drains the sweep, which locked the
// due members' features first, broke a dozen such cycles a minute.
//
// Here a worker's batch holds the members' rows while the sweep starts on
// the same, due, members; then the batch takes their features, as the
// worker does next, and commits. PostgreSQL must count no deadlock.
func TestSweepLocksMembersBeforeFeatures(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	var dbName string
	if err := f.pool.QueryRow(c, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	// Purchases made 30 days less 30 seconds ago: their 30-day windows
	// end, and the members are due for the sweep, a minute later.
	members := make([]uuid.UUID, 20)
	evs := make([]*mcv1.MemberEvent, len(members))
	for i := range members {
		members[i] = f.member(t)
		evs[i] = purchase(fmt.Sprintf("e%d", i), members[i], t0.Add(-30*24*time.Hour+30*time.Second), 1000)
	}
	if refused, err := f.svc.ApplyBatch(c, evs); err != nil || len(refused) > 0 {
		t.Fatalf("refused %v, err %v", refused, err)
	}
	*f.clock = t0.Add(time.Minute)

	batch, err := f.pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	defer batch.Rollback(c)
	if _, err := postgres.LockMembersForUpdate(c, batch, members); err != nil {
		t.Fatal(err)
	}
	type result struct {
		n   int
		err error
	}
	swept := make(chan result, 1)
	go func() {
		n, err := f.svc.Sweep(c, 500)
		swept <- result{n, err}
	}()
	admin, err := pgx.Connect(c, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(c)
	pgtest.Eventually(t, "the sweep to wait for the batch's members", func() (bool, error) {
		var waiting int
		err := admin.QueryRow(c, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'`, dbName).Scan(&waiting)
		return waiting > 0, err
	})
	if _, err := postgres.LoadFeaturesBatch(c, batch, members, nil); err != nil {
		t.Fatalf("the batch's features: %v", err)
	}
	if err := batch.Commit(c); err != nil {
		t.Fatal(err)
	}
	r := <-swept
	if r.err != nil || r.n != len(members) {
		t.Fatalf("sweep: %d members, err %v; want %d", r.n, r.err, len(members))
	}

	// A backend reports its statistics when it exits: close the pool's
	// sessions (Reset leaves the pool usable for the checks at the end),
	// wait for them to end, then read the database's count.
	f.pool.Reset()
	pgtest.Eventually(t, "the test's sessions to end", func() (bool, error) {
		var sessions int
		err := admin.QueryRow(c, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1`, dbName).Scan(&sessions)
		return sessions == 0, err
	})
	var deadlocks int64
	if err := admin.QueryRow(c, `SELECT deadlocks FROM pg_stat_database WHERE datname = $1`, dbName).Scan(&deadlocks); err != nil {
		t.Fatal(err)
	}
	if deadlocks != 0 {
		t.Errorf("PostgreSQL broke %d deadlocks between the worker's batch and the sweep", deadlocks)
	}
}
