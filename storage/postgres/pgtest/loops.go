package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Loops are background loops under a test of how they ride out a restart
// (TerminateBackends): none of them may end before Stop.
type Loops struct {
	stop  context.CancelFunc
	ended chan error
	n     int
}

// StartLoops runs each loop until Stop.
func StartLoops(ctx context.Context, loops ...func(ctx context.Context) error) *Loops {
	runCtx, stop := context.WithCancel(ctx)
	l := &Loops{stop: stop, ended: make(chan error, len(loops)), n: len(loops)}
	for _, loop := range loops {
		go func() { l.ended <- loop(runCtx) }()
	}
	return l
}

// WaitFor polls cond every 20 ms until it holds; the test fails at once
// when a loop ends first, or when 5 minutes pass (with cond's last error).
func (l *Loops) WaitFor(t testing.TB, what string, cond func() (bool, error)) {
	t.Helper()
	poll(t, what, cond, func() {
		select {
		case err := <-l.ended:
			t.Fatalf("%s: a loop ended: %v", what, err)
		default:
		}
	})
}

// Eventually polls cond every 20 ms until it holds, failing the test when
// 5 minutes pass (with cond's last error): generous, for state another
// session or process settles while other work keeps the cores busy (90 s
// was once too little for a rebalance test's twelve workers to reach their
// locks on a machine running several times slower than usual). It never
// stands in for a synchronisation the test could wait on.
func Eventually(t testing.TB, what string, cond func() (bool, error)) {
	t.Helper()
	poll(t, what, cond, func() {})
}

func poll(t testing.TB, what string, cond func() (bool, error), check func()) {
	t.Helper()
	const limit = 5 * time.Minute
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if ok {
			return
		}
		check()
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s (last error: %v)", what, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the loops and waits for them; a loop that ended with an error
// fails the test.
func (l *Loops) Stop(t testing.TB) {
	t.Helper()
	l.stop()
	for range l.n {
		if err := <-l.ended; err != nil {
			t.Errorf("loop ended with %v", err)
		}
	}
}

// LockWaiters counts the sessions of pool's database waiting for a lock:
// a test that makes one call wait for another's lock waits for this count
// before it goes on.
func LockWaiters(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
	return n, err
}
