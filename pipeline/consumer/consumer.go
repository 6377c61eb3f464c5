// Package consumer runs a stage that turns Kafka records into effects outside
// Kafka (PostgreSQL rows, ClickHouse rows): records of a partition are handled
// in order, partitions in parallel, and offsets are committed only after the
// effects are durable. A record its handler rejects goes to the dead-letter
// topic; any other failure is retried, so nothing is skipped.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// RecordFunc applies the effect of one record. It must be idempotent: after a
// crash, records whose offsets were not committed are delivered again. Return
// an error marked with dlq.Reject for a record that can never succeed.
type RecordFunc func(ctx context.Context, r *kgo.Record) error

// BatchFunc applies the effects of a batch of records (from any partitions,
// each partition's records in order). It returns the records it rejects, with
// their reasons, and an error when the batch must be retried as a whole.
type BatchFunc func(ctx context.Context, rs []*kgo.Record) (rejected map[*kgo.Record]error, err error)

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
}

// Consumer is a running stage's Kafka side.
type Consumer struct {
	cfg     Config
	cl      *kafka.Client
	log     *slog.Logger
	now     func() time.Time
	handled metric.Int64Counter
	latency metric.Float64Histogram
	lag     metric.Float64Histogram
}

// New connects a group consumer for cfg. Close it when done.
func New(kcfg kafka.Config, tel kafka.Telemetry, cfg Config) (*Consumer, error) {
	if cfg.MaxPollRecords == 0 {
		cfg.MaxPollRecords = 1000
	}
	opts := []kgo.Opt{
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}
	if cfg.PartitionFetchBytes > 0 {
		opts = append(opts, kgo.FetchMaxPartitionBytes(cfg.PartitionFetchBytes))
	}
	if cfg.Linger > 0 {
		opts = append(opts, kgo.FetchMinBytes(1<<20), kgo.FetchMaxWait(cfg.Linger))
	}
	cl, err := kafka.NewClient(kcfg, tel, cfg.Group, opts...)
	if err != nil {
		return nil, err
	}
	m := tel.Meters.Meter("github.com/membercenter/membercenter/pipeline/consumer")
	c := &Consumer{cfg: cfg, cl: cl, log: tel.Logger.With("stage", cfg.Stage), now: time.Now}
	if c.handled, err = m.Int64Counter("mc.stage.records",
		metric.WithDescription("Records handled by a stage, by outcome (ok, dlq)")); err != nil {
		return nil, err
	}
	if c.latency, err = m.Float64Histogram("mc.stage.handle.duration", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(kafka.LatencyBuckets...),
		metric.WithDescription("Time to apply a record's (or batch's) effects")); err != nil {
		return nil, err
	}
	if c.lag, err = m.Float64Histogram("mc.stage.latency", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(kafka.LatencyBuckets...),
		metric.WithDescription("Time from a record's timestamp to its effects being durable")); err != nil {
		return nil, err
	}
	return c, nil
}

// Client returns the underlying client (to produce, or measure lag).
func (c *Consumer) Client() *kafka.Client { return c.cl }

// Close leaves the group and closes the client.
func (c *Consumer) Close() { c.cl.CloseAllowingRebalance() }

// RunRecords handles records one at a time per partition until ctx ends.
func (c *Consumer) RunRecords(ctx context.Context, fn RecordFunc) error {
	return c.run(ctx, func(ctx context.Context, fetches kgo.Fetches) error {
		g, gctx := errgroup.WithContext(ctx)
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			g.Go(func() error {
				for _, r := range p.Records {
					if err := c.handleOne(gctx, r, fn); err != nil {
						return err
					}
				}
				return nil
			})
		})
		return g.Wait()
	})
}

