// Package ingest is the first stage: it reads channel.events.v1, validates and
// deduplicates each event, resolves its identifiers to one member and
// publishes the event to member.events.v1 keyed by member id, raw PII
// removed. Output records and consumed offsets commit in one Kafka
// transaction; a malformed or unroutable record goes to dlq.v1 in the same
// transaction, so it never blocks its partition.
package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"buf.build/go/protovalidate"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/plausible"
)

// Stage is the stage's name in groups, logs and dead letters.
const Stage = "ingest"

// The stage's contract with identity resolution (package contract).
type (
	Resolution = contract.Resolution
	Resolver   = contract.Resolver
)

// Check refuses a validated event that a stage downstream would refuse (the
// benefit stage's programme currency and amount bounds, say), so that an
// event reaches every stage or none. Its error is the reason given in the
// dead letter.
type Check func(ev *mcv1.ChannelEvent) error

// Config is the stage's part of the environment.
type Config struct {
	// MaxEventBytes bounds a channel event record (0: 256 KiB).
	MaxEventBytes int `env:"MC_MAX_EVENT_BYTES, default=262144"`
	// EventMaxAge and EventMaxAhead bound occurred_at around now.
	EventMaxAge   time.Duration `env:"MC_EVENT_MAX_AGE, default=9600h"`
	EventMaxAhead time.Duration `env:"MC_EVENT_MAX_AHEAD, default=10m"`
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.MaxEventBytes < 0 || c.MaxEventBytes > 4<<20 {
		errs = append(errs, fmt.Errorf("MC_MAX_EVENT_BYTES %d: want 1 to %d", c.MaxEventBytes, 4<<20))
	}
	if c.EventMaxAge < 0 || c.EventMaxAhead < 0 {
		errs = append(errs, errors.New("MC_EVENT_MAX_AGE and MC_EVENT_MAX_AHEAD must not be negative"))
	}
	return errors.Join(errs...)
}

// Options returns the options of the config (zero values: the defaults).
func (c Config) Options() Options {
	o := Options{MaxEventBytes: c.MaxEventBytes}
	if c.EventMaxAge > 0 || c.EventMaxAhead > 0 {
		o.Window = plausible.DefaultWindow
		if c.EventMaxAge > 0 {
			o.Window.Past = c.EventMaxAge
		}
		if c.EventMaxAhead > 0 {
			o.Window.Future = c.EventMaxAhead
		}
	}
	return o
}

// Options tune the stage; the zero value is the default.
type Options struct {
	// Checks run after validation, in order.
	Checks []Check
	// Window is how far from now an event's occurred_at may be
	// (plausible.DefaultWindow when zero).
	Window plausible.Window
	// MaxEventBytes bounds a record's value (DefaultMaxEventBytes when
	// zero): a larger record is dead-lettered without being decoded.
	MaxEventBytes int
	// Now is the business clock the window is measured from (time.Now
	// when nil).
	Now func() time.Time
}

// DefaultMaxEventBytes is the largest channel event accepted: 500 basket
// lines take ~50 KB.
const DefaultMaxEventBytes = 256 << 10

// Ingest runs the stage.
type Ingest struct {
	topics     kafka.Topics
	seal       dlq.Sealer // dead letters' keys and values (kafka.Config.DLQSealer)
	kopts      []kgo.Opt  // the session's, to build it anew (renew)
	mu         sync.Mutex
	sess       *kgo.GroupTransactSession // under mu: replaced by renew
	closed     bool                      // under mu
	tracer     *kafka.Tracer
	resolver   Resolver
	validator  protovalidate.Validator
	opts       Options
	retryLimit time.Duration
	log        *slog.Logger
	records    metric.Int64Counter
	latency    metric.Float64Histogram
	now        func() time.Time // real time, for latencies and letters

	// stuck holds, per partition, the record that failed the last
	// attempts; only the poll loop touches it.
	stuck map[partition]*stuckRecord
}

type partition struct {
	topic string
	id    int32
}

