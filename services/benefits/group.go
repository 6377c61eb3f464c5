package benefits

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/changes"
)

// Group commit: the mutating RPCs (Commit, Refund, Redeem, Adjust,
// ClaimCoupon, IssueCoupons) are queued, and a small pool of committers
// applies whatever is queued when one is free, up to a bound, in one
// PostgreSQL transaction with the benefit worker's batch machinery:
//
//   - the calls' idempotency keys are locked in the order of their lock ids
//     and looked up in one round trip; a key with a record is answered from
//     it (or refused with ErrKeyReused), as Idempotent does;
//   - the members are locked in id order and loaded once, following merges;
//     each member's calls are applied in the order they arrived, each call's
//     answer built from the state right after it; a call the programme
//     refuses gets the error it gets alone and is rebuilt away, leaving no
//     trace and failing none of its neighbours;
//   - every write of the group, with the answers stored under their keys,
//     goes in one round trip, one statement per kind of row.
//
// Nothing waits for a group to fill: a call that finds a committer free is
// applied at once, alone; calls group up only while every committer is busy.
// A member with a call in a group in flight (or a key in flight) has its
// later calls held in the queue until that group ends, so a member's calls
// are applied in arrival order (calls under a member id merged away and
// under the survivor's id are ordered by the survivor's row lock, as they
// are on the single path). A second call with a key already in the group
// takes the first's answer; if the first was refused (nothing stored), the
// second is queued again, ahead of the calls that arrived after it.
//
// A group transaction that fails on a conflict (a shared limit used up
// meanwhile, a serialization failure, a deadlock) is retried as a whole, like
// the single path; one that fails otherwise (a unique violation, a data
// error, the connection) rolls back and each of its calls is then run on the
// single path, alone and in order: a call is applied once or not at all.
//
// A caller whose context ends while its call is queued gets the context's
// error and the call is dropped. Once a committer has taken the call, the
// caller still gets the context's error at once, but the call is applied
// and its answer stored under its key: a retry with the key gets it.

// Group commit defaults.
const (
	defaultCommitters = 3
	defaultMaxGroup   = 128
)

// call is a mutating RPC call waiting for, or in, a group.
type call struct {
	scope, key string
	req        proto.Message
	keyed      changes.Keyed
	member     uuid.UUID // as requested
	op         Op
	ch         mcv1.Channel
	store      string
	// empty returns a new empty response; answer fills it from the state
	// right after op and op's effects (an error refuses the call).
	empty  func() proto.Message
	answer func(st *State, fx *Effects, resp proto.Message) error
	span   trace.SpanContext // of the request: its changes carry it
	tp     trace.TracerProvider

	taken, dropped bool // under the grouper's lock
	done           chan struct{}
	answered       bool // by the committer that holds it
	resp           proto.Message
	err            error
}

// reply answers c (once).
func (c *call) reply(resp proto.Message, err error) {
	if c.answered {
		return
	}
	c.answered = true
	c.resp, c.err = resp, err
	close(c.done)
}

// grouper queues calls and runs the committers.
type grouper struct {
	apply func(calls []*call) (requeue []*call)

	mu         sync.Mutex
	queue      []*call
	committers int // running
	max        int // committers at most
	maxGroup   int
	held       bool // tests: nothing is taken until released
	busy       map[uuid.UUID]int
	busyKeys   map[postgres.IdempotencyKey]int
	stats      groupStats

	// fault, when set (tests), is called inside each attempt's transaction
	// after the group's writes ("commit") and after it committed
	// ("committed"); an error it returns is the attempt's.
	fault func(stage string, attempt int) error
}

// groupStats counts what the committers did.
type groupStats struct {
	Groups, Calls, Fallbacks int
}

func newGrouper(apply func([]*call) []*call) *grouper {
	return &grouper{apply: apply, max: defaultCommitters, maxGroup: defaultMaxGroup,
		busy: map[uuid.UUID]int{}, busyKeys: map[postgres.IdempotencyKey]int{}}
}

// SetGroupCommit sets how many groups of mutating RPCs may be applied at
// once (committers) and how many calls a group takes at most (maxGroup).
// committers 0 turns group commit off: each call runs in a transaction of
// its own, in its caller's goroutine (the single path).
func (s *Service) SetGroupCommit(committers, maxGroup int) {
	g := s.group
	g.mu.Lock()
	defer g.mu.Unlock()
	g.max, g.maxGroup = max(committers, 0), max(maxGroup, 1)
}

// submit queues c, starting a committer if fewer than the maximum run.
// Committers run while there is work and end when they find none, so an
// idle service runs no goroutine for this. It returns false, queuing
// nothing, when group commit is off.
func (g *grouper) submit(c *call) bool {
	g.mu.Lock()
	if g.max == 0 {
		g.mu.Unlock()
		return false
	}
	g.queue = append(g.queue, c)
	start := !g.held && g.committers < g.max
	if start {
		g.committers++
	}
	g.mu.Unlock()
	if start {
		go g.run()
	}
	return true
}