// RunBatches hands each polled batch to fn until ctx ends.
func (c *Consumer) RunBatches(ctx context.Context, fn BatchFunc) error {
	return c.run(ctx, func(ctx context.Context, fetches kgo.Fetches) error {
		rs := fetches.Records()
		spans := make([]trace.Span, len(rs))
		for i, r := range rs {
			r.Context, spans[i] = kafka.ProcessSpan(ctx, c.cl.Tracer, r)
		}
		// The batch span links to every record it carries.
		links := make([]trace.Link, len(rs))
		for i := range rs {
			links[i] = trace.Link{SpanContext: spans[i].SpanContext()}
		}
		start := c.now()
		var rejected map[*kgo.Record]error
		err := Retry(ctx, c.log, c.cfg.Stage+" batch", func() error {
			var err error
			rejected, err = fn(ctx, rs)
			return err
		})
		for i, r := range rs {
			if err == nil {
				if reason, bad := rejected[r]; bad {
					err = c.deadLetter(ctx, r, reason)
				} else {
					c.record(ctx, r, "ok")
				}
			}
			if err != nil {
				spans[i].SetStatus(codes.Error, err.Error())
			}
			spans[i].End()
		}
		c.latency.Record(ctx, c.now().Sub(start).Seconds(), metric.WithAttributes(attribute.String("stage", c.cfg.Stage)))
		return err
	})
}

func (c *Consumer) run(ctx context.Context, handle func(context.Context, kgo.Fetches) error) error {
	c.log.InfoContext(ctx, "stage started", "group", c.cfg.Group, "topics", c.cfg.Topics)
	for {
		fetches := c.cl.PollRecords(ctx, c.cfg.MaxPollRecords)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				c.log.WarnContext(ctx, "fetch error", "topic", topic, "partition", p, "err", err)
			}
		})
		if err := handle(ctx, fetches); err != nil {
			if ctx.Err() != nil {
				return nil // shutting down; uncommitted records are redelivered
			}
			return fmt.Errorf("%s: %w", c.cfg.Stage, err)
		}
		if err := c.cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			// The effects are durable and idempotent: a redelivery after a
			// failed commit changes nothing.
			c.log.WarnContext(ctx, "commit offsets", "err", err)
		}
		c.cl.AllowRebalance()
	}
}

// handleOne applies fn to r, retrying failures until they succeed, are
// rejected (then r is dead-lettered) or ctx ends.
func (c *Consumer) handleOne(ctx context.Context, r *kgo.Record, fn RecordFunc) error {
	rctx, span := kafka.ProcessSpan(ctx, c.cl.Tracer, r)
	defer span.End()
	start := c.now()
	var rejectedErr error
	err := Retry(ctx, c.log, c.cfg.Stage, func() error {
		err := fn(rctx, r)
		if dlq.Rejected(err) {
			rejectedErr = err
			return nil
		}
		return err
	})
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	c.latency.Record(ctx, c.now().Sub(start).Seconds(), metric.WithAttributes(attribute.String("stage", c.cfg.Stage)))
	if rejectedErr != nil {
		span.SetStatus(codes.Error, rejectedErr.Error())
		return c.deadLetter(rctx, r, rejectedErr)
	}
	c.record(ctx, r, "ok")
	return nil
}

func (c *Consumer) deadLetter(ctx context.Context, r *kgo.Record, reason error) error {
	c.log.WarnContext(ctx, "dead-lettering record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "reason", reason)
	letter := dlq.Record(c.cfg.DLQTopic, c.cfg.Stage, r, reason, c.now())
	err := Retry(ctx, c.log, c.cfg.Stage+" dlq", func() error {
		return c.cl.ProduceSync(ctx, letter).FirstErr()
	})
	if err == nil {
		c.record(ctx, r, "dlq")
	}
	return err
}

func (c *Consumer) record(ctx context.Context, r *kgo.Record, outcome string) {
	attrs := metric.WithAttributes(attribute.String("stage", c.cfg.Stage), attribute.String("outcome", outcome))
	c.handled.Add(ctx, 1, attrs)
	if !r.Timestamp.IsZero() {
		c.lag.Record(ctx, c.now().Sub(r.Timestamp).Seconds(), metric.WithAttributes(attribute.String("stage", c.cfg.Stage)))
	}
}

// Retry calls fn until it succeeds or ctx ends, backing off from 50 ms to 5 s.
// Transient failures (a database restart, a broker election) must not skip
// records, so there is no retry limit; the failure is logged every time.
func Retry(ctx context.Context, log *slog.Logger, what string, fn func() error) error {
	backoff := 50 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.WarnContext(ctx, "retrying", "what", what, "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}