// FetchPartitionBytes bounds what one fetch takes of a partition (a
// record larger than that still comes whole). A poll is one transaction,
// whose output the read-committed stages downstream see only at its
// commit: a backlog is taken in transactions of about this much of every
// partition (partitions converted in parallel), so the stages after ingest
// start on the first while it converts the next.
//
// Measured and left so: the broker returns a record batch larger than this
// only for the first partition of a response, so a producer's burst in
// large batches (up to 1 MiB) reaches ingest one partition a poll. Fetching
// 1 MiB a partition brings every partition each poll, but a poll then holds
// the whole backlog in one transaction that the workers wait for: 1 MiB a
// partition with 8 MiB a poll drained 1,966 and 898 events/s in two runs
// at 100k members, 2 MiB a poll 1,405, against 1,627-1,643 at 64 KiB.
// Bounding a transaction apart from the fetch is the way to both.
const FetchPartitionBytes = 64 << 10

// stuckRecord is a record whose failure was neither data nor success.
type stuckRecord struct {
	offset  int64
	since   time.Time
	backoff fault.Backoff
	wait    time.Duration
	err     error
}

// New joins the ingest consumer group with a transactional producer.
func New(kcfg kafka.Config, tel kafka.Telemetry, resolver Resolver, o Options) (*Ingest, error) {
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("validator: %w", err)
	}
	if o.Window == (plausible.Window{}) {
		o.Window = plausible.DefaultWindow
	}
	if err := o.Window.Validate(); err != nil {
		return nil, fmt.Errorf("event time window: %w", err)
	}
	if o.MaxEventBytes <= 0 {
		o.MaxEventBytes = DefaultMaxEventBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	group := kcfg.Group(Stage)
	opts, tracer, err := kafka.Options(kcfg, tel, group)
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(kcfg.Topics.ChannelEvents),
		// With a stable instance id (MC_INSTANCE_ID) a restarted process
		// fences its predecessor's open transaction at once; without
		// one, the transaction timeout bounds how long an open
		// transaction of a crashed process holds back read-committed
		// consumers.
		kgo.TransactionalID(group+"-"+kcfg.Instance()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.TransactionTimeout(10*time.Second),
		// A partition held back and resumed is fetched again when the
		// fetch in flight for the others returns: keep that wait short.
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.FetchMaxPartitionBytes(FetchPartitionBytes),
		// Records up to the largest event accepted, and a bit, are
		// produced whole.
		kgo.ProducerBatchMaxBytes(int32(max(1<<20, 2*o.MaxEventBytes))),
	)
	opts = append(opts, kcfg.GroupOptions()...)
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return nil, fmt.Errorf("ingest session: %w", err)
	}
	sm, err := kafka.NewStageMetrics(tel.Meters)
	if err != nil {
		return nil, err
	}
	records, latency := sm.Records, sm.Latency
	return &Ingest{
		topics: kcfg.Topics, seal: kcfg.DLQSealer, kopts: opts, sess: sess, tracer: tracer, resolver: resolver, validator: validator, opts: o,
		retryLimit: kcfg.RetryLimit(), log: tel.Logger.With("stage", Stage), records: records, latency: latency,
		now: time.Now, stuck: map[partition]*stuckRecord{},
	}, nil
}

// Close leaves the group.
func (in *Ingest) Close() {
	in.mu.Lock()
	in.closed = true
	sess := in.sess
	in.mu.Unlock()
	sess.CloseAllowingRebalance()
}

// session is the current transactional session.
func (in *Ingest) session() *kgo.GroupTransactSession {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.sess
}

// renew replaces the session with a new one, as franz-go requires after
// any error from End (the transaction's state is unknown: the client
// cannot begin another), and fences the old one's producer. The new
// session rejoins the group (with MC_INSTANCE_ID as the same static
// member); the records of the unfinished transaction are consumed again.
func (in *Ingest) renew(ctx context.Context) {
	in.mu.Lock()
	old, closed := in.sess, in.closed
	in.mu.Unlock()
	if closed {
		return
	}
	old.Close()
	var backoff fault.Backoff
	for {
		sess, err := kgo.NewGroupTransactSession(in.kopts...)
		if err == nil {
			in.mu.Lock()
			if in.closed {
				in.mu.Unlock()
				sess.Close()
				return
			}
			in.sess = sess
			in.mu.Unlock()
			break
		}
		in.log.WarnContext(ctx, "renew the ingest session", "err", err)
		if !fault.Sleep(ctx, backoff.Next()) {
			return
		}
	}
	// Partitions held back were paused on the old client.
	in.stuck = map[partition]*stuckRecord{}
	in.initProducer(ctx)
}

