package faultsuite_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

// shopper is a channel shopper: events are keyed by the phone.
type shopper struct {
	phone string
	card  string
}

func phoneOf(i int) string { return fmt.Sprintf("1370%07d", i) }

// published is a channel event the broker acknowledged.
type published struct {
	id       string
	kind     string // purchase, refund, check_in, visit
	phone    string
	orderID  string
	amount   int64
	produced time.Time
}

// producer publishes channel events and remembers every one the broker
// acknowledged; a publish that fails is retried with the same event id, as a
// channel back end with an outbox would.
type producer struct {
	cl    *kgo.Client
	topic string

	mu     sync.Mutex
	events []published
	byID   map[string]published
}

func newProducer(brokers []string, topic string) (*producer, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchMaxBytes(16<<20), kgo.ProducerBatchCompression(kgo.ZstdCompression()),
		kgo.RecordDeliveryTimeout(20*time.Second))
	if err != nil {
		return nil, err
	}
	return &producer{cl: cl, topic: topic, byID: map[string]published{}}, nil
}

func (p *producer) close() { p.cl.Close() }

// publish sends value under key until the broker acknowledges it or ctx ends.
func (p *producer) publish(ctx context.Context, key string, value []byte) error {
	return p.publishTo(ctx, p.topic, key, value)
}

// publishTo writes value under key to topic, retrying until it is
// acknowledged or ctx ends.
func (p *producer) publishTo(ctx context.Context, topic, key string, value []byte) error {
	for {
		err := p.cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: value}).FirstErr()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (p *producer) publishEvent(ctx context.Context, ev *mcv1.ChannelEvent, pub published) error {
	v, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	if err := p.publish(ctx, pub.phone, v); err != nil {
		return err
	}
	pub.produced = time.Now()
	p.mu.Lock()
	p.events = append(p.events, pub)
	p.byID[pub.id] = pub
	p.mu.Unlock()
	return nil
}

func (p *producer) acked() []published {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]published(nil), p.events...)
}

func purchase(id, phone, card string, at time.Time, amount int64) *mcv1.ChannelEvent {
	return &mcv1.ChannelEvent{
		EventId: id, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-001", OccurredAt: timestamppb.New(at),
		Identifiers: []*mcv1.Identifier{
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone},
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: card},
		},
		Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{
			OrderId: "O-" + id, Total: &mcv1.Money{Currency: "CNY", AmountMinor: amount},
			Items: []*mcv1.LineItem{
				{Sku: "LATTE", Category: "coffee", Brand: "house", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount / 2}},
				{Sku: "BAGEL", Category: "bakery", Brand: "house", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount - amount/2}},
			},
		}},
	}
}

// channelWorkload publishes a stream of purchases, refunds, check-ins and
// visits over the shoppers at rate per second until ctx ends.
func (p *producer) channelWorkload(ctx context.Context, shoppers []shopper, rate int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var orders []published
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s := shoppers[rng.IntN(len(shoppers))]
		id := fmt.Sprintf("ev-%06d", n)
		now := time.Now()
		var ev *mcv1.ChannelEvent
		pub := published{id: id, phone: s.phone}
		switch r := rng.IntN(100); {
		case r < 12 && len(orders) > 0:
			o := orders[rng.IntN(len(orders))]
			ev = purchase(id, o.phone, "", now, 0)
			ev.Identifiers = ev.Identifiers[:1]
			ev.Payload = &mcv1.ChannelEvent_Refund{Refund: &mcv1.Refund{OrderId: o.orderID,
				Amount: &mcv1.Money{Currency: "CNY", AmountMinor: max(1, o.amount/3)}}}
			pub.kind, pub.phone, pub.orderID = "refund", o.phone, o.orderID
		case r < 22:
			ev = purchase(id, s.phone, s.card, now, 0)
			ev.Channel = mcv1.Channel_CHANNEL_APP
			ev.Payload = &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
			pub.kind = "check_in"
		case r < 32:
			ev = purchase(id, s.phone, s.card, now, 0)
			ev.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(60 + rng.IntN(1800))}}
			pub.kind = "visit"
		default:
			amount := int64(1_000 + rng.IntN(80_000))
			ev = purchase(id, s.phone, s.card, now, amount)
			pub.kind, pub.orderID, pub.amount = "purchase", "O-"+id, amount
		}
		if err := p.publishEvent(ctx, ev, pub); err != nil {
			return
		}
		if pub.kind == "purchase" {
			orders = append(orders, pub)
		}
	}
}

// poison is a record of issue 12's list, published once, with the good
// purchase of the same shopper published right behind it; or a record
// published straight to an internal topic (topic set, no good purchase).
type poison struct {
	name   string
	topic  string // "": channel.events.v1
	key    string
	value  []byte
	reason string // what the dead letter's reason must mention
	goodID string
}

