// Package changefeed pushes every change of a member's state to subscribed
// channels: a hub follows member.changes.v1 and fans each change out to the
// gRPC streams whose filter it matches, in per-member order.
package changefeed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Filter selects changes. Empty fields match everything.
type Filter struct {
	MemberIDs map[string]bool
	StoreID   string
	Channel   mcv1.Channel
	// LabelID selects label changes that move this label (members entering
	// or leaving it), carrying only that label.
	LabelID string
}

func (f Filter) match(c *mcv1.MemberChange) bool {
	if len(f.MemberIDs) > 0 && !f.MemberIDs[c.GetMemberId()] {
		return false
	}
	if f.StoreID != "" && c.GetStoreId() != f.StoreID {
		return false
	}
	if f.Channel != mcv1.Channel_CHANNEL_UNSPECIFIED && c.GetChannel() != f.Channel {
		return false
	}
	if f.LabelID != "" {
		found := false
		for _, l := range c.GetLabelsChanged().GetLabels() {
			found = found || l.GetLabelId() == f.LabelID
		}
		return found
	}
	return true
}

// shape trims a matching change to what the filter asked for: a label
// filter's subscriber gets that label only.
func (f Filter) shape(c *mcv1.MemberChange) *mcv1.MemberChange {
	if f.LabelID == "" {
		return c
	}
	out := proto.Clone(c).(*mcv1.MemberChange)
	lc := out.GetLabelsChanged()
	var keep []*mcv1.LabelValue
	for _, l := range lc.GetLabels() {
		if l.GetLabelId() == f.LabelID {
			keep = append(keep, l)
		}
	}
	lc.Labels = keep
	return out
}

// Delivery is a change with the context (trace) it arrived in and where it
// was in member.changes.v1.
type Delivery struct {
	Ctx    context.Context
	Change *mcv1.MemberChange
	// After is the position just after this change, for the resume token.
	After Position
}

// ErrTooSlow ends a subscription whose queue overflowed.
var ErrTooSlow = errors.New("subscriber fell too far behind")

// DefaultQueue is how many undelivered changes a subscription may hold
// before the hub ends it with ErrTooSlow. A subscriber that keeps up on
// average still falls behind in a burst: one poll of the change log after a
// few of the relay's batches (500 changes each) holds thousands of changes,
// handed over in microseconds, while each costs the subscriber a stream
// send. A full queue is about half a MiB (the changes themselves are shared
// by the subscriptions).
const DefaultQueue = 16384

// keptQueue is the largest queue array a subscription keeps once it is
// emptied; a larger one, left by a burst, is let go.
const keptQueue = 1024

// Subscription is one subscriber's view of the hub: the hub queues each
// matching change without ever waiting for the subscriber, and the
// subscriber takes them in order when Ready signals.
type Subscription struct {
	filter Filter
	hub    *Hub
	max    int

	mu    sync.Mutex
	queue []Delivery
	ready chan struct{} // holds a token while the queue is not empty
	done  chan struct{}
	once  sync.Once
	err   error
	// last sequence queued per member; a republished change is dropped.
	last map[string]uint64
}

// Ready receives when changes are queued for Take.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Take appends the queued changes to buf, in the order the hub matched
// them, and empties the queue.
func (s *Subscription) Take(buf []Delivery) []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	buf = append(buf, s.queue...)
	s.queue = emptied(s.queue)
	return buf
}

// emptied is buf emptied for reuse: its changes let go once delivered, and
// its array too when a burst made it larger than keptQueue.
func emptied(buf []Delivery) []Delivery {
	if cap(buf) > keptQueue {
		return nil
	}
	clear(buf)
	return buf[:0]
}

// Done is closed when the hub ends the subscription (see Err). What was
// queued before can still be taken.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err is why the hub ended the subscription.
func (s *Subscription) Err() error { return s.err }

// Close unregisters the subscription.
func (s *Subscription) Close() { s.hub.remove(s) }