// initProducer fences the transaction a previous incarnation (same
// instance id, so the same transactional id) left open when it died: until
// it is aborted it holds back this group's offsets
// (UNSTABLE_OFFSET_COMMIT) and every read-committed consumer of
// member.events.v1, for the transaction timeout and the broker's clean-up
// interval (~20 s). It retries until it succeeds or ctx ends.
func (in *Ingest) initProducer(ctx context.Context) {
	var backoff fault.Backoff
	for {
		_, _, err := in.session().Client().ProducerID(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		in.log.WarnContext(ctx, "initialise the transactional producer", "err", err)
		if !fault.Sleep(ctx, backoff.Next()) {
			return
		}
	}
}

// Run processes events until ctx ends. Each poll is one transaction: either
// every output record and the consumed offsets commit, or none do and the
// records are processed again. A partition whose record fails (an outage,
// or a failure nothing recognises) is left out of the next transactions for
// a backoff while the other partitions go on; a record that keeps failing
// for longer than the retry limit without an outage is dead-lettered.
func (in *Ingest) Run(ctx context.Context) error {
	in.log.InfoContext(ctx, "stage started", "topic", in.topics.ChannelEvents)
	in.initProducer(ctx)
	if ctx.Err() != nil {
		return nil
	}
	var backoff fault.Backoff
	for {
		sess := in.session()
		fetches := sess.PollFetches(ctx)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			in.log.WarnContext(ctx, "fetch error", "topic", topic, "partition", p, "err", err)
		})
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := sess.Begin(); err != nil {
			// Not expected (End's errors renew the session); renewing is
			// what recovers from it.
			in.log.ErrorContext(ctx, "begin transaction; renewing the session", "err", err)
			in.renew(ctx)
			continue
		}
		// A produce that fails must abort the transaction: End alone would
		// commit the offsets without the lost record.
		produced := kgo.AbortingFirstErrPromise(sess.Client())
		failed, procErr := in.process(ctx, fetches, produced)
		if procErr == nil {
			procErr = produced.Err()
		}
		commit := kgo.TryCommit
		if procErr != nil || len(failed) > 0 {
			commit = kgo.TryAbort
		}
		committed, endErr := sess.End(ctx, commit)
		if ctx.Err() != nil {
			return nil
		}
		if endErr != nil {
			// Whether the transaction committed is unknown, and franz-go's
			// client cannot go on after an error from End: a new session
			// consumes from the last committed offsets (resolution is
			// idempotent, and an unfinished transaction is fenced).
			wait := backoff.Next()
			in.log.WarnContext(ctx, "end transaction; renewing the session", "err", endErr, "backoff", wait)
			if !fault.Sleep(ctx, wait) {
				return nil
			}
			in.renew(ctx)
			continue
		}
		if len(failed) > 0 && procErr == nil {
			// Only the failed partitions wait; the others are polled again
			// at once (their work is redone: resolution is idempotent).
			in.holdBack(ctx, failed)
			continue
		}
		wait := backoff.Next()
		switch {
		case procErr != nil:
			in.log.WarnContext(ctx, "batch aborted; retrying", "err", procErr, "backoff", wait)
		case !committed:
			in.log.InfoContext(ctx, "transaction not committed (rebalance); records will be reprocessed")
		}
		if procErr == nil {
			if committed {
				now, attrs := in.now(), metric.WithAttributes(attribute.String("stage", Stage))
				fetches.EachRecord(func(r *kgo.Record) { in.latency.Record(ctx, now.Sub(r.Timestamp).Seconds(), attrs) })
				fetches.EachPartition(func(p kgo.FetchTopicPartition) {
					if n := len(p.Records); n > 0 {
						if s, ok := in.stuck[partition{p.Topic, p.Partition}]; ok && p.Records[n-1].Offset >= s.offset {
							delete(in.stuck, partition{p.Topic, p.Partition})
						}
					}
				})
			}
			backoff.Reset()
			continue
		}
		if !fault.Sleep(ctx, wait) {
			return nil
		}
	}
}

