// Package relay publishes the PostgreSQL outbox to member.changes.v1: each
// change keyed by member id, in outbox order, so every member's changes
// reach Kafka in sequence, and each exactly once. An idle relay probes the
// outbox every few milliseconds (postgres.OutboxPoll) rather than having
// every writer NOTIFY it: PostgreSQL serialises the commits of notifying
// transactions.
//
// # Exactly once
//
// One relay of a group leads at a time (Outbox.Lead: a PostgreSQL lock, and
// a term number that fences every write of an earlier leader). A leader
// publishes batches, one at a time, each in its own Kafka transaction under
// the group's fixed transactional id:
//
//  1. Claim: in one PostgreSQL transaction that checks the term, the next
//     unpublished rows are read and recorded, by their ids, as a new batch
//     in flight (the rows themselves are not written). Nothing is in Kafka
//     yet.
//  2. Publish: a Kafka transaction with the batch's records, each carrying
//     the batch id in the header mc-relay-batch, then commit.
//  3. Mark: in one PostgreSQL transaction that checks the term, the batch's
//     rows are marked published and the batch ends.
//
// A new term (a restarted relay, or another replica taking over) first
// initialises the transactional producer. Kafka then bumps the producer
// epoch of the transactional id: a transaction the previous leader left
// open is aborted (or, if its commit was already under way, completed)
// before the call returns, and nothing that leader sends afterwards can
// commit. Only then does the new leader read the batch in flight from
// PostgreSQL and ask Kafka whether it committed: it reads, committed
// records only, the last records of every partition. The relay is the
// topic's only writer and the batch in flight is its last transaction, so
// if that transaction committed, its records are the last data records of
// every partition it wrote to; if none of them carries the batch id, it did
// not commit and never will. The leader then marks the batch published, or
// publishes it again (same rows, same order) and marks it, before claiming
// anything new. A crash at any step therefore leaves the topic with each
// change exactly once (read committed, as the sync hub and the ClickHouse
// sink read it):
//
//   - before 1 commits: nothing was claimed; the rows are claimed again;
//   - between 1 and 2's commit: the transaction is aborted by the fencing,
//     or it never began; the batch is published by the next leader;
//   - between 2 and 3 (failpoint relay-after-publish): the batch is found
//     committed and only marked;
//   - during 3: as between 2 and 3, or already marked.
//
// A zombie leader (one that lost its lock without noticing, e.g. across a
// network partition) cannot break this: its PostgreSQL writes fail the term
// check (the new term is written only once a write of the old term in
// progress has finished, so the new leader sees any batch the zombie
// recorded), and its Kafka transactions fail with a fenced epoch. Per-member
// order holds because batches go out one at a time in outbox order and a
// batch in flight is settled before the next is claimed. The sync hub still
// drops a sequence it has delivered, as a second line of defence.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/failpoint"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Stage is the relay's name in logs and metrics.
const Stage = "relay"

// HeaderBatch carries the id of the relay batch a record was published in.
const HeaderBatch = "mc-relay-batch"

// The relay's contract with the outbox (package contract).
type (
	Change  = contract.OutboxChange
	Batch   = contract.OutboxBatch
	Outbox  = contract.Outbox
	Session = contract.OutboxSession
)

// Relay runs the stage.
type Relay struct {
	kcfg      kafka.Config
	tel       kafka.Telemetry
	cl        *kafka.Client // reads the topic's tail
	out       Outbox
	topic     string
	group     string // also the transactional id
	prop      propagation.TextMapPropagator
	log       *slog.Logger
	batch     int
	published metric.Int64Counter
	delay     metric.Float64Histogram
}

// New returns a relay of the group <prefix>-relay, publishing with a
// transactional producer whose id is the group's name.
func New(kcfg kafka.Config, tel kafka.Telemetry, out Outbox) (*Relay, error) {
	cl, err := kafka.NewClient(kcfg, tel, "")
	if err != nil {
		return nil, err
	}
	m := tel.Meters.Meter("github.com/membercenter/membercenter/pipeline/relay")
	r := &Relay{kcfg: kcfg, tel: tel, cl: cl, out: out, topic: kcfg.Topics.MemberChanges, group: kcfg.Group(Stage),
		prop: tel.Propagator, log: tel.Logger.With("stage", Stage), batch: 500}
	if r.published, err = m.Int64Counter("mc.relay.published", metric.WithDescription("Changes published to member.changes.v1")); err != nil {
		return nil, err
	}
	if r.delay, err = m.Float64Histogram("mc.relay.delay", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(kafka.LatencyBuckets...),
		metric.WithDescription("Time from a change's commit to its publish being acknowledged")); err != nil {
		return nil, err
	}
	return r, nil
}