func (s *Subscription) end(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.done)
	})
}

// offer queues d unless the queue is full; it never waits.
func (s *Subscription) offer(d Delivery) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) >= s.max {
		return false
	}
	s.queue = append(s.queue, d)
	select {
	case s.ready <- struct{}{}:
	default: // already signalled
	}
	return true
}

// Hub follows member.changes.v1 from the moment it starts.
type Hub struct {
	kcfg  kafka.Config
	tel   kafka.Telemetry
	log   *slog.Logger
	queue int // DefaultQueue unless a test sets it

	mu    sync.Mutex
	subs  map[*Subscription]struct{}
	ready chan struct{}
	pos   Position // next offset per partition the hub will read
}

// NewHub returns a hub; Run starts it.
func NewHub(kcfg kafka.Config, tel kafka.Telemetry) *Hub {
	return &Hub{
		kcfg: kcfg, tel: tel, log: tel.Logger.With("component", "sync-hub"), queue: DefaultQueue,
		subs: map[*Subscription]struct{}{}, ready: make(chan struct{}),
	}
}

// Run follows the topic until ctx ends. It starts at the end of what is
// committed and reads committed records only: the relay publishes in Kafka
// transactions, so a change is delivered once its transaction commits and
// never when it aborts. A topic whose metadata is still propagating (just
// created) or a broker that is away delays the start instead of failing it;
// Ready closes once the hub follows the topic. Changes committed after that
// are delivered to every matching subscriber.
func (h *Hub) Run(ctx context.Context) error {
	topic := h.kcfg.Topics.MemberChanges
	pos, err := h.committedEnd(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	start := map[string]map[int32]kgo.Offset{topic: {}}
	for p, o := range pos {
		start[topic][p] = kgo.NewOffset().At(o)
	}
	h.mu.Lock()
	h.pos = pos
	h.mu.Unlock()
	// Transaction markers are kept so that positions (resume tokens) move
	// past them, as Replay does.
	cl, err := kafka.NewClient(h.kcfg, h.tel, "", kgo.ConsumePartitions(start),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		return err
	}
	defer cl.Close()
	close(h.ready)
	h.log.InfoContext(ctx, "sync hub following", "topic", topic, "partitions", len(start[topic]))
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			h.log.WarnContext(ctx, "fetch error", "topic", t, "partition", p, "err", err)
		})
		fetches.EachRecord(func(r *kgo.Record) {
			if r.Attrs.IsControl() {
				h.skip(r.Partition, r.Offset)
				return
			}
			if h.passIfIdle(r.Partition, r.Offset) {
				return
			}
			rctx, span := kafka.ProcessSpan(ctx, cl.Tracer, r)
			defer span.End()
			ch := &mcv1.MemberChange{}
			err := proto.Unmarshal(r.Value, ch)
			if err == nil {
				err = contract.CheckMemberChange(ch)
			}
			if err != nil { // dead-lettered by the ClickHouse sink
				h.log.ErrorContext(rctx, "not a change the relay publishes; passed over", "partition", r.Partition, "offset", r.Offset, "err", err)
				h.skip(r.Partition, r.Offset)
				return
			}
			h.fanOut(Delivery{Ctx: rctx, Change: ch}, r.Partition, r.Offset)
		})
	}
}

// committedEnd returns where the committed part of the change log ends,
// waiting (with backoff, logged) while the topic or its brokers are not
// there yet; an error that waiting cannot cure ends it.
func (h *Hub) committedEnd(ctx context.Context) (Position, error) {
	admin, err := kafka.NewClient(h.kcfg, h.tel, "")
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	adm := kadm.NewClient(admin.Client)
	var b fault.Backoff
	for {
		pos, err := h.logEnd(ctx, adm)
		if err == nil && len(pos) == 0 {
			err = fault.Temporary(errors.New("no partitions yet"))
		}
		if err == nil {
			return pos, nil
		}
		if ctx.Err() != nil || fault.Classify(err) != fault.Transient {
			return nil, err
		}
		wait := b.Next()
		h.log.WarnContext(ctx, "sync hub waiting for the change log", "err", err, "retry_in", wait)
		if !fault.Sleep(ctx, wait) {
			return nil, ctx.Err()
		}
	}
}

