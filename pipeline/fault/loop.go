package fault

import (
	"context"
	"log/slog"
	"time"
)

// Backoff paces the retries of a failing step: Min first, doubling up to
// Max. The zero value starts at 50 ms and stops doubling at 5 s.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// Next returns how long to wait before the next attempt.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = 50 * time.Millisecond
	}
	if hi <= 0 {
		hi = 5 * time.Second
	}
	if b.next < lo {
		b.next = lo
	}
	d := min(b.next, hi)
	b.next = min(2*b.next, hi)
	return d
}

// Reset starts the next run of failures from Min again.
func (b *Backoff) Reset() { b.next = 0 }

// Sleep waits for d or until ctx ends, and reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Every runs step at once and then every interval until ctx ends. It never
// gives up, so a background loop outlives any restart of the servers it
// uses: a step that fails transiently (or for a reason Classify cannot
// tell) is logged and run again after a backoff from 50 ms doubling up to
// interval, so the loop catches up as soon as the server is back; a data
// error cannot heal by retrying sooner and waits the whole interval.
func Every(ctx context.Context, log *slog.Logger, what string, interval time.Duration, step func(context.Context) error) {
	b := Backoff{Max: interval}
	for {
		err := step(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := interval
		switch {
		case err == nil:
			b.Reset()
		case Classify(err) == Data:
			log.ErrorContext(ctx, what+" failed", "err", err, "class", Data.String(), "retry_in", wait)
		default:
			wait = b.Next()
			log.WarnContext(ctx, what+" failed; retrying", "err", err, "class", Classify(err).String(), "retry_in", wait)
		}
		if !Sleep(ctx, wait) {
			return
		}
	}
}

// Drain runs step, which moves at most batch items and says how many it
// moved, until ctx ends: again at once while it moves a full batch (a
// backlog is drained without waiting), after linger when it moves less.
// Like Every it never gives up, so it outlives any restart of the servers
// step uses: a failed step is logged and run again after a backoff from
// 50 ms doubling up to 5 s.
func Drain(ctx context.Context, log *slog.Logger, what string, batch int, linger time.Duration, step func(ctx context.Context, batch int) (int, error)) {
	var b Backoff
	for {
		n, err := step(ctx, batch)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			wait := b.Next()
			log.WarnContext(ctx, what+" failed; retrying", "err", err, "class", Classify(err).String(), "retry_in", wait)
			if !Sleep(ctx, wait) {
				return
			}
			continue
		}
		b.Reset()
		if n >= batch {
			continue // a backlog: drain it
		}
		if !Sleep(ctx, linger) {
			return
		}
	}
}
