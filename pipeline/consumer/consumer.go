// Package consumer runs a stage that turns Kafka records into effects outside
// Kafka (PostgreSQL rows, ClickHouse rows): records of a partition are handled
// in order, partitions independently, and offsets are committed only after
// the effects are durable.
//
// Failures are classified once, here (see package fault): a data error
// dead-letters the record at once; an outage (a server restarting, a lost
// connection) is retried with backoff for as long as it lasts; anything else
// is retried for at most the configured limit and then dead-lettered with
// its reason, so no record blocks its partition for longer. Each partition
// has its own worker, so a partition retrying a record never holds up the
// others.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// RecordFunc applies the effect of one record. It must be idempotent: after a
// crash, records whose offsets were not committed are delivered again. Return
// a data error (fault.Permanent, dlq.Reject) for a record that can never
// succeed.
type RecordFunc func(ctx context.Context, r *kgo.Record) error

// BatchFunc applies the effects of a batch of records (from any partitions,
// each partition's records in order). It returns the records it rejects, with
// their reasons, and an error when the batch must be retried as a whole. It
// must apply all of the batch or none of it.
type BatchFunc func(ctx context.Context, rs []*kgo.Record) (rejected map[*kgo.Record]error, err error)

// PartitionFunc applies, all or nothing, a batch of one partition's
// records in order. It returns the records it refuses (data errors it can
// pin on one record; the others are applied) and an error when the batch as
// a whole failed. A batch that fails with a data error, or with an
// unrecognised one for longer than the retry limit, is split until the
// records at fault are alone.
type PartitionFunc func(ctx context.Context, rs []*kgo.Record) (rejected map[*kgo.Record]error, err error)

// Config describes one stage.
type Config struct {
	Stage  string   // name in logs, metrics and dead letters
	Group  string   // consumer group
	Topics []string // topics consumed
	// DLQTopic receives rejected records.
	DLQTopic string
	// MaxPollRecords bounds one batch; 0 means 1000.
	MaxPollRecords int
	// PartitionFetchBytes bounds what one fetch buffers per partition
	// (0: franz-go's default, 1 MiB). Per-record stages set it low so a
	// backlog's poll spans many partitions, which they work on in parallel,
	// instead of a thousand records of one.
	PartitionFetchBytes int32
	// Linger makes the broker hold a fetch until it has 1 MiB or Linger has
	// passed, so a batch stage writes fewer, larger batches (ClickHouse
	// makes a part of every insert). 0: answer as soon as anything arrives.
	Linger time.Duration
	// MaxPartitionBatch bounds the records a partition's worker applies in
	// one call of a PartitionFunc (0: 500).
	MaxPartitionBatch int
}

// Consumer is a running stage's Kafka side.
type Consumer struct {
	cfg        Config
	seal       dlq.Sealer // dead letters' keys and values (kafka.Config.DLQSealer)
	retryLimit time.Duration
	cl         *kafka.Client
	log        *slog.Logger
	now        func() time.Time
	handled    metric.Int64Counter
	latency    metric.Float64Histogram
	lag        metric.Float64Histogram
	// The metrics' attribute sets, made once: a set made for every record
	// (two of them) cost more than recording it.
	inStage            metric.MeasurementOption
	handledOK, letters metric.MeasurementOption

	mu      sync.Mutex
	workers map[partition]*worker
}

type partition struct {
	topic string
	id    int32
}

// New connects a group consumer for cfg. Close it when done.
func New(kcfg kafka.Config, tel kafka.Telemetry, cfg Config) (*Consumer, error) {
	if cfg.MaxPollRecords == 0 {
		cfg.MaxPollRecords = 1000
	}
	c := &Consumer{cfg: cfg, seal: kcfg.DLQSealer, retryLimit: kcfg.RetryLimit(), log: tel.Logger.With("stage", cfg.Stage), now: time.Now,
		workers: map[partition]*worker{},
		inStage: metric.WithAttributes(attribute.String("stage", cfg.Stage))}
	c.handledOK, c.letters = kafka.RecordOutcomes(cfg.Stage)
	opts := []kgo.Opt{
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Workers mark what is durable; marks are committed every second,
		// and before a partition is given up.
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(time.Second),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
	}
	opts = append(opts, kcfg.GroupOptions()...)
	if cfg.PartitionFetchBytes > 0 {
		opts = append(opts, kgo.FetchMaxPartitionBytes(cfg.PartitionFetchBytes))
	}
	if cfg.Linger > 0 {
		opts = append(opts, kgo.FetchMinBytes(1<<20), kgo.FetchMaxWait(cfg.Linger))
	} else {
		// A partition its worker paused is fetched again when the fetch in
		// flight for the others returns: keep that wait short.
		opts = append(opts, kgo.FetchMaxWait(500*time.Millisecond))
	}
	cl, err := kafka.NewClient(kcfg, tel, cfg.Group, opts...)
	if err != nil {
		return nil, err
	}
	c.cl = cl
	sm, err := kafka.NewStageMetrics(tel.Meters)
	if err != nil {
		return nil, err
	}
	c.handled, c.latency, c.lag = sm.Records, sm.Handle, sm.Latency
	return c, nil
}

