package identity

import (
	"context"
	"sync"
)

// numberLocks serialises, within this process, the attempts at one member
// number's dynamic code. The attempts of every process are held to the
// failure lock by ReserveCodeAttempt, which counts an attempt in flight as a
// failure until it is found not wrong; without this, tills of one process
// scanning a member's right code at once (as the till and the app's retry
// do) could fill the five in flight and be answered "locked". Waiting here
// holds no database connection, and a caller that gives up stops waiting.
type numberLocks struct {
	mu   sync.Mutex
	held map[int64]*numberLock
}

type numberLock struct {
	turn    chan struct{} // holds a token while the number is free
	waiters int           // callers holding or waiting for it
}

// lock waits for the number's turn and returns its release; an error when
// ctx ends first.
func (l *numberLocks) lock(ctx context.Context, number int64) (func(), error) {
	l.mu.Lock()
	if l.held == nil {
		l.held = map[int64]*numberLock{}
	}
	n := l.held[number]
	if n == nil {
		n = &numberLock{turn: make(chan struct{}, 1)}
		n.turn <- struct{}{}
		l.held[number] = n
	}
	n.waiters++
	l.mu.Unlock()
	leave := func() {
		l.mu.Lock()
		if n.waiters--; n.waiters == 0 {
			delete(l.held, number)
		}
		l.mu.Unlock()
	}
	select {
	case <-n.turn:
		return func() { n.turn <- struct{}{}; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}