// internalPoisons are records no stage writes, published straight to the
// topics between the stages: the member stage and the ClickHouse sink
// must dead-letter them, and the sync hub pass them over.
func internalPoisons(t kafka.Topics) []poison {
	return []poison{
		{name: "member.events.v1: not a MemberEvent", topic: t.MemberEvents, key: "internal-poison-1", value: []byte{0xff, 0xff, 0xff}, reason: "not a MemberEvent"},
		{name: "member.events.v1: an empty value", topic: t.MemberEvents, key: "internal-poison-2", reason: "without event_id"},
		{name: "member.changes.v1: not a MemberChange", topic: t.MemberChanges, key: "internal-poison-3", value: []byte{0xff, 0xff, 0xff}, reason: "not a MemberChange"},
		{name: "member.changes.v1: an empty value", topic: t.MemberChanges, key: "internal-poison-4", reason: "member_id"},
	}
}

func poisonRecords(at time.Time) []poison {
	var out []poison
	add := func(i int, name, reason string, edit func(*mcv1.ChannelEvent)) {
		phone := fmt.Sprintf("1371%07d", i)
		ev := purchase(fmt.Sprintf("poison-%d", i), phone, "PC-"+phone, at, 5_000)
		edit(ev)
		v, _ := proto.Marshal(ev)
		out = append(out, poison{name: name, key: phone, value: v, reason: reason, goodID: fmt.Sprintf("after-poison-%d", i)})
	}
	add(1, "NUL in event_id", "eventId", func(e *mcv1.ChannelEvent) { e.EventId = "poison-\x00-1" })
	add(2, "NUL in order_id", "orderId", func(e *mcv1.ChannelEvent) { e.GetTransaction().OrderId = "O\x00" })
	add(3, "NUL in store_id", "storeId", func(e *mcv1.ChannelEvent) { e.StoreId = "S\x00" })
	add(4, "NUL in sku", "sku", func(e *mcv1.ChannelEvent) { e.GetTransaction().Items[0].Sku = "L\x00" })
	add(5, "NUL in category", "category", func(e *mcv1.ChannelEvent) { e.GetTransaction().Items[0].Category = "c\x00" })
	add(6, "occurred_at 10^13 s", "occurred_at", func(e *mcv1.ChannelEvent) { e.OccurredAt = &timestamppb.Timestamp{Seconds: 1e13} })
	add(7, "occurred_at 0001-01-01", "occurred_at", func(e *mcv1.ChannelEvent) { e.OccurredAt = &timestamppb.Timestamp{Seconds: -62135596800} })
	add(8, "occurred_at 2100-01-01", "occurred_at", func(e *mcv1.ChannelEvent) {
		e.OccurredAt = timestamppb.New(time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC))
	})
	add(9, "occurred_at 9999-12-31", "occurred_at", func(e *mcv1.ChannelEvent) {
		e.OccurredAt = timestamppb.New(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC))
	})
	add(10, "nanos 2e9", "occurred_at", func(e *mcv1.ChannelEvent) { e.OccurredAt = &timestamppb.Timestamp{Seconds: at.Unix(), Nanos: 2e9} })
	add(11, "amount_minor MaxInt64", "amount", func(e *mcv1.ChannelEvent) { e.GetTransaction().Total.AmountMinor = math.MaxInt64 })
	add(12, "amount_minor 10^15", "amount", func(e *mcv1.ChannelEvent) { e.GetTransaction().Total.AmountMinor = 1e15 })
	add(13, "a purchase in USD", "USD", func(e *mcv1.ChannelEvent) {
		e.GetTransaction().Total.Currency = "USD"
		for _, it := range e.GetTransaction().GetItems() {
			it.Amount.Currency = "USD"
		}
	})
	add(14, "a referral naming the referrer", "referr", func(e *mcv1.ChannelEvent) {
		e.Payload = &mcv1.ChannelEvent_Referral{Referral: &mcv1.Referral{ReferralCode: "R-1",
			Referee: &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: e.GetIdentifiers()[0].GetValue()}}}
	})
	add(15, "a compressible 10 MB record", "larger than", func(e *mcv1.ChannelEvent) {
		e.GetTransaction().Items[0].Brand = strings.Repeat("b", 10<<20)
	})
	out = append(out, poison{name: "not a ChannelEvent", key: "13710000016", value: []byte{0xff, 0xff, 0xff}, reason: "not a ChannelEvent", goodID: "after-poison-16"})
	return out
}

// op is an acknowledged RPC: what the client was answered, first and on
// every retry with the same key.
type op struct {
	kind    string // commit, adjust, redeem
	key     string
	member  string
	answers []string // transaction ids / balances answered for the key
	code    codes.Code
	tries   int
}

// apiClient calls Commit, Adjust and Redeem like a till or an operator
// tool: a call answered Unavailable, DeadlineExceeded or not at all is
// retried with the same idempotency key until it gets an answer.
type apiClient struct {
	conn    *grpc.ClientConn
	members []string

	mu       sync.Mutex
	ops      []*op
	internal []string // calls answered Internal (never acceptable)
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
		return true
	}
	return false
}