// failure is the record a partition stopped at in one attempt.
type failure struct {
	offset int64
	err    error
}

// holdBack pauses each failed partition for its backoff; the records are
// fetched again from the last commit when it resumes.
func (in *Ingest) holdBack(ctx context.Context, failed map[partition]failure) {
	now := in.now()
	for p, f := range failed {
		s, ok := in.stuck[p]
		if !ok || s.offset != f.offset {
			s = &stuckRecord{offset: f.offset, since: now}
			in.stuck[p] = s
		}
		s.err, s.wait = f.err, s.backoff.Next()
		in.log.WarnContext(ctx, "partition held back; retrying its record", "partition", p.id, "offset", f.offset,
			"class", fault.Classify(f.err).String(), "err", f.err, "failing_for", now.Sub(s.since).Round(time.Millisecond), "backoff", s.wait)
		cl := in.session().Client()
		parts := map[string][]int32{p.topic: {p.id}}
		cl.PauseFetchPartitions(parts)
		time.AfterFunc(s.wait, func() { cl.ResumeFetchPartitions(parts) })
	}
}

// process handles each partition's records in order, partitions in
// parallel. A partition stops at a record that fails without being a data
// error; it is returned in failed. The error is for failures of the
// transaction itself.
func (in *Ingest) process(ctx context.Context, fetches kgo.Fetches, produced *kgo.FirstErrPromise) (map[partition]failure, error) {
	var mu sync.Mutex
	failed := map[partition]failure{}
	var wg sync.WaitGroup
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		p := partition{fp.Topic, fp.Partition}
		stuck := in.stuck[p]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f := in.partition(ctx, fp.Records, produced, stuck); f != nil {
				mu.Lock()
				failed[p] = *f
				mu.Unlock()
			}
		}()
	})
	wg.Wait()
	return failed, ctx.Err()
}

// partition converts a partition's records in order: resolved together
// when the resolver can (contract.BatchResolver), a record whose
// resolution failed without a data error tried again alone. It returns the
// record the partition stopped at, if any.
func (in *Ingest) partition(ctx context.Context, rs []*kgo.Record, produced *kgo.FirstErrPromise, stuck *stuckRecord) *failure {
	held := func(r *kgo.Record) *stuckRecord {
		if stuck != nil && stuck.offset == r.Offset {
			return stuck
		}
		return nil
	}
	br, ok := in.resolver.(contract.BatchResolver)
	if !ok || len(rs) <= 1 { // (a fetch may hold a partition without records)
		for _, r := range rs {
			if err := in.one(ctx, r, produced, held(r)); err != nil {
				return &failure{offset: r.Offset, err: err}
			}
		}
		return nil
	}
	evs := make([]*mcv1.ChannelEvent, 0, len(rs))
	at := make([]int, 0, len(rs))
	evOf := make([]*mcv1.ChannelEvent, len(rs))
	decodeErr := make([]error, len(rs))
	// Each record's process span starts before its resolution, so what
	// resolving it writes (a new member's change) continues its trace.
	rctxs := make([]context.Context, len(rs))
	spans := make([]trace.Span, len(rs))
	for i, r := range rs {
		rctxs[i], spans[i] = kafka.ProcessSpan(ctx, in.tracer, r)
	}
	var evCtxs []context.Context
	for i, r := range rs {
		ev, err := in.decode(r)
		if err != nil {
			decodeErr[i], evOf[i] = err, ev
			continue
		}
		evs, at, evOf[i] = append(evs, ev), append(at, i), ev
		evCtxs = append(evCtxs, rctxs[i])
	}
	// What the batch does in common (its statements) is traced in a span
	// linked to the records' spans.
	bctx, bspan := in.tracer.BatchSpan(ctx, rs[0].Topic, rctxs)
	defer bspan.End()
	res, errs := br.ResolveEvents(contract.WithRecordContexts(bctx, evCtxs), evs)
	resolved := make([]*Resolution, len(rs))
	resolveErr := make([]error, len(rs))
	for k, i := range at {
		if errs[k] != nil {
			resolveErr[i] = errs[k]
		} else {
			resolved[i] = &res[k]
		}
	}
	for i, r := range rs {
		rctx, span := rctxs[i], spans[i]
		var out *kgo.Record
		err := decodeErr[i]
		switch {
		case err != nil: // dead-lettered below
		case resolveErr[i] != nil && !fault.IsData(resolveErr[i]):
			// Tried again alone, with its own retries and limit.
			span.End()
			if err := in.one(ctx, r, produced, held(r)); err != nil {
				for _, later := range spans[i+1:] {
					later.End() // not converted in this attempt
				}
				return &failure{offset: r.Offset, err: err}
			}
			continue
		case resolveErr[i] != nil:
			err = fmt.Errorf("resolve event %s: %w", evOf[i].GetEventId(), resolveErr[i])
		default:
			out, err = in.memberRecord(evOf[i], *resolved[i])
		}
		in.emit(rctx, span, r, evOf[i], out, err, produced)
		span.End()
	}
	return nil
}

