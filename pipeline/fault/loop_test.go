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
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan int, 10)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		fault.Every(ctx, slog.New(slog.DiscardHandler), "step", time.Hour, func(context.Context) error {
			n++
			calls <- n
			if n <= 3 {
				return fault.Temporary(errors.New("connection refused"))
			}
			return nil
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
			t.Fatalf("step ran %d times, want 4 within a minute (an hour's interval must not delay a retry)", want-1)
		}
	}
	select {
	case <-calls:
		t.Fatal("a successful step ran again before its interval")
	case <-done:
		t.Fatal("Every returned while its context was live")
	default:
	}
	cancel()
	<-done
}

// TestDrainRunsAgainAtOnceWhileABatchIsFull: with an hour's linger, a step
// that moves two full batches, fails transiently once and then moves less
// runs four times within a minute, and not again before its linger; Drain
// returns only when its context ends.
func TestDrainRunsAgainAtOnceWhileABatchIsFull(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan int, 10)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		fault.Drain(ctx, slog.New(slog.DiscardHandler), "step", 10, time.Hour, func(_ context.Context, batch int) (int, error) {
			n++
			calls <- n
			switch n {
			case 1, 2:
				return batch, nil
			case 3:
				return 0, fault.Temporary(errors.New("connection refused"))
			}
			return batch - 1, nil
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
			t.Fatalf("step ran %d times, want 4 within a minute (neither a full batch nor a failure waits the linger)", want-1)
		}
	}
	select {
	case <-calls:
		t.Fatal("a step that moved less than a batch ran again before the linger")
	case <-done:
		t.Fatal("Drain returned while its context was live")
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	<-done
}
