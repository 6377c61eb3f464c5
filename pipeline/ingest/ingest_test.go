package ingest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

func telemetry() kafka.Telemetry {
	tel := kafkatest.Telemetry()
	if os.Getenv("INGEST_TEST_LOG") != "" {
		tel.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return tel
}

// stubResolver resolves an event to a member id derived from its first
// identifier's value, with references that carry only a hash of each value.
type stubResolver struct {
	rejectID    string // event answered with a rejection
	transientID string // event answered with a transient error, once

	mu     sync.Mutex
	failed bool
	calls  map[string]int
}

var errBlocked = errors.New("member is blocked")

func (s *stubResolver) ResolveEvent(_ context.Context, ev *mcv1.ChannelEvent) (ingest.Resolution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[ev.GetEventId()]++
	switch {
	case ev.GetEventId() == s.rejectID:
		return ingest.Resolution{}, dlq.Reject(errBlocked)
	case ev.GetEventId() == s.transientID && !s.failed:
		s.failed = true
		return ingest.Resolution{}, errors.New("identity database restarting")
	}
	return resolution(ev), nil
}

func (s *stubResolver) callsOf(eventID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[eventID]
}

func hash(v string) string {
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:])
}

func memberOf(ev *mcv1.ChannelEvent) string {
	return "m-" + hash(ev.GetIdentifiers()[0].GetValue())[:16]
}

func resolution(ev *mcv1.ChannelEvent) ingest.Resolution {
	refs := make([]*mcv1.IdentifierRef, len(ev.GetIdentifiers()))
	for i, id := range ev.GetIdentifiers() {
		refs[i] = &mcv1.IdentifierRef{Type: id.GetType(), ValueHash: hash(id.GetValue()), Scope: id.GetScope(), Masked: "***"}
	}
	return ingest.Resolution{MemberID: memberOf(ev), Identifiers: refs, Detail: &mcv1.Resolution{Created: true, Linked: refs}}
}

// The events happen an hour before the test clock's instant, which the
// stage measures its plausibility window from.
var occurred = timestamppb.New(clocktest.Start().Add(-time.Hour))

func options() ingest.Options { return ingest.Options{Now: clocktest.New().Now} }

func event(id, phone string) *mcv1.ChannelEvent {
	return &mcv1.ChannelEvent{
		EventId: id, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-001", OccurredAt: occurred,
		Identifiers: []*mcv1.Identifier{
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone},
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: "card-" + id},
		},
		Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{
			OrderId: "O-" + id, Total: &mcv1.Money{Currency: "CNY", AmountMinor: 12_345},
			Items: []*mcv1.LineItem{{Sku: "LATTE-L", Category: "coffee", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 12_345}}},
		}},
	}
}

const refereePhone = "13999999999"

func referralEvent(id, phone string) *mcv1.ChannelEvent {
	ev := event(id, phone)
	ev.Channel = mcv1.Channel_CHANNEL_MINIPROGRAM
	ev.Payload = &mcv1.ChannelEvent_Referral{Referral: &mcv1.Referral{
		ReferralCode: "FRIEND-42",
		Referee:      &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: refereePhone},
	}}
	return ev
}