// one converts r and produces the result (or, for a data error, the dead
// letter) into the transaction. It returns the error of a record that must
// be tried again: an outage, or a failure nothing recognises that has not
// yet lasted the retry limit (held says how long it has).
func (in *Ingest) one(ctx context.Context, r *kgo.Record, produced *kgo.FirstErrPromise, held *stuckRecord) error {
	ctx, span := kafka.ProcessSpan(ctx, in.tracer, r)
	defer span.End()
	var out *kgo.Record
	var ev *mcv1.ChannelEvent
	var err error
	// A few quick tries in place first: most failures of one record (a
	// race on a new identifier, a serialization failure) pass at once.
	for attempt, wait := 1, 25*time.Millisecond; ; attempt, wait = attempt+1, wait*2 {
		ev, out, err = in.convert(ctx, r)
		if err == nil || fault.IsData(err) || attempt == 3 || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	if err != nil && !fault.IsData(err) {
		if held == nil || fault.IsTransient(err) || in.now().Sub(held.since) < in.retryLimit {
			span.SetStatus(codes.Error, err.Error())
			return err
		}
		err = fmt.Errorf("retried for %s without success: %w", in.now().Sub(held.since).Round(time.Millisecond), err)
	}
	in.emit(ctx, span, r, ev, out, err, produced)
	return nil
}

// emit produces out into the transaction, or the dead letter of r when err
// (a data error) is set: sealed under the data key of the member its
// event's identifiers name (ev, when it decoded), if one does, so that the
// letter is shredded with the member; under the platform key otherwise.
func (in *Ingest) emit(ctx context.Context, span trace.Span, r *kgo.Record, ev *mcv1.ChannelEvent, out *kgo.Record, err error, produced *kgo.FirstErrPromise) {
	outcome := emittedOK
	if err != nil {
		outcome = emittedDLQ
		why := dlq.LoggedReason(err, in.seal) // traces and logs: redacted when the letter is sealed
		span.SetStatus(codes.Error, why)
		in.log.WarnContext(ctx, "dead-lettering event", "partition", r.Partition, "offset", r.Offset, "reason", why)
		out = dlq.Record(in.topics.DLQ, Stage, r, err, in.now(), in.letterSealer(ctx, ev))
	}
	// The record outlives this goroutine's context until the transaction
	// is flushed; it keeps the trace but not the cancellation.
	pctx := context.WithoutCancel(ctx)
	out.Context = pctx
	in.session().Produce(pctx, out, produced.Promise())
	in.records.Add(ctx, 1, outcome)
}

// The record counter's attribute sets, made once.
var emittedOK, emittedDLQ = kafka.RecordOutcomes(Stage)

// ErrDecode is the reason given for a record that is not a ChannelEvent.
var ErrDecode = errors.New("record value is not a ChannelEvent")

// ErrTooLarge is the reason given for a record larger than the largest
// event accepted.
var ErrTooLarge = errors.New("record is larger than the largest event accepted")

// letterSealer seals the dead letter of a refused event: under its
// member's key when the event's identifiers name a known member.
func (in *Ingest) letterSealer(ctx context.Context, ev *mcv1.ChannelEvent) dlq.Sealer {
	ms, ok1 := in.seal.(contract.MemberSealer)
	finder, ok2 := in.resolver.(contract.MemberFinder)
	if ev == nil || !ok1 || !ok2 {
		return in.seal
	}
	if member, ok := finder.KnownMember(ctx, ev); ok {
		if s := ms.ForRecordKey(ctx, []byte(member)); s != nil {
			return s
		}
	}
	return in.seal
}

// convert turns a channel event record into its member event record; ev
// is the event when it decoded.
func (in *Ingest) convert(ctx context.Context, r *kgo.Record) (ev *mcv1.ChannelEvent, out *kgo.Record, err error) {
	ev, err = in.decode(r)
	if err != nil {
		return ev, nil, err
	}
	res, err := in.resolver.ResolveEvent(ctx, ev)
	if err != nil {
		return ev, nil, fmt.Errorf("resolve event %s: %w", ev.GetEventId(), err)
	}
	out, err = in.memberRecord(ev, res)
	return ev, out, err
}

// decode reads and validates a channel event record; every error is a
// data error. An event that decodes but is refused is returned with its
// error.
func (in *Ingest) decode(r *kgo.Record) (*mcv1.ChannelEvent, error) {
	if len(r.Value) > in.opts.MaxEventBytes {
		return nil, dlq.Reject(fmt.Errorf("%w: %d bytes, the limit is %d (MC_MAX_EVENT_BYTES)", ErrTooLarge, len(r.Value), in.opts.MaxEventBytes))
	}
	ev := &mcv1.ChannelEvent{}
	var err error
	if kafka.IsJSON(r) {
		err = protojson.Unmarshal(r.Value, ev)
	} else {
		err = proto.Unmarshal(r.Value, ev)
	}
	if err != nil {
		hint := ""
		if !kafka.IsJSON(r) && json.Valid(r.Value) {
			hint = " (the value is JSON: send it with the header content-type: application/json)"
		}
		return nil, dlq.Reject(fmt.Errorf("%w: %v%s", ErrDecode, err, hint))
	}
	if err := in.Validate(ev); err != nil {
		return ev, dlq.Reject(err) // refused, but its identifiers may name a member (emit)
	}
	return ev, nil
}

// memberRecord is the member event record of a resolved channel event.
func (in *Ingest) memberRecord(ev *mcv1.ChannelEvent, res Resolution) (*kgo.Record, error) {
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

// earliestBirth bounds sign_up.birth_date from below.
var earliestBirth = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)

// Validate applies every rule an event must pass before it is resolved:
// the protovalidate annotations, text every stage can store, an occurred_at
// within the window around now, a birth date in the past, and the checks
// of the stages downstream. The error names the field and the rule.
func (in *Ingest) Validate(ev *mcv1.ChannelEvent) error {
	if err := in.validator.Validate(ev); err != nil {
		return fmt.Errorf("invalid ChannelEvent: %w", err)
	}
	if err := plausible.Text(ev); err != nil {
		return fmt.Errorf("invalid ChannelEvent: %w", err)
	}
	now := in.opts.Now()
	if err := in.opts.Window.Time("occurred_at", ev.GetOccurredAt(), now, true); err != nil {
		return fmt.Errorf("implausible ChannelEvent: %w", err)
	}
	if b := ev.GetSignUp().GetBirthDate(); b != nil {
		if err := b.CheckValid(); err != nil || b.AsTime().Before(earliestBirth) || b.AsTime().After(now) {
			return fmt.Errorf("implausible ChannelEvent: sign_up.birth_date %s: want a date between %s and now",
				b.AsTime().UTC().Format(time.DateOnly), earliestBirth.Format(time.DateOnly))
		}
	}
	for _, check := range in.opts.Checks {
		if err := check(ev); err != nil {
			return fmt.Errorf("refused ChannelEvent: %w", err)
		}
	}
	return nil
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