// Client returns the underlying client (to produce, or measure lag).
func (c *Consumer) Client() *kafka.Client { return c.cl }

// Close leaves the group and closes the client.
func (c *Consumer) Close() { c.cl.CloseAllowingRebalance() }

// RunRecords handles records one at a time, in order per partition, each
// partition in its own worker, until ctx ends.
func (c *Consumer) RunRecords(ctx context.Context, fn RecordFunc) error {
	return c.runWorkers(ctx, fn, nil)
}

// RunPartitionBatches hands each partition's records to fn in batches of at
// most MaxPartitionBatch, in order, each partition in its own worker, until
// ctx ends. Records that arrive while a batch is applied make the next one.
func (c *Consumer) RunPartitionBatches(ctx context.Context, fn PartitionFunc) error {
	return c.runWorkers(ctx, nil, fn)
}

// runWorkers polls until ctx ends and hands each partition's records to its
// worker, which applies them with fn one at a time or, if fn is nil, with
// batchFn in batches.
func (c *Consumer) runWorkers(ctx context.Context, fn RecordFunc, batchFn PartitionFunc) error {
	c.log.InfoContext(ctx, "stage started", "group", c.cfg.Group, "topics", c.cfg.Topics)
	defer c.stopAll()
	for {
		fetches := c.cl.PollRecords(ctx, c.cfg.MaxPollRecords)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		c.logFetchErrors(ctx, fetches)
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) > 0 {
				c.worker(ctx, partition{p.Topic, p.Partition}, fn, batchFn).enqueue(p.Records)
			}
		})
		// Workers own the records now; a rebalance may go ahead (its
		// revoke stops the workers of what it takes away).
		c.cl.AllowRebalance()
	}
}

// worker returns the worker of p, starting it if needed. Called by the poll
// loop only, between a poll and AllowRebalance, so no revoke runs meanwhile.
func (c *Consumer) worker(ctx context.Context, p partition, fn RecordFunc, batchFn PartitionFunc) *worker {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w, ok := c.workers[p]; ok {
		return w
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &worker{c: c, p: p, fn: fn, batchFn: batchFn, cancel: cancel, wake: make(chan struct{}, 1), done: make(chan struct{})}
	c.workers[p] = w
	go w.run(wctx)
	return w
}

// revoked stops the workers of partitions taken away and commits what they
// finished, before the partitions go to another member.
func (c *Consumer) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	c.stop(revoked)
	if err := cl.CommitMarkedOffsets(ctx); err != nil && ctx.Err() == nil {
		c.log.WarnContext(ctx, "commit offsets of revoked partitions", "err", err)
	}
}

// lost stops the workers of partitions lost without a clean revoke (the
// session expired); their offsets can no longer be committed by us.
func (c *Consumer) lost(_ context.Context, _ *kgo.Client, lost map[string][]int32) { c.stop(lost) }

func (c *Consumer) stop(parts map[string][]int32) {
	var stopped []*worker
	c.mu.Lock()
	for topic, ids := range parts {
		for _, id := range ids {
			p := partition{topic, id}
			if w, ok := c.workers[p]; ok {
				delete(c.workers, p)
				w.cancel()
				stopped = append(stopped, w)
			}
		}
	}
	c.mu.Unlock()
	for _, w := range stopped {
		<-w.done
	}
	// A partition paused by its worker must not stay paused for its next
	// owner in this process.
	c.cl.ResumeFetchPartitions(parts)
}

