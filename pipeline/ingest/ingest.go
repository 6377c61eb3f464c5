// Package ingest is the first stage: it reads channel.events.v1, validates and
// deduplicates each event, resolves its identifiers to one member and
// publishes the event to member.events.v1 keyed by member id, raw PII
// removed. Output records and consumed offsets commit in one Kafka
// transaction; a malformed or unroutable record goes to dlq.v1 in the same
// transaction, so it never blocks its partition.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"buf.build/go/protovalidate"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Stage is the stage's name in groups, logs and dead letters.
const Stage = "ingest"

// Resolution is who an event belongs to.
type Resolution struct {
	MemberID string
	// The event's identifiers without raw values.
	Identifiers []*mcv1.IdentifierRef
	Detail      *mcv1.Resolution
}

// Resolver resolves a validated event's identifiers to one member and records
// that the event was resolved: for a redelivered event (same event id) it
// returns the first answer and changes nothing. Errors marked with
// dlq.Reject (an identifier that cannot be normalised, say) dead-letter the
// event; any other error is retried.
type Resolver interface {
	ResolveEvent(ctx context.Context, ev *mcv1.ChannelEvent) (Resolution, error)
}

// Ingest runs the stage.
type Ingest struct {
	topics    kafka.Topics
	sess      *kgo.GroupTransactSession
	tracer    *kotel.Tracer
	resolver  Resolver
	validator protovalidate.Validator
	log       *slog.Logger
	records   metric.Int64Counter
	latency   metric.Float64Histogram
	now       func() time.Time
}

// New joins the ingest consumer group with a transactional producer.
func New(kcfg kafka.Config, tel kafka.Telemetry, resolver Resolver) (*Ingest, error) {
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("validator: %w", err)
	}
	group := kcfg.Group(Stage)
	opts, tracer := kafka.Options(kcfg, tel, group)
	opts = append(opts,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(kcfg.Topics.ChannelEvents),
		kgo.TransactionalID(group+"-"+kcfg.Instance()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.TransactionTimeout(30*time.Second),
	)
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return nil, fmt.Errorf("ingest session: %w", err)
	}
	m := tel.Meters.Meter("github.com/membercenter/membercenter/pipeline/ingest")
	records, err := m.Int64Counter("mc.stage.records", metric.WithDescription("Records handled by a stage, by outcome (ok, dlq)"))
	if err != nil {
		return nil, err
	}
	latency, err := m.Float64Histogram("mc.stage.latency", metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(kafka.LatencyBuckets...),
		metric.WithDescription("Time from a record's timestamp to its effects being durable"))
	if err != nil {
		return nil, err
	}
	return &Ingest{
		topics: kcfg.Topics, sess: sess, tracer: tracer, resolver: resolver, validator: validator,
		log: tel.Logger.With("stage", Stage), records: records, latency: latency, now: time.Now,
	}, nil
}

// Close leaves the group.
func (in *Ingest) Close() { in.sess.CloseAllowingRebalance() }

// Run processes events until ctx ends. Each poll is one transaction: either
// every output record and the consumed offsets commit, or none do and the
// records are processed again.
func (in *Ingest) Run(ctx context.Context) error {
	in.log.InfoContext(ctx, "stage started", "topic", in.topics.ChannelEvents)
	backoff := 50 * time.Millisecond
	for {
		fetches := in.sess.PollFetches(ctx)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			in.log.WarnContext(ctx, "fetch error", "topic", topic, "partition", p, "err", err)
		})
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := in.sess.Begin(); err != nil {
			return fmt.Errorf("begin transaction: %w", err)
		}
		// A produce that fails must abort the transaction: End alone would
		// commit the offsets without the lost record.
		produced := kgo.AbortingFirstErrPromise(in.sess.Client())
		procErr := in.process(ctx, fetches, produced)
		if procErr == nil {
			procErr = produced.Err()
		}
		commit := kgo.TryCommit
		if procErr != nil {
			commit = kgo.TryAbort
		}
		committed, endErr := in.sess.End(ctx, commit)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case procErr != nil:
			in.log.WarnContext(ctx, "batch aborted; retrying", "err", procErr, "backoff", backoff)
		case endErr != nil:
			in.log.WarnContext(ctx, "end transaction", "err", endErr, "backoff", backoff)
		case !committed:
			in.log.InfoContext(ctx, "transaction not committed (rebalance); records will be reprocessed")
		}
		if procErr == nil && endErr == nil {
			if committed {
				now, attrs := in.now(), metric.WithAttributes(attribute.String("stage", Stage))
				fetches.EachRecord(func(r *kgo.Record) { in.latency.Record(ctx, now.Sub(r.Timestamp).Seconds(), attrs) })
			}
			backoff = 50 * time.Millisecond
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// process handles each partition's records in order, partitions in parallel.
func (in *Ingest) process(ctx context.Context, fetches kgo.Fetches, produced *kgo.FirstErrPromise) error {
	g, gctx := errgroup.WithContext(ctx)
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		g.Go(func() error {
			for _, r := range p.Records {
				if err := in.one(gctx, r, produced); err != nil {
					return err
				}
			}
			return nil
		})
	})
	return g.Wait()
}

