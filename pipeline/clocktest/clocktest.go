// Package clocktest gives tests the instant they run at, so that no test
// depends on the day it runs: MC_TEST_CLOCK (RFC 3339) when set, otherwise a
// fixed ordinary Wednesday. scripts/testdates.sh runs the suite pinned to a
// weekend, a month end, 29 February and 31 December as well.
package clocktest

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// Env names the variable that pins the test clock.
const Env = "MC_TEST_CLOCK"

// Default is the instant tests run at when MC_TEST_CLOCK is unset: a
// Wednesday in the middle of a month, noon in Shanghai.
var Default = time.Date(2026, 3, 18, 12, 0, 0, 0, time.FixedZone("CST", 8*3600))

var (
	startOnce sync.Once
	start     time.Time
	startErr  error
)

// Start returns the instant the test clock starts at. A malformed
// MC_TEST_CLOCK panics: a suite that silently ran on the real date would
// defeat the point.
func Start() time.Time {
	startOnce.Do(func() {
		v := os.Getenv(Env)
		if v == "" {
			start = Default
			return
		}
		start, startErr = time.Parse(time.RFC3339Nano, v)
		if startErr != nil {
			startErr = fmt.Errorf("%s=%q: want an RFC 3339 time such as 2028-02-29T23:30:00+08:00: %w", Env, v, startErr)
		}
	})
	if startErr != nil {
		panic(startErr)
	}
	return start
}

// Clock is a test clock: it starts at Start and runs at the speed of real
// time (so timeouts and rotations behave), and tests can move it.
type Clock struct {
	mu     sync.Mutex
	at     time.Time // the clock's reading at base
	base   time.Time // real time of that reading
	frozen bool
}

// New returns a running clock that starts at Start.
func New() *Clock { return &Clock{at: Start(), base: time.Now()} }

// NewAt returns a running clock that starts at t.
func NewAt(t time.Time) *Clock { return &Clock{at: t, base: time.Now()} }

// Frozen returns a clock that stands still at t until it is moved.
func Frozen(t time.Time) *Clock { return &Clock{at: t, frozen: true} }

// Now reads the clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		return c.at
	}
	return c.at.Add(time.Since(c.base))
}

// Set moves the clock to t; a running clock keeps running from there.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at, c.base = t, time.Now()
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// LastWednesdayNoon returns the latest Wednesday noon (in t's location) at
// or before t: a day no weekend, birthday or month-start rule singles out,
// whatever date the suite is pinned to. Tests that put several purchases at
// this one instant keep them in one month.
func LastWednesdayNoon(t time.Time) time.Time {
	back := (int(t.Weekday()) - int(time.Wednesday) + 7) % 7
	w := time.Date(t.Year(), t.Month(), t.Day()-back, 12, 0, 0, 0, t.Location())
	if w.After(t) {
		w = w.AddDate(0, 0, -7)
	}
	return w
}