// logEnd reads once where the committed part of the change log ends, per
// partition.
func (h *Hub) logEnd(ctx context.Context, adm *kadm.Client) (Position, error) {
	topic := h.kcfg.Topics.MemberChanges
	ends, err := adm.ListCommittedOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list committed end offsets of %s: %w", topic, err)
	}
	pos := Position{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Topic == topic && o.Err == nil {
			pos[o.Partition] = o.Offset
		}
	})
	return pos, nil
}

// passIfIdle moves the position past a change when no one is subscribed,
// and says whether it did: the change need not be decoded. Both under one
// lock, so a subscription starts either before the change (and receives
// it) or after it. A drain of the whole pipeline with no subscriber spent
// 6% of membercenter's CPU decoding changes for no one.
func (h *Hub) passIfIdle(partition int32, offset int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) > 0 {
		return false
	}
	h.pos[partition] = offset + 1
	return true
}

// skip moves the position past a record no subscriber receives (a
// transaction marker, or a record that is no change the relay publishes).
func (h *Hub) skip(partition int32, offset int64) {
	h.mu.Lock()
	h.pos[partition] = offset + 1
	h.mu.Unlock()
}

func (h *Hub) fanOut(d Delivery, partition int32, offset int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pos[partition] = offset + 1
	for s := range h.subs {
		if !s.filter.match(d.Change) {
			continue
		}
		member := d.Change.GetMemberId()
		if d.Change.GetSequence() <= s.last[member] {
			continue // republished by the relay after a restart
		}
		if d.After == nil {
			d.After = h.pos.clone()
		}
		sd := d
		sd.Change = s.filter.shape(d.Change)
		if !s.offer(sd) {
			// Never block the hub on one slow subscriber.
			delete(h.subs, s)
			s.end(fmt.Errorf("%w: %d changes waiting to be sent", ErrTooSlow, s.max))
			continue
		}
		s.last[member] = d.Change.GetSequence()
	}
}

// CatchUpWait bounds how long a subscription resuming from a token waits
// for this hub to read the change log as far as the token: a client that
// reconnects to another replica than the one it read from may hold a token
// a few milliseconds ahead of this replica's hub. Past it, a token within
// the change log is answered ErrFeedBehind (reconnect), and one beyond it
// refused.
const CatchUpWait = 3 * time.Second

// CatchUp waits, at most wait, until the hub has read the change log up to
// p (every partition it follows; one it does not is left to Replay to
// refuse), and reports whether it has.
func (h *Hub) CatchUp(ctx context.Context, p Position, wait time.Duration) bool {
	if h.reached(p) {
		return true
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return h.reached(p)
		case <-tick.C:
			if h.reached(p) {
				return true
			}
		}
	}
}

// ErrFeedBehind is a token within the change log that this replica's hub
// has not read yet, after CatchUpWait (Unavailable: reconnect and resume
// with it, here or at another replica).
var ErrFeedBehind = errors.New("this replica's change feed has not reached the resume token yet; reconnect with it")

// withinLog says whether every partition of p is at or before the end of
// what is committed in the change log.
func (h *Hub) withinLog(ctx context.Context, p Position) (bool, error) {
	admin, err := kafka.NewClient(h.kcfg, h.tel, "")
	if err != nil {
		return false, err
	}
	defer admin.Close()
	end, err := h.logEnd(ctx, kadm.NewClient(admin.Client))
	if err != nil {
		return false, err
	}
	for part, at := range p {
		if e, ok := end[part]; !ok || at > e {
			return false, nil
		}
	}
	return true, nil
}