func (in *Ingest) one(ctx context.Context, r *kgo.Record, produced *kgo.FirstErrPromise) error {
	ctx, span := kafka.ProcessSpan(ctx, in.tracer, r)
	defer span.End()
	out, err := in.convert(ctx, r)
	if err != nil && !dlq.Rejected(err) {
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	outcome := "ok"
	if err != nil {
		outcome = "dlq"
		span.SetStatus(codes.Error, err.Error())
		in.log.WarnContext(ctx, "dead-lettering event", "partition", r.Partition, "offset", r.Offset, "reason", err)
		out = dlq.Record(in.topics.DLQ, Stage, r, err, in.now())
	}
	// The record outlives this goroutine's context (the errgroup's, cancelled
	// when the batch is processed) until the transaction is flushed; it keeps
	// the trace but not the cancellation.
	pctx := context.WithoutCancel(ctx)
	out.Context = pctx
	in.sess.Produce(pctx, out, produced.Promise())
	in.records.Add(ctx, 1, metric.WithAttributes(attribute.String("stage", Stage), attribute.String("outcome", outcome)))
	return nil
}

// ErrDecode is the reason given for a record that is not a ChannelEvent.
var ErrDecode = errors.New("record value is not a ChannelEvent")

// convert turns a channel event record into its member event record.
func (in *Ingest) convert(ctx context.Context, r *kgo.Record) (*kgo.Record, error) {
	ev := &mcv1.ChannelEvent{}
	var err error
	if kafka.IsJSON(r) {
		err = protojson.Unmarshal(r.Value, ev)
	} else {
		err = proto.Unmarshal(r.Value, ev)
	}
	if err != nil {
		return nil, dlq.Reject(fmt.Errorf("%w: %v", ErrDecode, err))
	}
	if err := in.validator.Validate(ev); err != nil {
		return nil, dlq.Reject(fmt.Errorf("invalid ChannelEvent: %w", err))
	}
	res, err := in.resolver.ResolveEvent(ctx, ev)
	if err != nil {
		return nil, fmt.Errorf("resolve event %s: %w", ev.GetEventId(), err)
	}
	me := MemberEvent(ev, res, in.now())
	value, err := proto.Marshal(me)
	if err != nil {
		return nil, fmt.Errorf("marshal member event: %w", err)
	}
	return &kgo.Record{
		Topic: in.topics.MemberEvents,
		Key:   []byte(res.MemberID),
		Value: value,
		Headers: []kgo.RecordHeader{
			{Key: "content-type", Value: []byte("application/x-protobuf")},
			{Key: "mc-event-id", Value: []byte(ev.GetEventId())},
		},
	}, nil
}

// MemberEvent builds the member event of a resolved channel event. The raw
// identifiers stay behind: only their references travel on.
func MemberEvent(ev *mcv1.ChannelEvent, res Resolution, now time.Time) *mcv1.MemberEvent {
	me := &mcv1.MemberEvent{
		EventId:     ev.GetEventId(),
		MemberId:    res.MemberID,
		Channel:     ev.GetChannel(),
		StoreId:     ev.GetStoreId(),
		OccurredAt:  ev.GetOccurredAt(),
		IngestedAt:  timestamppb.New(now),
		Identifiers: res.Identifiers,
		Resolution:  res.Detail,
	}
	switch p := ev.GetPayload().(type) {
	case *mcv1.ChannelEvent_Transaction:
		me.Payload = &mcv1.MemberEvent_Transaction{Transaction: p.Transaction}
	case *mcv1.ChannelEvent_Refund:
		me.Payload = &mcv1.MemberEvent_Refund{Refund: p.Refund}
	case *mcv1.ChannelEvent_Visit:
		me.Payload = &mcv1.MemberEvent_Visit{Visit: p.Visit}
	case *mcv1.ChannelEvent_Browse:
		me.Payload = &mcv1.MemberEvent_Browse{Browse: p.Browse}
	case *mcv1.ChannelEvent_SignUp:
		me.Payload = &mcv1.MemberEvent_SignUp{SignUp: p.SignUp}
	case *mcv1.ChannelEvent_CheckIn:
		me.Payload = &mcv1.MemberEvent_CheckIn{CheckIn: p.CheckIn}
	case *mcv1.ChannelEvent_Share:
		me.Payload = &mcv1.MemberEvent_Share{Share: p.Share}
	case *mcv1.ChannelEvent_Referral:
		// The referee's raw identifier is PII; it is resolved by the
		// referral flow, not carried on.
		me.Payload = &mcv1.MemberEvent_Referral{Referral: &mcv1.Referral{ReferralCode: p.Referral.GetReferralCode()}}
	case *mcv1.ChannelEvent_Review:
		me.Payload = &mcv1.MemberEvent_Review{Review: p.Review}
	}
	return me
}