func binary(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIngest(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	valid := event("ev-valid", "13800000001")
	viaJSON := referralEvent("ev-json", "13800000002")
	rejected := event("ev-reject", "13800000003")
	transient := event("ev-transient", "13800000004")
	transient.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: 300}}
	invalid := event("", "13800000005")
	jsonValue, err := protojson.Marshal(viaJSON)
	if err != nil {
		t.Fatal(err)
	}
	// JSON declared as HTTP would (header and type in any case, a
	// charset), and JSON declared not at all.
	viaJSONToo := event("ev-json-too", "13800000006")
	jsonTooValue, err := protojson.Marshal(viaJSONToo)
	if err != nil {
		t.Fatal(err)
	}
	undeclared, err := protojson.Marshal(event("ev-json-undeclared", "13800000007"))
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte{0xff, 0xff, 0xff, 0xff}

	input := []*kgo.Record{
		{Key: []byte("13800000001"), Value: binary(t, valid)},
		{Key: []byte("13800000002"), Value: jsonValue, Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/json")}}},
		{Key: []byte("garbage"), Value: garbage},
		{Key: []byte("13800000005"), Value: binary(t, invalid)},
		{Key: []byte("13800000003"), Value: binary(t, rejected)},
		{Key: []byte("13800000004"), Value: binary(t, transient)},
		{Key: []byte("13800000006"), Value: jsonTooValue, Headers: []kgo.RecordHeader{{Key: "Content-Type", Value: []byte("Application/JSON; charset=utf-8")}}},
		{Key: []byte("13800000007"), Value: undeclared},
	}
	producer, err := kgo.NewClient(kgo.SeedBrokers(kcfg.Brokers...), kgo.DefaultProduceTopic(kcfg.Topics.ChannelEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if err := producer.ProduceSync(ctx, input...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	res := &stubResolver{rejectID: rejected.GetEventId(), transientID: transient.GetEventId(), calls: map[string]int{}}
	runIngest(t, ctx, kcfg, res, options())

	// Output and consumed offsets commit in one transaction: once the
	// group's offsets reach the end of the input, the output is complete.
	kafkatest.WaitCommitted(t, ctx, kadm.NewClient(producer), kcfg.Group(ingest.Stage), kcfg.Topics.ChannelEvents)
	if n := res.callsOf(transient.GetEventId()); n < 2 {
		t.Errorf("transient event resolved %d times, want a retry after the failure", n)
	}

	// member.events.v1: the three good events, once each.
	out := map[string]*kgo.Record{}
	for _, r := range kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.MemberEvents) {
		id := kafka.Header(r, "mc-event-id")
		if out[id] != nil {
			t.Errorf("event %q published twice", id)
		}
		out[id] = r
	}
	wantOut := []*mcv1.ChannelEvent{valid, viaJSON, transient, viaJSONToo}
	if len(out) != len(wantOut) {
		t.Errorf("member events for %v, want exactly %s, %s, %s, %s", keys(out), valid.GetEventId(), viaJSON.GetEventId(), transient.GetEventId(), viaJSONToo.GetEventId())
	}
	for _, ev := range wantOut {
		r := out[ev.GetEventId()]
		if r == nil {
			t.Errorf("no member event for %s", ev.GetEventId())
			continue
		}
		checkMemberEvent(t, r, ev)
	}

	// dlq.v1: garbage, invalid and rejected, each with its reason and the
	// original bytes.
	letters := map[string]dlq.Letter{}
	for _, r := range kafkatest.ReadTopic(t, ctx, kcfg, kcfg.Topics.DLQ) {
		l := dlq.Parse(r)
		if _, dup := letters[string(r.Key)]; dup {
			t.Errorf("record %q dead-lettered twice", r.Key)
		}
		letters[string(r.Key)] = l
	}
	wantDLQ := []struct {
		key    string
		value  []byte
		reason string
	}{
		{"garbage", garbage, ingest.ErrDecode.Error()},
		{"13800000005", binary(t, invalid), "event_id"},
		{"13800000003", binary(t, rejected), errBlocked.Error()},
		{"13800000007", undeclared, "the value is JSON: send it with the header content-type: application/json"},
	}
	if len(letters) != len(wantDLQ) {
		t.Errorf("dead letters for keys %v, want garbage, invalid, rejected and undeclared JSON", keys(letters))
	}
	for _, w := range wantDLQ {
		l, ok := letters[w.key]
		if !ok {
			t.Errorf("no dead letter for %s", w.key)
			continue
		}
		if !bytes.Equal(l.Record.Value, w.value) {
			t.Errorf("dead letter %s: value is not the original bytes", w.key)
		}
		if !strings.Contains(l.Reason, w.reason) {
			t.Errorf("dead letter %s: reason %q, want it to mention %q", w.key, l.Reason, w.reason)
		}
		if l.Stage != ingest.Stage || l.Topic != kcfg.Topics.ChannelEvents {
			t.Errorf("dead letter %s: stage %q topic %q, want %q %q", w.key, l.Stage, l.Topic, ingest.Stage, kcfg.Topics.ChannelEvents)
		}
	}
}

// checkMemberEvent asserts that r is the member event of ev.
func checkMemberEvent(t *testing.T, r *kgo.Record, ev *mcv1.ChannelEvent) {
	t.Helper()
	id := ev.GetEventId()
	if string(r.Key) != memberOf(ev) {
		t.Errorf("%s: key %q, want member id %q", id, r.Key, memberOf(ev))
	}
	if ct := kafka.Header(r, "content-type"); ct != "application/x-protobuf" {
		t.Errorf("%s: content-type %q", id, ct)
	}
	me := &mcv1.MemberEvent{}
	if err := proto.Unmarshal(r.Value, me); err != nil {
		t.Errorf("%s: value is not a MemberEvent: %v", id, err)
		return
	}
	want := resolution(ev)
	if me.GetEventId() != id || me.GetMemberId() != want.MemberID || me.GetChannel() != ev.GetChannel() ||
		me.GetStoreId() != ev.GetStoreId() || !proto.Equal(me.GetOccurredAt(), ev.GetOccurredAt()) {
		t.Errorf("%s: member event header = %v", id, me)
	}
	if me.GetIngestedAt() == nil {
		t.Errorf("%s: no ingested_at", id)
	}
	if !proto.Equal(&mcv1.MemberEvent{Identifiers: want.Identifiers, Resolution: want.Detail},
		&mcv1.MemberEvent{Identifiers: me.GetIdentifiers(), Resolution: me.GetResolution()}) {
		t.Errorf("%s: identifiers %v resolution %v, want the resolver's %v %v", id, me.GetIdentifiers(), me.GetResolution(), want.Identifiers, want.Detail)
	}
	switch p := ev.GetPayload().(type) {
	case *mcv1.ChannelEvent_Transaction:
		if !proto.Equal(me.GetTransaction(), p.Transaction) {
			t.Errorf("%s: transaction %v, want %v", id, me.GetTransaction(), p.Transaction)
		}
	case *mcv1.ChannelEvent_Visit:
		if !proto.Equal(me.GetVisit(), p.Visit) {
			t.Errorf("%s: visit %v, want %v", id, me.GetVisit(), p.Visit)
		}
	case *mcv1.ChannelEvent_Referral:
		if me.GetReferral().GetReferralCode() != p.Referral.GetReferralCode() {
			t.Errorf("%s: referral %v, want code %q", id, me.GetReferral(), p.Referral.GetReferralCode())
		}
		if me.GetReferral().GetReferee() != nil {
			t.Errorf("%s: the referee's raw identifier was copied: %v", id, me.GetReferral().GetReferee())
		}
	default:
		t.Fatalf("%s: test does not check payload %T", id, p)
	}
	// No raw identifier value travels on.
	raw := []string{refereePhone}
	for _, i := range ev.GetIdentifiers() {
		raw = append(raw, i.GetValue())
	}
	for _, v := range raw {
		if bytes.Contains(r.Value, []byte(v)) {
			t.Errorf("%s: member event carries the raw identifier %q", id, v)
		}
	}
}

func TestMemberEvent(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	txn := &mcv1.Transaction{OrderId: "O-1", Total: &mcv1.Money{Currency: "CNY", AmountMinor: 100}, CouponCodes: []string{"C1"}, PointsRedeemed: 5}
	refund := &mcv1.Refund{OrderId: "O-1", OriginalEventId: "ev-0", Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 50}}
	visit := &mcv1.Visit{DwellSeconds: 120}
	browse := &mcv1.Browse{Sku: "SKU-1", Category: "coffee", Page: "/p/sku-1"}
	signUp := &mcv1.SignUp{ReferralCode: "FRIEND-42", Gender: "f", City: "Shanghai", BirthDate: timestamppb.New(time.Date(1990, 5, 1, 0, 0, 0, 0, time.UTC))}
	checkIn := &mcv1.CheckIn{}
	share := &mcv1.Share{ContentId: "article-7", Target: "wechat-moments"}
	review := &mcv1.Review{Sku: "SKU-1", Rating: 4, TextLength: 120}
	referral := &mcv1.Referral{ReferralCode: "FRIEND-42", Referee: &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: refereePhone}}

	tests := []struct {
		name string
		in   *mcv1.ChannelEvent // its payload
		want *mcv1.MemberEvent  // its payload
	}{
		{"transaction", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_Transaction{Transaction: txn}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_Transaction{Transaction: txn}}},
		{"refund", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_Refund{Refund: refund}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_Refund{Refund: refund}}},
		{"visit", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_Visit{Visit: visit}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_Visit{Visit: visit}}},
		{"browse", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_Browse{Browse: browse}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_Browse{Browse: browse}}},
		{"sign-up", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_SignUp{SignUp: signUp}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_SignUp{SignUp: signUp}}},
		{"check-in", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_CheckIn{CheckIn: checkIn}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_CheckIn{CheckIn: checkIn}}},
		{"share", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_Share{Share: share}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_Share{Share: share}}},
		{"review", &mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_Review{Review: review}}, &mcv1.MemberEvent{Payload: &mcv1.MemberEvent_Review{Review: review}}},
		{
			"referral without the referee's raw identifier",
			&mcv1.ChannelEvent{Payload: &mcv1.ChannelEvent_Referral{Referral: referral}},
			&mcv1.MemberEvent{Payload: &mcv1.MemberEvent_Referral{Referral: &mcv1.Referral{ReferralCode: "FRIEND-42"}}},
		},
		{"no payload", &mcv1.ChannelEvent{}, &mcv1.MemberEvent{}},
	}

	// Every payload of ChannelEvent is in the table.
	oneof := (&mcv1.ChannelEvent{}).ProtoReflect().Descriptor().Oneofs().ByName("payload")
	if got, want := len(tests)-1, oneof.Fields().Len(); got != want {
		t.Fatalf("table covers %d payloads, ChannelEvent has %d", got, want)
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := event("ev-1", "13800000001")
			ev.Payload = tt.in.Payload
			res := resolution(ev)
			got := ingest.MemberEvent(ev, res, now)

			want := &mcv1.MemberEvent{
				EventId: "ev-1", MemberId: res.MemberID, Channel: ev.GetChannel(), StoreId: ev.GetStoreId(),
				OccurredAt: ev.GetOccurredAt(), IngestedAt: timestamppb.New(now),
				Identifiers: res.Identifiers, Resolution: res.Detail,
			}
			want.Payload = tt.want.Payload
			if !proto.Equal(got, want) {
				t.Fatalf("MemberEvent =\n%v\nwant\n%v", got, want)
			}
			b := binary(t, got)
			for _, v := range []string{"13800000001", "card-ev-1", refereePhone} {
				if bytes.Contains(b, []byte(v)) {
					t.Errorf("member event carries the raw identifier %q", v)
				}
			}
		})
	}
	// The channel event is not modified: the referee stays on the input.
	if referral.GetReferee().GetValue() != refereePhone {
		t.Fatal("MemberEvent cleared the referee on the channel event")
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// blockingResolver waits in ResolveEvent until its context ends (or the
// test releases it), as a resolver waiting on a hung database does.
type blockingResolver struct {
	entered chan struct{}
	release chan struct{}
}

func (b blockingResolver) ResolveEvent(ctx context.Context, ev *mcv1.ChannelEvent) (ingest.Resolution, error) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	select {
	case <-ctx.Done():
		return ingest.Resolution{}, ctx.Err()
	case <-b.release:
		return resolution(ev), nil
	}
}

// TestStopCancelsResolve checks that stopping the stage cancels the context
// the resolver works under, so a slow resolution cannot block shutdown.
func TestStopCancelsResolve(t *testing.T) {
	kcfg := kafkatest.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := blockingResolver{entered: make(chan struct{}, 1), release: make(chan struct{})}
	in, err := ingest.New(kcfg, telemetry(), res, options())
	if err != nil {
		t.Fatal(err)
	}
	kafkatest.CheckStopCancels(t, ctx, kcfg, &kgo.Record{Topic: kcfg.Topics.ChannelEvents, Value: binary(t, event("ev-slow", "13800000001"))},
		res.entered, res.release, in.Run, in.Close)
}
