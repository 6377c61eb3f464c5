package e2e_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/identity/identitytest"
)

// TestAPIAndIngestEdges is issue 12's "API edges" on the running platform:
// events the loyalty programme would refuse are dead-lettered by ingest
// (before any stage applies them) while the shopper's next purchase goes
// through; requests with NUL bytes or amounts beyond the programme's limits
// are InvalidArgument naming the field; the JSON gateway refuses unknown
// fields; a coupon claimed from the app reaches a subscriber that follows
// the app.
func TestAPIAndIngestEdges(t *testing.T) {
	e, ctx := startWithin(t, 120*time.Second)

	const phone, card = "13700000012", "c-edges"
	usd := posTransaction("edge-usd", phone, card, 5_000)
	usd.GetTransaction().Total.Currency = "USD"
	usd.GetTransaction().Items[0].Amount.Currency = "USD"
	huge := posTransaction("edge-huge", phone, card, 1_000_000_000_000_000)
	good := posTransaction("edge-good", phone, card, 12_345)
	for _, ev := range []*mcv1.ChannelEvent{usd, huge, good} {
		e.publishEvent(t, ctx, phone, ev)
	}
	var member string
	eventually(t, "the good purchase applied", func() (bool, error) {
		return e.pool.QueryRow(ctx, `SELECT member_id::text FROM orders WHERE order_id = 'O-edge-good'`).Scan(&member) == nil, nil
	})
	letters := e.readLetters(t, ctx, 2)
	want := map[string]string{
		"edge-usd":  `transaction.total.currency "USD": the programme runs in CNY`,
		"edge-huge": "transaction.total.amount_minor 1000000000000000 is above the programme's maximum",
	}
	for _, l := range letters {
		ev := &mcv1.ChannelEvent{}
		if err := proto.Unmarshal(l.Record.Value, ev); err != nil {
			t.Fatalf("letter %q holds no channel event: %v", l.Reason, err)
		}
		if w, ok := want[ev.GetEventId()]; !ok || l.Stage != "ingest" || !strings.Contains(l.Reason, w) {
			t.Errorf("letter for %s: stage %q reason %q; want ingest with %q", ev.GetEventId(), l.Stage, l.Reason, w)
		}
	}
	var refused int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM orders WHERE order_id IN ('O-edge-usd', 'O-edge-huge')`).Scan(&refused); err != nil || refused != 0 {
		t.Errorf("%d refused purchases reached the ledger (%v)", refused, err)
	}

	ids, bens := mcv1.NewIdentityServiceClient(e.conn), mcv1.NewBenefitsServiceClient(e.conn)
	profile := mcv1.NewProfileServiceClient(e.conn)
	invalid := func(what string, err error, field string) {
		t.Helper()
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), field) {
			t.Errorf("%s: %v; want InvalidArgument naming %s", what, err, field)
		}
	}
	_, err := ids.Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, IdempotencyKey: "till\x00-1",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}}})
	invalid("Resolve with a NUL byte in its key", err, "idempotencyKey")
	_, err = profile.UpdateAttributes(ctx, &mcv1.UpdateAttributesRequest{MemberId: member, IdempotencyKey: "attrs",
		Attributes: map[string]string{"city": "Su\x00zhou"}})
	invalid("UpdateAttributes with a NUL byte", err, `attributes["city"]`)
	_, err = bens.Commit(ctx, &mcv1.CommitRequest{MemberId: member, IdempotencyKey: "max", Basket: &mcv1.Basket{OrderId: "O-max",
		Channel: mcv1.Channel_CHANNEL_POS, Total: &mcv1.Money{Currency: "CNY", AmountMinor: math.MaxInt64},
		Items: []*mcv1.LineItem{{Sku: "X", Quantity: 1}}}})
	invalid("Commit of MaxInt64", err, "basket.total.amount_minor")
	// Order ids are unique across members: another member's Commit under
	// the good purchase's order id is refused, not an internal error.
	other := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "edges-other", "13700000013", "c-edges-other")
	_, err = bens.Commit(ctx, &mcv1.CommitRequest{MemberId: other, IdempotencyKey: "taken", Basket: &mcv1.Basket{OrderId: "O-edge-good",
		Channel: mcv1.Channel_CHANNEL_POS, Total: &mcv1.Money{Currency: "CNY", AmountMinor: 5_000},
		Items: []*mcv1.LineItem{{Sku: "X", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 5_000}}}}})
	if st := status.Convert(err); st.Code() != codes.AlreadyExists || !strings.Contains(st.Message(), "O-edge-good") {
		t.Errorf("Commit under another member's order id: %v; want AlreadyExists naming the order", err)
	}
	_, err = bens.Quote(ctx, &mcv1.QuoteRequest{MemberId: member, Basket: &mcv1.Basket{OrderId: "O-empty-code", CouponCodes: []string{""},
		Channel: mcv1.Channel_CHANNEL_POS, Total: &mcv1.Money{Currency: "CNY", AmountMinor: 5_000}}})
	invalid("Quote with an empty coupon code", err, "coupon_codes[0]")
	_, err = bens.ClaimCoupon(ctx, &mcv1.ClaimCouponRequest{MemberId: member, TemplateId: "NOPE", IdempotencyKey: "claim-nope"})
	invalid("ClaimCoupon of a template the programme does not have", err, "template_id")

	code, out := postJSON(t, ctx, e.http+"/membercenter.v1.IdentityService/Resolve",
		`{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"`+phone+`"}],"channel":"CHANNEL_MINIPROGRAM","createIfMisssing":true,"idempotencyKey":"typo"}`)
	if msg, _ := out["message"].(string); code != 400 || !strings.Contains(msg, "createIfMisssing") {
		t.Errorf("a misspelt JSON field: %d %v; want 400 naming it", code, out)
	}

	// A subscriber that follows the app sees the app's claim.
	stream, err := mcv1.NewSyncServiceClient(e.conn).Subscribe(ctx, &mcv1.SubscribeRequest{MemberIds: []string{member}, Channel: mcv1.Channel_CHANNEL_APP})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetReady() == nil {
		t.Fatalf("first message %v, %v; want ready", m, err)
	}
	claim, err := bens.ClaimCoupon(ctx, &mcv1.ClaimCouponRequest{MemberId: member, TemplateId: "C10", IdempotencyKey: "app-claim", Channel: mcv1.Channel_CHANNEL_APP})
	if err != nil {
		t.Fatal(err)
	}
	ch := nextChange(t, stream)
	if ch.GetCouponChanged().GetCouponId() != claim.GetCoupon().GetCouponId() || ch.GetChannel() != mcv1.Channel_CHANNEL_APP {
		t.Errorf("the app's subscriber got %v; want the claimed coupon on CHANNEL_APP", ch)
	}
}

// readLetters reads the first n dead letters.
func (e *env) readLetters(t *testing.T, ctx context.Context, n int) []dlq.Letter {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cfg.Kafka.Brokers...), kgo.ConsumeTopics(e.cfg.Kafka.Topics.DLQ),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []dlq.Letter
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("%d of %d dead letters: %v", len(out), n, ctx.Err())
		}
		for _, r := range fs.Records() {
			out = append(out, openLetter(t, e.pool, r))
		}
	}
	return out
}

// openLetter parses a dead letter the platform wrote and opens it: the
// platform seals letters with its PII keys (the development keys here),
// those of a known member's records under the member's key in the key
// store (pool).
func openLetter(t *testing.T, pool *pgxpool.Pool, r *kgo.Record) dlq.Letter {
	t.Helper()
	l := dlq.Parse(r)
	if !l.Sealed {
		t.Fatalf("dead letter %d@%d is not sealed", r.Partition, r.Offset)
	}
	if err := l.Open(identitytest.Keys(t, pool)); err != nil {
		t.Fatal(err)
	}
	return l
}
