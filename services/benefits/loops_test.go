package benefits_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/benefits"
)

// TestProgrammeWatchAndSchedulerRideOutAPostgresRestart: after every
// session of the database is terminated, the programme watcher still picks
// up a newly loaded version and the scheduler still expires a lot that has
// come due; neither loop returns.
func TestProgrammeWatchAndSchedulerRideOutAPostgresRestart(t *testing.T) {
	f := newFixture(t)
	ctx := ctxWithin(t, 5*time.Minute)
	m := f.member(t)
	f.commit(t, ctx, &mcv1.CommitRequest{MemberId: m, Basket: basket("o1", 10_000), IdempotencyKey: "k"})
	loops := pgtest.StartLoops(ctx,
		func(ctx context.Context) error { return f.svc.Watch(ctx, 50*time.Millisecond) },
		func(ctx context.Context) error { return f.svc.RunScheduler(ctx, 50*time.Millisecond) })

	if _, err := pgtest.TerminateBackends(ctx, f.pool); err != nil {
		t.Fatal(err)
	}
	src := bytes.Replace(benefits.DefaultProgramSource(), []byte("version: default-1"), []byte("version: after-restart"), 1)
	if _, err := benefits.LoadProgram(ctx, f.pool, src); err != nil {
		t.Fatal(err)
	}
	// The member's points come due now.
	if _, err := f.pool.Exec(ctx, `UPDATE point_lots SET expires_at = $2 WHERE member_id = $1`, uuid.MustParse(m), f.clock.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	loops.WaitFor(t, "programme after-restart in force", func() (bool, error) { return f.svc.Program().Version == "after-restart", nil })
	loops.WaitFor(t, "the due points expired", func() (bool, error) {
		var left int64
		err := f.pool.QueryRow(ctx, `SELECT coalesce(sum(remaining), 0) FROM point_lots WHERE member_id = $1`, uuid.MustParse(m)).Scan(&left)
		return err == nil && left == 0, nil
	})
	loops.Stop(t)
}