func (a *apiClient) call(ctx context.Context, o *op, fn func(context.Context) (string, error)) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		answer, err := fn(cctx)
		cancel()
		o.tries++
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			o.answers = append(o.answers, answer)
			o.code = codes.OK
			break
		}
		if status.Code(err) == codes.Internal || status.Code(err) == codes.Unknown {
			a.mu.Lock()
			a.internal = append(a.internal, fmt.Sprintf("%s %s: %v", o.kind, o.key, err))
			a.mu.Unlock()
		}
		if !retryable(err) && status.Code(err) != codes.Internal && status.Code(err) != codes.Unknown {
			o.code = status.Code(err)
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	a.mu.Lock()
	a.ops = append(a.ops, o)
	a.mu.Unlock()
}

// run issues operations at rate per second until ctx ends; a second of the
// same key follows some of them, as a till that retries a call it believes
// lost.
func (a *apiClient) run(ctx context.Context, rate int, seed uint64) {
	benefits := mcv1.NewBenefitsServiceClient(a.conn)
	rng := rand.New(rand.NewPCG(seed, 2))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		member := a.members[rng.IntN(len(a.members))]
		o := &op{member: member}
		var fn func(context.Context) (string, error)
		switch r := rng.IntN(10); {
		case r < 6:
			o.kind, o.key = "commit", fmt.Sprintf("commit-%06d", n)
			amount := int64(1_000 + rng.IntN(50_000))
			req := &mcv1.CommitRequest{MemberId: member, IdempotencyKey: o.key, Basket: &mcv1.Basket{
				OrderId: "API-" + o.key, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-002",
				Total: &mcv1.Money{Currency: "CNY", AmountMinor: amount},
				Items: []*mcv1.LineItem{{Sku: "TEA", Category: "tea", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount}}},
			}}
			fn = func(ctx context.Context) (string, error) {
				r, err := benefits.Commit(ctx, req)
				return r.GetTransactionId(), err
			}
		case r < 8:
			o.kind, o.key = "adjust", fmt.Sprintf("adjust-%06d", n)
			req := &mcv1.AdjustRequest{MemberId: member, Points: int64(10 + rng.IntN(90)), Reason: "fault suite goodwill", IdempotencyKey: o.key}
			fn = func(ctx context.Context) (string, error) {
				_, err := benefits.Adjust(ctx, req)
				return "ok", err
			}
		default:
			o.kind, o.key = "redeem", fmt.Sprintf("redeem-%06d", n)
			req := &mcv1.RedeemRequest{MemberId: member, Points: int64(5 + rng.IntN(40)), RewardId: "coffee", IdempotencyKey: o.key}
			fn = func(ctx context.Context) (string, error) {
				r, err := benefits.Redeem(ctx, req)
				return r.GetTransactionId(), err
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.call(ctx, o, fn)
			// Some calls are sent again with the same key, as a till that
			// lost the answer would: the answer must be the first one.
			if o.code == codes.OK && rng.IntN(4) == 0 {
				a.call(ctx, &op{kind: o.kind, key: o.key, member: o.member}, fn)
			}
		}()
	}
}

// streamed is what one subscriber received, per member, in order.
type subscriber struct {
	name    string
	conn    func() *grpc.ClientConn
	req     *mcv1.SubscribeRequest
	onEvent func(ch *mcv1.MemberChange, at time.Time)

	mu         sync.Mutex
	seqs       map[string][]uint64
	reconnects int
	resyncs    int
}

// run follows the stream, reconnecting with the last resume token whenever
// it breaks, until ctx ends. ready is closed at the first Ready.
func (s *subscriber) run(ctx context.Context, ready chan<- struct{}) {
	token := ""
	first := true
	for ctx.Err() == nil {
		req := proto.Clone(s.req).(*mcv1.SubscribeRequest)
		req.ResumeToken = token
		stream, err := mcv1.NewSyncServiceClient(s.conn()).Subscribe(ctx, req)
		for err == nil {
			var m *mcv1.SubscribeResponse
			if m, err = stream.Recv(); err != nil {
				break
			}
			switch {
			case m.GetReady() != nil:
				if first {
					first = false
					close(ready)
				}
			case m.GetResyncRequired() != nil:
				s.mu.Lock()
				s.resyncs++
				s.mu.Unlock()
				err = errors.New("resync required: " + m.GetResyncRequired().GetReason())
			case m.GetChange() != nil:
				c := m.GetChange()
				s.mu.Lock()
				s.seqs[c.GetMemberId()] = append(s.seqs[c.GetMemberId()], c.GetSequence())
				s.mu.Unlock()
				if s.onEvent != nil {
					s.onEvent(c, time.Now())
				}
			}
			if t := m.GetResumeToken(); t != "" {
				token = t
			}
		}
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.reconnects++
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *subscriber) snapshot() (map[string][]uint64, int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]uint64, len(s.seqs))
	for k, v := range s.seqs {
		out[k] = append([]uint64(nil), v...)
	}
	return out, s.reconnects, s.resyncs
}
