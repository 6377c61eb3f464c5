// Package contract holds what the stream stages need from the domain, and
// nothing else: the domain packages implement these interfaces without
// importing any stage, and the stages call them without knowing the
// domain. Errors follow package fault: a data error (fault.Permanent)
// dead-letters the record, a transient one is retried while it lasts.
package contract

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/trace"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Resolution is who a channel event belongs to.
type Resolution struct {
	MemberID string
	// The event's identifiers without raw values.
	Identifiers []*mcv1.IdentifierRef
	Detail      *mcv1.Resolution
}

// Resolver resolves a validated event's identifiers to one member and
// records that the event was resolved: for a redelivered event (same event
// id) it returns the first answer and changes nothing. (Ingest.)
type Resolver interface {
	ResolveEvent(ctx context.Context, ev *mcv1.ChannelEvent) (Resolution, error)
}

// MemberFinder finds, without changing anything, the member an event's
// identifiers already name (a unique identifier that one member holds);
// ok is false when none does, or several. Ingest seals the dead letter of
// a refused event of a known member under that member's key.
type MemberFinder interface {
	KnownMember(ctx context.Context, ev *mcv1.ChannelEvent) (member string, ok bool)
}

// BatchResolver resolves a partition's events, in order, as Resolver
// would one by one; an error is per event. (Ingest, when it can.)
type BatchResolver interface {
	ResolveEvents(ctx context.Context, evs []*mcv1.ChannelEvent) ([]Resolution, []error)
}

// Applier applies one member event. It records the event id in the same
// transaction as the effect, so a redelivered event changes nothing.
// (The benefit and tag workers.)
type Applier interface {
	Apply(ctx context.Context, ev *mcv1.MemberEvent) error
}

// BatchApplier applies a batch of member events of one partition, in
// order, in one transaction: all of it or none (an error). It returns the
// events it refuses, by index, with their reasons (data errors); the
// others are applied. Events applied before (redelivered) change nothing.
// (The benefit and tag workers, when they can.)
type BatchApplier interface {
	ApplyBatch(ctx context.Context, evs []*mcv1.MemberEvent) (rejected map[int]error, err error)
}

// OutboxChange is one outbox row.
type OutboxChange struct {
	MemberID    string
	Sequence    int64
	Payload     []byte // a serialized membercenter.v1.MemberChange
	Traceparent string // W3C trace context of the transaction that wrote it
	CreatedAt   time.Time
}

// OutboxBatch is changes published in one Kafka transaction.
type OutboxBatch struct {
	ID      string
	Changes []OutboxChange
}

// Outbox is the relay's view of the outbox table.
type Outbox interface {
	// Lead blocks until this relay (leader names it) is the only one of
	// group publishing, and returns a session of a new term in which it
	// stays so.
	Lead(ctx context.Context, group, leader string) (OutboxSession, error)
}

// OutboxSession is a leadership term. Its writes fail once a newer term
// leads.
type OutboxSession interface {
	// Term is the term's number, increasing with every new leader.
	Term() int64
	// InFlight returns the batch recorded and not marked published, or
	// nil.
	InFlight(ctx context.Context) (*OutboxBatch, error)
	// Claim records up to limit unpublished changes, in outbox order, as a
	// new batch in flight and returns it; nil when none wait.
	Claim(ctx context.Context, limit int) (*OutboxBatch, error)
	// Published marks the batch's changes published and ends the batch.
	Published(ctx context.Context, b *OutboxBatch) error
	// Wait returns when new changes may be waiting or timeout passes. An
	// error means the session is lost.
	Wait(ctx context.Context, timeout time.Duration) error
	// Close ends the term.
	Close()
}

// FactEvent is a member event with the trace it travelled in.
type FactEvent struct {
	Msg     *mcv1.MemberEvent
	TraceID string
}

// FactChange is a member change with the trace it travelled in.
type FactChange struct {
	Msg     *mcv1.MemberChange
	TraceID string
}

// Facts stores facts for analysts; each call is one batch insert, all of
// it or none. (The ClickHouse sink.)
type Facts interface {
	WriteEvents(ctx context.Context, events []FactEvent) error
	WriteChanges(ctx context.Context, changes []FactChange) error
}

// recordContexts is the context key of a batch's per-record contexts.
type recordContexts struct{}

// WithRecordContexts attaches to a batch's ctx the context of each of its
// records, in the batch's order (each carries the record's trace: its
// process span, a child of the span that produced it), so that what a
// batch applier writes for a record — its changes, their outbox rows —
// continues that record's trace.
func WithRecordContexts(ctx context.Context, rcs []context.Context) context.Context {
	return context.WithValue(ctx, recordContexts{}, rcs)
}

// RecordContext is ctx carrying the trace of the batch's i-th record (ctx
// itself when the batch has no record contexts).
func RecordContext(ctx context.Context, i int) context.Context {
	rcs, _ := ctx.Value(recordContexts{}).([]context.Context)
	if i < 0 || i >= len(rcs) || rcs[i] == nil {
		return ctx
	}
	return trace.ContextWithSpanContext(ctx, trace.SpanContextFromContext(rcs[i]))
}