// withdraw drops c if no committer has taken it yet.
func (g *grouper) withdraw(c *call) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.taken {
		return false
	}
	c.dropped = true
	return true
}

func (g *grouper) run() {
	for {
		calls := g.take()
		if calls == nil {
			return
		}
		requeue := g.apply(calls)
		g.finish(calls, requeue)
	}
}

// take removes the next group from the queue: the calls in arrival order,
// up to maxGroup, but none of a member (or key) that has a call in a group
// in flight, nor any later call of that member. With nothing to take, the
// committer ends (take returns nil).
func (g *grouper) take() []*call {
	g.mu.Lock()
	defer g.mu.Unlock()
	var group []*call
	if !g.held {
		held := map[uuid.UUID]bool{}
		keys := map[postgres.IdempotencyKey]bool{}
		rest := g.queue[:0]
		for _, c := range g.queue {
			if c.dropped {
				continue
			}
			k := c.keyed.IdempotencyKey
			if len(group) == g.maxGroup || held[c.member] || g.busy[c.member] > 0 || g.busyKeys[k] > 0 {
				held[c.member] = true
				rest = append(rest, c)
				continue
			}
			if keys[k] {
				// A repeated key: answered from the first call, or queued
				// again if that one is refused; the member's later calls
				// wait for it.
				held[c.member] = true
			}
			keys[k] = true
			c.taken = true
			group = append(group, c)
		}
		clear(g.queue[len(rest):])
		g.queue = rest
		for _, c := range group {
			g.busy[c.member]++
			g.busyKeys[c.keyed.IdempotencyKey]++
		}
		if len(group) > 0 {
			g.stats.Groups++
			g.stats.Calls += len(group)
		}
	}
	if len(group) == 0 {
		g.committers--
		return nil
	}
	return group
}

// finish ends a group: requeue goes back to the head of the queue, in
// order, before the group's members and keys are free again.
func (g *grouper) finish(calls, requeue []*call) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range requeue {
		c.taken, c.answered = false, false
	}
	g.queue = append(requeue, g.queue...)
	for _, c := range calls {
		if g.busy[c.member]--; g.busy[c.member] == 0 {
			delete(g.busy, c.member)
		}
		k := c.keyed.IdempotencyKey
		if g.busyKeys[k]--; g.busyKeys[k] == 0 {
			delete(g.busyKeys, k)
		}
	}
}

// hold stops committers from taking calls until the returned release is
// called (tests use it to gather calls into one group).
func (g *grouper) hold() (release func()) {
	g.mu.Lock()
	g.held = true
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		g.held = false
		n := min(g.max-g.committers, len(g.queue))
		g.committers += max(n, 0)
		g.mu.Unlock()
		for range n {
			go g.run()
		}
	}
}

// queued is how many calls wait.
func (g *grouper) queued() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.queue {
		if !c.dropped {
			n++
		}
	}
	return n
}

// mutation is what a mutating RPC asks: op on member, once per key.
type mutation struct {
	scope, key string
	req        proto.Message
	member     uuid.UUID
	op         Op
	ch         mcv1.Channel
	store      string
}

// mutate applies m's operation to the member (the one it was merged into,
// if so) once per idempotency key, in a group with the calls queued beside
// it, and returns the response build fills from the state right after the
// operation and its effects.
func mutate[R proto.Message](ctx context.Context, s *Service, m mutation, build func(st *State, fx *Effects, resp R) error) (R, error) {
	var zero R
	if m.op.Origin == "" {
		m.op.Origin = m.member.String()
	}
	if m.op.Cause == "" {
		m.op.Cause = "rpc:" + m.scope + ":" + m.key
	}
	keyed, err := changes.NewKeyed(m.scope, m.key, m.req)
	if err != nil {
		return zero, err
	}
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	span := trace.SpanFromContext(ctx)
	c := &call{scope: m.scope, key: m.key, req: m.req, keyed: keyed, member: m.member, op: m.op, ch: m.ch, store: m.store,
		empty:  func() proto.Message { return zero.ProtoReflect().New().Interface() },
		answer: func(st *State, fx *Effects, resp proto.Message) error { return build(st, fx, resp.(R)) },
		span:   span.SpanContext(), tp: span.TracerProvider(), done: make(chan struct{})}
	if !s.group.submit(c) {
		resp, err := s.mutateOne(ctx, c)
		if err != nil {
			return zero, err
		}
		return resp.(R), nil
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		select {
		case <-c.done:
		default:
			s.group.withdraw(c) // else it is applied and its answer stored under its key
			return zero, ctx.Err()
		}
	}
	if c.err != nil {
		return zero, c.err
	}
	return c.resp.(R), nil
}

// groupAnswer is what a call of a group gets.
type groupAnswer struct {
	resp    proto.Message
	err     error
	requeue bool
}