// Close closes the relay's Kafka client.
func (r *Relay) Close() { r.cl.Close() }

// Run publishes until ctx ends, taking over leadership whenever it can. A
// term that fails (PostgreSQL or Kafka away, a newer leader) ends; the next
// one starts after a backoff and settles what the last left in flight.
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
	sess, err := r.out.Lead(ctx, r.group, r.kcfg.Instance())
	if err != nil {
		return fmt.Errorf("lead: %w", err)
	}
	defer sess.Close()
	prod, err := kafka.NewClient(r.kcfg, r.tel, "",
		kgo.TransactionalID(r.group),
		kgo.TransactionTimeout(15*time.Second),
		kgo.RecordDeliveryTimeout(20*time.Second),
		kgo.ProducerLinger(0),
	)
	if err != nil {
		return err
	}
	defer prod.Close()
	// Fencing: from here on no earlier leader's transaction can commit, and
	// one it left open has been aborted or completed.
	if _, _, err := prod.ProducerID(ctx); err != nil {
		return fmt.Errorf("initialise transactional producer %s: %w", r.group, err)
	}
	r.log.InfoContext(ctx, "relay leading", "topic", r.topic, "term", sess.Term())
	b, err := sess.InFlight(ctx)
	if err != nil {
		return err
	}
	if b != nil {
		if err := r.settle(ctx, sess, prod, b); err != nil {
			return err
		}
	}
	for {
		b, err := sess.Claim(ctx, r.batch)
		if err != nil {
			return fmt.Errorf("claim outbox: %w", err)
		}
		if b != nil {
			if err := r.deliver(ctx, sess, prod, b, true); err != nil {
				return err
			}
			if len(b.Changes) == r.batch {
				continue // more may be waiting
			}
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

// settle finishes a batch an earlier term left in flight: marks it if its
// transaction committed, publishes it again otherwise.
func (r *Relay) settle(ctx context.Context, sess Session, prod *kafka.Client, b *Batch) error {
	committed, err := r.committed(ctx, b.ID)
	if err != nil {
		return fmt.Errorf("settle batch %s: %w", b.ID, err)
	}
	r.log.InfoContext(ctx, "settling the batch in flight", "batch", b.ID, "changes", len(b.Changes), "committed", committed)
	return r.deliver(ctx, sess, prod, b, !committed && len(b.Changes) > 0)
}

// deliver publishes b in one Kafka transaction, if publish is set, then
// marks it published in the outbox.
func (r *Relay) deliver(ctx context.Context, sess Session, prod *kafka.Client, b *Batch, publish bool) error {
	if publish {
		if err := r.publish(ctx, prod, b); err != nil {
			return err
		}
		if failpoint.Enabled {
			failpoint.Inject("relay-after-publish")
		}
	}
	if err := sess.Published(ctx, b); err != nil {
		return fmt.Errorf("mark batch %s published: %w", b.ID, err)
	}
	return nil
}

// publish sends b in one Kafka transaction.
func (r *Relay) publish(ctx context.Context, prod *kafka.Client, b *Batch) error {
	recs := make([]*kgo.Record, len(b.Changes))
	for i, c := range b.Changes {
		rctx := r.prop.Extract(ctx, propagation.MapCarrier{"traceparent": c.Traceparent})
		recs[i] = &kgo.Record{
			Topic: r.topic,
			Key:   []byte(c.MemberID),
			Value: c.Payload,
			Headers: []kgo.RecordHeader{
				{Key: "content-type", Value: []byte("application/x-protobuf")},
				{Key: "mc-sequence", Value: []byte(strconv.FormatInt(c.Sequence, 10))},
				{Key: HeaderBatch, Value: []byte(b.ID)},
			},
			Context: rctx,
		}
	}
	if err := prod.BeginTransaction(); err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		// The term ends and the next one settles the batch; the abort
		// only spares the topic's readers the transaction timeout.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = prod.AbortBufferedRecords(actx)
		_ = prod.EndTransaction(actx, kgo.TryAbort)
		return fmt.Errorf("publish %d changes: %w", len(recs), err)
	}
	if failpoint.Enabled {
		failpoint.Inject("relay-before-commit")
	}
	// Whatever the answer, the next term learns from Kafka whether it
	// committed; a commit cut short by shutdown is settled the same way.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := prod.EndTransaction(cctx, kgo.TryCommit); err != nil {
		return fmt.Errorf("commit batch %s: %w", b.ID, err)
	}
	now := time.Now()
	for _, c := range b.Changes {
		r.delay.Record(ctx, now.Sub(c.CreatedAt).Seconds())
	}
	r.published.Add(ctx, int64(len(b.Changes)), metric.WithAttributes(attribute.String("topic", r.topic)))
	return nil
}

