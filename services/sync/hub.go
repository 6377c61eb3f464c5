// Package sync pushes every change of a member's state to subscribed
// channels: a hub follows member.changes.v1 and fans each change out to the
// gRPC streams whose filter it matches, in per-member order.
package sync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	stdsync "sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Filter selects changes. Empty fields match everything.
type Filter struct {
	MemberIDs map[string]bool
	StoreID   string
	Channel   mcv1.Channel
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
	return true
}

// Delivery is a change with the context (trace) it arrived in.
type Delivery struct {
	Ctx    context.Context
	Change *mcv1.MemberChange
}

// ErrTooSlow ends a subscription whose buffer overflowed.
var ErrTooSlow = errors.New("subscriber fell too far behind")

// Subscription is one subscriber's view of the hub.
type Subscription struct {
	filter Filter
	c      chan Delivery
	done   chan struct{}
	once   stdsync.Once
	err    error
	hub    *Hub
	// last sequence delivered per member; a republished change is dropped.
	last map[string]uint64
}

// C delivers matching changes until the subscription ends; then Err says why.
func (s *Subscription) C() <-chan Delivery { return s.c }

// Done is closed when the hub ends the subscription (see Err).
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

// Hub follows member.changes.v1 from the moment it starts.
type Hub struct {
	kcfg   kafka.Config
	tel    kafka.Telemetry
	log    *slog.Logger
	buffer int

	mu    stdsync.Mutex
	subs  map[*Subscription]struct{}
	ready chan struct{}
}

// NewHub returns a hub; Run starts it.
func NewHub(kcfg kafka.Config, tel kafka.Telemetry) *Hub {
	return &Hub{
		kcfg: kcfg, tel: tel, log: tel.Logger.With("component", "sync-hub"), buffer: 1024,
		subs: map[*Subscription]struct{}{}, ready: make(chan struct{}),
	}
}

// Run follows the topic until ctx ends. Changes published after Run has
// become ready are delivered to every matching subscriber.
func (h *Hub) Run(ctx context.Context) error {
	topic := h.kcfg.Topics.MemberChanges
	admin, err := kafka.NewClient(h.kcfg, h.tel, "")
	if err != nil {
		return err
	}
	ends, err := kadm.NewClient(admin.Client).ListEndOffsets(ctx, topic)
	admin.Close()
	if err != nil {
		return fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	if err := ends.Error(); err != nil {
		return fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	start := map[string]map[int32]kgo.Offset{topic: {}}
	ends.Each(func(o kadm.ListedOffset) { start[topic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	cl, err := kafka.NewClient(h.kcfg, h.tel, "", kgo.ConsumePartitions(start))
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
			rctx, span := kafka.ProcessSpan(ctx, cl.Tracer, r)
			defer span.End()
			ch := &mcv1.MemberChange{}
			if err := proto.Unmarshal(r.Value, ch); err != nil {
				h.log.ErrorContext(rctx, "undecodable change", "partition", r.Partition, "offset", r.Offset, "err", err)
				return
			}
			h.fanOut(Delivery{Ctx: rctx, Change: ch})
		})
	}
}

func (h *Hub) fanOut(d Delivery) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if !s.filter.match(d.Change) {
			continue
		}
		member := d.Change.GetMemberId()
		if d.Change.GetSequence() <= s.last[member] {
			continue // republished by the relay after a restart
		}
		select {
		case s.c <- d:
			s.last[member] = d.Change.GetSequence()
		default:
			// Never block the hub on one slow subscriber.
			delete(h.subs, s)
			s.end(ErrTooSlow)
		}
	}
}

// Ready is closed once the hub follows the topic.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Subscribe registers a subscription once the hub follows the topic.
func (h *Hub) Subscribe(ctx context.Context, f Filter) (*Subscription, error) {
	select {
	case <-h.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s := &Subscription{filter: f, c: make(chan Delivery, h.buffer), done: make(chan struct{}), hub: h, last: map[string]uint64{}}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s, nil
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
