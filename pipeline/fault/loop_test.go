package fault_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/membercenter/membercenter/pipeline/fault"
)

func TestBackoffDoublesUpToItsCapAndResets(t *testing.T) {
	b := fault.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	var got []time.Duration
	for range 5 {
		got = append(got, b.Next())
	}
	want := []time.Duration{10, 20, 40, 50, 50}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoff %v, want %v ms", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != 10*time.Millisecond {
		t.Errorf("after Reset: %v", d)
	}
}

// TestEveryRetriesFailuresSoonerThanItsIntervalAndNeverStops: a loop with
// an hour's interval whose step fails transiently three times runs it again
// within milliseconds each time, then waits its interval; it returns only
// when its context ends.
func TestEveryRetriesFailuresSoonerThanItsIntervalAndNeverStops(t *testing.T) {
	fourRunsThenAPause(t, "Every", func(ctx context.Context, run func() int) {
		fault.Every(ctx, slog.New(slog.DiscardHandler), "step", time.Hour, func(context.Context) error {
			if run() <= 3 {
				return fault.Temporary(errors.New("connection refused"))
			}
			return nil
		})
	})
}

// TestDrainRunsAgainAtOnceWhileABatchIsFull: with an hour's linger, a step
// that moves two full batches, fails transiently once and then moves less
// runs four times within a minute, and not again before its linger; Drain
// returns only when its context ends.
func TestDrainRunsAgainAtOnceWhileABatchIsFull(t *testing.T) {
	fourRunsThenAPause(t, "Drain", func(ctx context.Context, run func() int) {
		fault.Drain(ctx, slog.New(slog.DiscardHandler), "step", 10, time.Hour, func(_ context.Context, batch int) (int, error) {
			switch run() {
			case 1, 2:
				return batch, nil
			case 3:
				return 0, fault.Temporary(errors.New("connection refused"))
			}
			return batch - 1, nil
		})
	})
}

// fourRunsThenAPause runs loop, whose step calls run (which numbers its
// calls), and checks that the step runs four times within a minute (an
// hour's pause must not delay a retry, nor the next batch of a backlog),
// then not again before the pause, and that loop returns only once its
// context ends.
func fourRunsThenAPause(t *testing.T, name string, loop func(ctx context.Context, run func() int)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan int, 10)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		loop(ctx, func() int {
			n++
			calls <- n
			return n
		})
	}()
	deadline := time.After(time.Minute)
	for want := 1; want <= 4; want++ {
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("call %d, want %d", got, want)
			}
		case <-deadline:
			t.Fatalf("step ran %d times, want 4 within a minute (an hour's pause must not delay a retry or a backlog)", want-1)
		}
	}
	select {
	case <-calls:
		t.Fatalf("%s ran its step again before its pause", name)
	case <-done:
		t.Fatalf("%s returned while its context was live", name)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	<-done
}