// stopAll stops every worker and commits what they finished (shutdown).
func (c *Consumer) stopAll() {
	parts := map[string][]int32{}
	c.mu.Lock()
	for p := range c.workers {
		parts[p.topic] = append(parts[p.topic], p.id)
	}
	c.mu.Unlock()
	c.stop(parts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.cl.CommitMarkedOffsets(ctx); err != nil {
		c.log.WarnContext(ctx, "commit offsets at shutdown", "err", err)
	}
}

// worker applies one partition's records in order. The poll loop hands it
// each polled slice; it pauses fetching for the partition while two slices
// wait, so a slow partition buffers little and never holds up the poll.
type worker struct {
	c       *Consumer
	p       partition
	fn      RecordFunc
	batchFn PartitionFunc
	cancel  context.CancelFunc
	wake    chan struct{}
	done    chan struct{}

	mu     sync.Mutex
	queue  [][]*kgo.Record
	paused bool
}

const maxQueued = 2

func (w *worker) enqueue(rs []*kgo.Record) {
	w.mu.Lock()
	w.queue = append(w.queue, rs)
	if len(w.queue) >= maxQueued && !w.paused {
		w.paused = true
		w.c.cl.PauseFetchPartitions(map[string][]int32{w.p.topic: {w.p.id}})
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) next() []*kgo.Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		return nil
	}
	rs := w.queue[0]
	w.queue = w.queue[1:]
	if w.batchFn != nil {
		// A batch worker takes what waits, up to its batch size.
		limit := w.c.cfg.MaxPartitionBatch
		if limit <= 0 {
			limit = 500
		}
		if len(rs) > limit {
			w.queue = append([][]*kgo.Record{rs[limit:]}, w.queue...)
			rs = rs[:limit]
		}
		for len(w.queue) > 0 && len(rs)+len(w.queue[0]) <= limit {
			rs = append(rs[:len(rs):len(rs)], w.queue[0]...)
			w.queue = w.queue[1:]
		}
	}
	if w.paused && len(w.queue) < maxQueued {
		w.paused = false
		w.c.cl.ResumeFetchPartitions(map[string][]int32{w.p.topic: {w.p.id}})
	}
	return rs
}

func (w *worker) run(ctx context.Context) {
	defer close(w.done)
	for {
		rs := w.next()
		if rs == nil {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
				continue
			}
		}
		if w.batchFn != nil {
			if err := w.c.handleBatch(ctx, rs, BatchFunc(w.batchFn)); err != nil {
				return // ctx ended: the rest is redelivered to whoever owns the partition next
			}
			w.c.cl.MarkCommitRecords(rs...)
			continue
		}
		for _, r := range rs {
			if err := w.c.handleOne(ctx, r, w.fn); err != nil {
				return // ctx ended: the rest is redelivered to whoever owns the partition next
			}
			w.c.cl.MarkCommitRecords(r)
		}
	}
}

// handleOne applies fn to r until it succeeds or r is dead-lettered; it
// returns an error only when ctx ends first.
func (c *Consumer) handleOne(ctx context.Context, r *kgo.Record, fn RecordFunc) error {
	rctx, span := kafka.ProcessSpan(ctx, c.cl.Tracer, r)
	defer span.End()
	start := c.now()
	err := c.retry(ctx, fmt.Sprintf("%s/%d@%d", r.Topic, r.Partition, r.Offset), func() error {
		return c.attempt(rctx, r, fn)
	})
	c.latency.Record(ctx, c.now().Sub(start).Seconds(), c.inStage)
	if err == nil {
		c.record(ctx, r, false)
		return nil
	}
	if ctx.Err() != nil {
		span.SetStatus(codes.Error, "stopped")
		return ctx.Err()
	}
	span.SetStatus(codes.Error, err.Error())
	return c.deadLetter(rctx, r, err)
}

// attempt runs fn once under the retry limit as a deadline: a record whose
// handling hangs (a lock never granted) is treated like one that fails.
func (c *Consumer) attempt(ctx context.Context, r *kgo.Record, fn RecordFunc) error {
	actx, cancel := context.WithTimeout(ctx, c.retryLimit)
	defer cancel()
	err := fn(actx, r)
	if err != nil && ctx.Err() == nil && actx.Err() != nil {
		return fmt.Errorf("gave up after %s: %w", c.retryLimit, errors.Join(err, errAttemptTimeout))
	}
	return err
}

var errAttemptTimeout = errors.New("the attempt did not finish in time")

// errGaveUp wraps the last error of a record retried for the whole limit.
type errGaveUp struct {
	after time.Duration
	err   error
}