// commitGroup applies calls in one transaction, retried on conflicts; if
// it cannot, each call runs alone on the single path. It answers every call
// but those to queue again, which it returns.
func (s *Service) commitGroup(calls []*call) (requeue []*call) {
	first := calls[0]
	links := make([]trace.Link, 0, len(calls)-1)
	for _, c := range calls[1:] {
		if c.span.IsValid() {
			links = append(links, trace.Link{SpanContext: c.span})
		}
	}
	// The group's span is a child of its first call's, linked to the rest.
	ctx, span := first.tp.Tracer("github.com/membercenter/membercenter/services/benefits").Start(
		trace.ContextWithSpanContext(context.Background(), first.span), "benefits.GroupCommit",
		trace.WithLinks(links...), trace.WithAttributes(attribute.Int("membercenter.group.calls", len(calls))))
	defer span.End()
	defer func() {
		if r := recover(); r != nil {
			err := fmt.Errorf("group commit: %v", r)
			s.log.ErrorContext(ctx, "group commit panicked", "err", err)
			for _, c := range calls {
				c.reply(nil, err)
			}
			requeue = nil
		}
	}()

	p := s.program()
	ans := make([]groupAnswer, len(calls))
	fault := s.group.fault
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		clear(ans)
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if err := s.applyGroup(ctx, tx, p, calls, ans); err != nil {
				return err
			}
			if fault != nil {
				return fault("commit", attempt)
			}
			return nil
		})
		if err == nil && fault != nil {
			err = fault("committed", attempt)
		}
		if !errors.Is(err, errBudgetRace) && !postgres.IsSerializationFailure(err) {
			break
		}
	}
	if err != nil {
		// Rolled back: each call alone, in order, as if never grouped (a
		// commit whose outcome was lost finds its answers stored).
		s.log.WarnContext(ctx, "group commit failed; applying its calls one by one", "calls", len(calls), "err", err)
		s.group.mu.Lock()
		s.group.stats.Fallbacks++
		s.group.mu.Unlock()
		for _, c := range calls {
			c.reply(s.mutateOne(trace.ContextWithSpanContext(ctx, c.span), c))
		}
		return nil
	}
	for i, c := range calls {
		if ans[i].requeue {
			requeue = append(requeue, c)
			continue
		}
		c.reply(ans[i].resp, ans[i].err)
	}
	return requeue
}

// applyGroup applies calls in tx and puts their answers in ans.
func (s *Service) applyGroup(ctx context.Context, tx pgx.Tx, p *Program, calls []*call, ans []groupAnswer) error {
	keyed := make([]changes.Keyed, len(calls))
	for i, c := range calls {
		keyed[i] = c.keyed
	}
	stored, err := changes.LockKeys(ctx, tx, keyed)
	if err != nil {
		return err
	}
	seen := map[postgres.IdempotencyKey]bool{}
	var todo []batchOp
	var repeats []int
	for i, c := range calls {
		k := c.keyed.IdempotencyKey
		switch rec, found := stored[k]; {
		case seen[k]:
			repeats = append(repeats, i)
		case found:
			ans[i].resp = c.empty()
			if err := c.keyed.Replay(rec, ans[i].resp); err != nil {
				ans[i].resp, ans[i].err = nil, err
			}
		default:
			todo = append(todo, batchOp{i: i, call: c, op: c.op, member: c.member, ch: c.ch, store: c.store})
		}
		seen[k] = true
	}
	w := postgres.NewLoyaltyWrites(p.Version)
	if len(todo) > 0 {
		refused, answers := map[int]error{}, map[int]proto.Message{}
		if err := s.applyOps(ctx, tx, w, nil, p, todo, refused, answers); err != nil {
			return err
		}
		for _, b := range todo {
			if err := refused[b.i]; err != nil {
				ans[b.i].err = err
				continue
			}
			rec, err := b.call.keyed.Record(answers[b.i])
			if err != nil {
				return err
			}
			w.Responses = append(w.Responses, rec)
			stored[rec.IdempotencyKey] = rec.Response
			ans[b.i].resp = answers[b.i]
		}
	}
	for _, i := range repeats {
		c := calls[i]
		rec, found := stored[c.keyed.IdempotencyKey]
		if !found { // the first call with the key was refused: this one runs
			ans[i].requeue = true
			continue
		}
		ans[i].resp = c.empty()
		if err := c.keyed.Replay(rec, ans[i].resp); err != nil {
			ans[i].resp, ans[i].err = nil, err
		}
	}
	return s.flush(ctx, tx, w)
}

// mutateOne applies c alone in a transaction of its own: the single path.
func (s *Service) mutateOne(ctx context.Context, c *call) (proto.Message, error) {
	var resp proto.Message
	err := s.retryRaces(ctx, func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			resp = c.empty()
			_, err := changes.Idempotent(ctx, tx, c.scope, c.key, c.req, resp, func() error {
				m, err := postgres.CanonicalMember(ctx, tx, c.member)
				if err != nil {
					return err
				}
				st, err := s.load(ctx, tx, m, true, c.op.At, c.op.OrderID)
				if err != nil {
					return err
				}
				fx, err := Engine{P: s.program()}.Apply(st, c.op)
				if err != nil {
					return err
				}
				if err := s.persist(ctx, tx, st, fx, c.op, c.ch, c.store); err != nil {
					return err
				}
				return c.answer(st, fx, resp)
			})
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