// committed reports whether batch id's transaction committed: whether a
// committed record of the topic's tail carries it (see the package
// comment). Each partition's tail is read back from its committed end,
// widening until it holds a data record.
func (r *Relay) committed(ctx context.Context, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	adm := kadm.NewClient(r.cl.Client)
	starts, err := adm.ListStartOffsets(ctx, r.topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return false, fmt.Errorf("list start offsets of %s: %w", r.topic, err)
	}
	ends, err := adm.ListCommittedOffsets(ctx, r.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return false, fmt.Errorf("list committed offsets of %s: %w", r.topic, err)
	}
	type span struct{ start, end int64 }
	pending := map[int32]span{}
	ends.Each(func(o kadm.ListedOffset) {
		s, _ := starts.Lookup(r.topic, o.Partition)
		if o.Offset > s.Offset {
			pending[o.Partition] = span{s.Offset, o.Offset}
		}
	})
	for window := int64(64); len(pending) > 0; window *= 8 {
		from, to := map[int32]int64{}, map[int32]int64{}
		for p, s := range pending {
			from[p], to[p] = max(s.start, s.end-window), s.end
		}
		found, data, err := r.scan(ctx, from, to, id)
		if err != nil || found {
			return found, err
		}
		for p, s := range pending {
			if data[p] || from[p] == s.start {
				delete(pending, p)
			}
		}
	}
	return false, nil
}

// scan reads, committed records only, each partition p from from[p] up to
// to[p], and reports whether a record carries batch id and which
// partitions hold a data record there.
func (r *Relay) scan(ctx context.Context, from, to map[int32]int64, id string) (bool, map[int32]bool, error) {
	offsets := map[string]map[int32]kgo.Offset{r.topic: {}}
	for p, o := range from {
		offsets[r.topic][p] = kgo.NewOffset().At(o)
	}
	// Transaction markers are kept: the last offset below a committed end
	// is often one, and reading it is how the scan knows it got there.
	cl, err := kafka.NewClient(r.kcfg, r.tel, "", kgo.ConsumePartitions(offsets),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		return false, nil, err
	}
	defer cl.Close()
	data := map[int32]bool{}
	left := len(from)
	done := map[int32]bool{}
	found := false
	for left > 0 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return false, nil, fmt.Errorf("read the tail of %s: %w", r.topic, err)
		}
		var ferr error
		fetches.EachError(func(_ string, p int32, err error) {
			ferr = errors.Join(ferr, fmt.Errorf("partition %d: %w", p, err))
		})
		if ferr != nil {
			return false, nil, fmt.Errorf("read the tail of %s: %w", r.topic, ferr)
		}
		fetches.EachRecord(func(rec *kgo.Record) {
			p := rec.Partition
			if done[p] || rec.Offset >= to[p] {
				return
			}
			if !rec.Attrs.IsControl() {
				data[p] = true
				found = found || kafka.Header(rec, HeaderBatch) == id
			}
			if rec.Offset+1 >= to[p] {
				done[p] = true
				left--
			}
		})
	}
	return found, data, nil
}