func (e errGaveUp) Error() string {
	return fmt.Sprintf("retried for %s without success: %v", e.after.Round(time.Millisecond), e.err)
}
func (e errGaveUp) Unwrap() error { return e.err }

// retry calls fn until it succeeds, fails with a data error (returned as
// is), fails with an unrecognised error for longer than the retry limit
// (returned as errGaveUp), or ctx ends. Outages are retried for as long as
// they last.
func (c *Consumer) retry(ctx context.Context, what string, fn func() error) error {
	first := c.now()
	return retryLoop(ctx, c.log, what, fn, func(err error) error {
		class := fault.Classify(err)
		if errors.Is(err, errAttemptTimeout) {
			class = fault.Unknown
		}
		switch {
		case class == fault.Data:
			return err
		case class == fault.Unknown && c.now().Sub(first) >= c.retryLimit:
			return errGaveUp{after: c.now().Sub(first), err: err}
		}
		return nil
	})
}

// retryLoop calls fn with backoff from 50 ms to 5 s until it succeeds, ctx
// ends, or final turns its error into the one to return. Failures are
// logged at first, then every tenth, so an outage does not flood the log.
func retryLoop(ctx context.Context, log *slog.Logger, what string, fn func() error, final func(error) error) error {
	var b fault.Backoff
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if ferr := final(err); ferr != nil {
			return ferr
		}
		wait := b.Next()
		if attempt <= 3 || attempt%10 == 0 {
			log.WarnContext(ctx, "retrying", "what", what, "attempt", attempt, "class", fault.Classify(err).String(), "err", err, "backoff", wait)
		}
		if !fault.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// RunBatches hands each polled batch to fn until ctx ends. A batch that
// fails with a data error, or with an unrecognised one for longer than the
// retry limit, is split in halves until the records at fault are alone;
// those are dead-lettered and the rest applied.
func (c *Consumer) RunBatches(ctx context.Context, fn BatchFunc) error {
	c.log.InfoContext(ctx, "stage started", "group", c.cfg.Group, "topics", c.cfg.Topics)
	for {
		fetches := c.cl.PollRecords(ctx, c.cfg.MaxPollRecords)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return c.commitAtShutdown()
		}
		c.logFetchErrors(ctx, fetches)
		rs := fetches.Records()
		if len(rs) > 0 {
			if err := c.handleBatch(ctx, rs, fn); err != nil {
				return c.commitAtShutdown() // ctx ended; uncommitted records are redelivered
			}
			for _, r := range rs {
				c.cl.MarkCommitRecords(r)
			}
		}
		c.cl.AllowRebalance()
	}
}

func (c *Consumer) commitAtShutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.cl.CommitMarkedOffsets(ctx); err != nil {
		c.log.WarnContext(ctx, "commit offsets at shutdown", "err", err)
	}
	return nil
}

func (c *Consumer) handleBatch(ctx context.Context, rs []*kgo.Record, fn BatchFunc) error {
	spans := make([]trace.Span, len(rs))
	rcs := make([]context.Context, len(rs))
	for i, r := range rs {
		r.Context, spans[i] = kafka.ProcessSpan(ctx, c.cl.Tracer, r)
		rcs[i] = r.Context
	}
	// Each record keeps its trace in its Context (a batch applier passes
	// them on, as pipeline/worker does with contract.WithRecordContexts:
	// fn may get a part of rs when a batch is split). What the batch does
	// in common runs in a batch span; a batch of one is its record's.
	bctx := rs[0].Context
	if len(rs) > 1 {
		var bspan trace.Span
		bctx, bspan = c.cl.Tracer.BatchSpan(ctx, rs[0].Topic, rcs)
		defer bspan.End()
	}
	start := c.now()
	rejected, err := c.applyBatch(bctx, rs, fn, true)
	c.latency.Record(ctx, c.now().Sub(start).Seconds(), c.inStage)
	// The batch's effects are committed: its letters are sent even when
	// the stage is stopping or its partitions were just revoked, until
	// letterGrace after the batch.
	lettersBy := time.Now().Add(letterGrace)
	for i, r := range rs {
		if err == nil {
			if reason, bad := rejected[r]; bad {
				lctx, cancel := context.WithDeadline(context.WithoutCancel(r.Context), lettersBy)
				err = c.deadLetter(lctx, r, reason)
				cancel()
			} else {
				c.record(ctx, r, false)
			}
		}
		if err != nil {
			spans[i].SetStatus(codes.Error, err.Error())
		}
		spans[i].End()
	}
	return err
}

