// Package relay publishes the PostgreSQL outbox to member.changes.v1: each
// change keyed by member id, in outbox order, so every member's changes reach
// Kafka in sequence. It wakes on LISTEN/NOTIFY rather than polling, and one
// relay leads at a time, so no row is published twice by two relays; after a
// crash, rows whose publish was not recorded are published again and
// consumers drop them by sequence.
package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Stage is the relay's name in logs and metrics.
const Stage = "relay"

// Change is one outbox row.
type Change struct {
	MemberID    string
	Sequence    int64
	Payload     []byte // a serialized membercenter.v1.MemberChange
	Traceparent string // W3C trace context of the transaction that wrote it
	CreatedAt   time.Time
}

// Outbox is the relay's view of the outbox table.
type Outbox interface {
	// Lead blocks until this relay is the only one publishing, and returns a
	// session in which it stays so.
	Lead(ctx context.Context) (Session, error)
}

// Session is a leadership term.
type Session interface {
	// Drain claims up to limit unpublished changes in outbox order, calls
	// publish with them and, if publish succeeds, marks them published, all in
	// one database transaction. It returns how many it published.
	Drain(ctx context.Context, limit int, publish func(context.Context, []Change) error) (int, error)
	// Wait returns when new changes may be waiting or timeout passes. An
	// error means the session is lost.
	Wait(ctx context.Context, timeout time.Duration) error
	// Close ends the term.
	Close()
}

// Relay runs the stage.
type Relay struct {
	cl        *kafka.Client
	out       Outbox
	topic     string
	prop      propagation.TextMapPropagator
	log       *slog.Logger
	batch     int
	published metric.Int64Counter
	delay     metric.Float64Histogram
}

// New returns a relay producing with an idempotent producer.
func New(kcfg kafka.Config, tel kafka.Telemetry, out Outbox) (*Relay, error) {
	cl, err := kafka.NewClient(kcfg, tel, "",
		kgo.ProducerLinger(0),
	)
	if err != nil {
		return nil, err
	}
	m := tel.Meters.Meter("github.com/membercenter/membercenter/pipeline/relay")
	r := &Relay{cl: cl, out: out, topic: kcfg.Topics.MemberChanges, prop: tel.Propagator, log: tel.Logger.With("stage", Stage), batch: 500}
	if r.published, err = m.Int64Counter("mc.relay.published", metric.WithDescription("Changes published to member.changes.v1")); err != nil {
		return nil, err
	}
	if r.delay, err = m.Float64Histogram("mc.relay.delay", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(kafka.LatencyBuckets...),
		metric.WithDescription("Time from a change's commit to its publish being acknowledged")); err != nil {
		return nil, err
	}
	return r, nil
}

// Close closes the producer.
func (r *Relay) Close() { r.cl.Close() }

// Run publishes until ctx ends, taking over leadership whenever it can.
func (r *Relay) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		err := consumer.Retry(ctx, r.log, "relay term", func() error { return r.term(ctx) })
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
	return nil
}

// term publishes while this relay leads; it returns the error that ended it.
func (r *Relay) term(ctx context.Context) error {
	sess, err := r.out.Lead(ctx)
	if err != nil {
		return fmt.Errorf("lead: %w", err)
	}
	defer sess.Close()
	r.log.InfoContext(ctx, "relay leading", "topic", r.topic)
	for {
		n, err := sess.Drain(ctx, r.batch, r.publish)
		if err != nil {
			return fmt.Errorf("drain outbox: %w", err)
		}
		if n == r.batch {
			continue // more may be waiting
		}
		if err := sess.Wait(ctx, 5*time.Second); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("wait for outbox: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (r *Relay) publish(ctx context.Context, changes []Change) error {
	recs := make([]*kgo.Record, len(changes))
	for i, c := range changes {
		rctx := r.prop.Extract(ctx, propagation.MapCarrier{"traceparent": c.Traceparent})
		recs[i] = &kgo.Record{
			Topic: r.topic,
			Key:   []byte(c.MemberID),
			Value: c.Payload,
			Headers: []kgo.RecordHeader{
				{Key: "content-type", Value: []byte("application/x-protobuf")},
				{Key: "mc-sequence", Value: []byte(strconv.FormatInt(c.Sequence, 10))},
			},
			Context: rctx,
		}
	}
	if err := r.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("publish %d changes: %w", len(recs), err)
	}
	now := time.Now()
	for _, c := range changes {
		r.delay.Record(ctx, now.Sub(c.CreatedAt).Seconds())
	}
	r.published.Add(ctx, int64(len(changes)), metric.WithAttributes(attribute.String("topic", r.topic)))
	return nil
}