func (h *Hub) reached(p Position) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for part, at := range p {
		if cur, ok := h.pos[part]; ok && cur < at {
			return false
		}
	}
	return true
}

// Ready is closed once the hub follows the topic.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Subscribe registers a subscription once the hub follows the topic, and
// returns the position from which it receives every matching change.
func (h *Hub) Subscribe(ctx context.Context, f Filter) (*Subscription, Position, error) {
	select {
	case <-h.ready:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	s := &Subscription{filter: f, hub: h, max: h.queue, ready: make(chan struct{}, 1), done: make(chan struct{}), last: map[string]uint64{}}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	at := h.pos.clone()
	h.mu.Unlock()
	return s, at, nil
}

// Replay reads the changes between two positions of member.changes.v1 (from
// a resume token to where a live subscription started) and hands the ones
// the filter matches to fn, in log order per partition, each with the
// position after it. A position the log no longer reaches (retention), or
// one beyond the log, is ErrTokenExpired.
func (h *Hub) Replay(ctx context.Context, f Filter, from, to Position, fn func(Delivery) error) error {
	topic := h.kcfg.Topics.MemberChanges
	admin, err := kafka.NewClient(h.kcfg, h.tel, "")
	if err != nil {
		return err
	}
	defer admin.Close()
	starts, err := kadm.NewClient(admin.Client).ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("list start offsets of %s: %w", topic, err)
	}
	begin := map[string]map[int32]kgo.Offset{topic: {}}
	pos := from.clone()
	for part, end := range to {
		at, ok := from[part]
		if !ok {
			at = 0 // a partition added since the token: from its start
			pos[part] = 0
		}
		if s, ok := starts.Lookup(topic, part); ok && at < s.Offset {
			return fmt.Errorf("%w: partition %d of the change log now starts at %d, after the token's %d; %s",
				ErrTokenExpired, part, s.Offset, at, ResyncAdvice)
		}
		if at > end {
			return fmt.Errorf("%w: the token is ahead of the change log (partition %d at %d, log at %d); %s",
				ErrTokenExpired, part, at, end, ResyncAdvice)
		}
		if at < end {
			begin[topic][part] = kgo.NewOffset().At(at)
		}
	}
	for part := range from {
		if _, ok := to[part]; !ok {
			return fmt.Errorf("%w: partition %d is not in the change log; %s", ErrTokenExpired, part, ResyncAdvice)
		}
	}
	if len(begin[topic]) == 0 {
		return nil
	}
	// Transaction markers are kept: the last offset before a position can
	// be one, and reading it is how the replay knows it got there.
	cl, err := kafka.NewClient(h.kcfg, h.tel, "", kgo.ConsumePartitions(begin),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		return err
	}
	defer cl.Close()
	left := len(begin[topic])
	for left > 0 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		var ferr error
		fetches.EachError(func(_ string, p int32, err error) { ferr = fmt.Errorf("replay partition %d: %w", p, err) })
		if ferr != nil {
			return ferr
		}
		var stop error
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			for _, r := range fp.Records {
				if stop != nil || r.Offset >= to[r.Partition] || pos[r.Partition] >= to[r.Partition] {
					continue
				}
				pos[r.Partition] = r.Offset + 1
				if pos[r.Partition] >= to[r.Partition] {
					left--
				}
				if r.Attrs.IsControl() {
					continue
				}
				ch := &mcv1.MemberChange{}
				if err := proto.Unmarshal(r.Value, ch); err != nil || contract.CheckMemberChange(ch) != nil || !f.match(ch) {
					continue
				}
				stop = fn(Delivery{Ctx: ctx, Change: f.shape(ch), After: pos.clone()})
			}
		})
		if stop != nil {
			return stop
		}
	}
	return nil
}

func (h *Hub) remove(s *Subscription) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// Subscribers returns how many subscriptions are registered.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}