// applyBatch applies rs, splitting it around records at fault. patient
// gives a whole batch the retry limit; its halves get one attempt each
// (the limit has shown the failure is not passing), down to single records.
func (c *Consumer) applyBatch(ctx context.Context, rs []*kgo.Record, fn BatchFunc, patient bool) (map[*kgo.Record]error, error) {
	var rejected map[*kgo.Record]error
	call := func() error {
		var err error
		rejected, err = fn(ctx, rs)
		return err
	}
	var err error
	if patient {
		err = c.retry(ctx, fmt.Sprintf("batch of %d", len(rs)), call)
	} else {
		err = c.retry(ctx, fmt.Sprintf("batch of %d", len(rs)), func() error {
			err := call()
			if err != nil && fault.Classify(err) == fault.Unknown {
				return fault.Permanent(err) // no second wait: split now
			}
			return err
		})
	}
	if err == nil {
		return rejected, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if len(rs) == 1 {
		return map[*kgo.Record]error{rs[0]: err}, nil
	}
	c.log.WarnContext(ctx, "batch refused; splitting it to find the records at fault", "records", len(rs), "err", err)
	half := len(rs) / 2
	out := map[*kgo.Record]error{}
	for _, part := range [][]*kgo.Record{rs[:half], rs[half:]} {
		rej, err := c.applyBatch(ctx, part, fn, false)
		if err != nil {
			return nil, err
		}
		for r, reason := range rej {
			out[r] = reason
		}
	}
	return out, nil
}

func (c *Consumer) logFetchErrors(ctx context.Context, fetches kgo.Fetches) {
	fetches.EachError(func(topic string, p int32, err error) {
		if !errors.Is(err, context.Canceled) {
			c.log.WarnContext(ctx, "fetch error", "topic", topic, "partition", p, "err", err)
		}
	})
}

// letterGrace bounds how long the dead letters of a batch already applied
// are still sent after the stage began to stop: well within a process's
// stop budget (MC_SHUTDOWN_GRACE, 10 s; Kubernetes' 30 s). A letter it
// cannot send is not lost for good where the stage keeps its refusals
// (the benefit stage: a redelivered batch refuses the event again).
const letterGrace = 5 * time.Second

// deadLetter sends r to the dead-letter topic with its reason, retrying
// while Kafka is unavailable; it returns an error only when ctx ends.
func (c *Consumer) deadLetter(ctx context.Context, r *kgo.Record, reason error) error {
	c.log.WarnContext(ctx, "dead-lettering record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset,
		"reason", dlq.LoggedReason(reason, c.seal))
	// A member's record is sealed under the member's key (erasing the
	// member makes the letter unreadable).
	letter := dlq.Record(c.cfg.DLQTopic, c.cfg.Stage, r, reason, c.now(), dlq.SealerFor(ctx, c.seal, r))
	// The letter carries the record's trace in ctx, which may outlive the
	// record's own context (a stopping stage): the producer fails a record
	// whose context has ended.
	letter.Context = ctx
	err := Retry(ctx, c.log, c.cfg.Stage+" dlq", func() error {
		err := c.cl.ProduceSync(ctx, letter).FirstErr()
		if err != nil && fault.IsData(err) {
			// The broker refused the letter itself (its size limit is lower
			// than ours): send the reference alone, marked so (a replay
			// refuses it instead of publishing an empty record).
			letter = dlq.ReferenceOnly(letter, r)
		}
		return err
	})
	if err == nil {
		c.record(ctx, r, true)
	}
	return err
}

// record counts r handled (dead-lettered when dlq) and records its lag.
func (c *Consumer) record(ctx context.Context, r *kgo.Record, dlq bool) {
	outcome := c.handledOK
	if dlq {
		outcome = c.letters
	}
	c.handled.Add(ctx, 1, outcome)
	if !r.Timestamp.IsZero() {
		c.lag.Record(ctx, c.now().Sub(r.Timestamp).Seconds(), c.inStage)
	}
}

// Retry calls fn until it succeeds or ctx ends, backing off from 50 ms to 5 s.
// It is for steps that must not be skipped whatever the failure (writing a
// dead letter, a relay's term), so there is no retry limit.
func Retry(ctx context.Context, log *slog.Logger, what string, fn func() error) error {
	return retryLoop(ctx, log, what, fn, func(error) error { return nil })
}
