package identity_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/identity/identitytest"
)

const (
	rawPhone   = "13812345678" // the national number that must never be stored
	e164Phone  = "+8613812345678"
	memberCard = "c0012345"
)

type fixture struct {
	svc      *identity.Service
	benefits *benefits.Service
	pool     *pgxpool.Pool
	clock    *clocktest.Clock
}

func newService(t *testing.T) fixture {
	t.Helper()
	pool := pgtest.NewPool(t, nil)
	return withMemberData(identitytest.New(t, pool), pool)
}

// withMemberData gives the fixture's services one test clock, running from a
// Wednesday noon (the programme's weekend and month-start rules are not what
// these tests are about), and, as in production, lets merges carry the
// loyalty programme's data along.
func withMemberData(svc *identity.Service, pool *pgxpool.Pool) fixture {
	clock := clocktest.NewAt(clocktest.LastWednesdayNoon(clocktest.Start()))
	svc.SetClock(clock.Now)
	ben := benefits.New(pool, changes.Writer{Now: clock.Now}, slog.New(slog.DiscardHandler))
	ben.SetClock(clock.Now)
	svc.AddMemberData(ben)
	return fixture{svc: svc, benefits: ben, pool: pool, clock: clock}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// beginService opens a test: its fixture and the context of its calls.
func beginService(t *testing.T) (fixture, context.Context) { return newService(t), ctxT(t) }

func phone(v string) *mcv1.Identifier { return &mcv1.Identifier{Type: typePhone, Value: v} }
func card(v string) *mcv1.Identifier  { return &mcv1.Identifier{Type: typeCard, Value: v} }

func resolveReq(key string, create bool, ids ...*mcv1.Identifier) *mcv1.ResolveRequest {
	return &mcv1.ResolveRequest{
		Identifiers: ids, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-001",
		CreateIfMissing: create, IdempotencyKey: key,
	}
}

func channelEvent(id string, ids ...*mcv1.Identifier) *mcv1.ChannelEvent {
	return &mcv1.ChannelEvent{
		EventId: id, Channel: mcv1.Channel_CHANNEL_MINIPROGRAM, OccurredAt: timestamppb.New(clocktest.Start()),
		Identifiers: ids, Payload: &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}},
	}
}

// counts is how many rows each table the identity service writes holds.
type counts struct{ members, identifiers, outbox, ingested, idempotency int }

// wantLinkedOnly fails the test at once unless resp linked exactly one
// identifier, of type typ.
func wantLinkedOnly(t *testing.T, resp *mcv1.ResolveResponse, typ mcv1.IdentifierType) {
	t.Helper()
	if len(resp.GetLinked()) != 1 || resp.GetLinked()[0].GetType() != typ {
		t.Fatalf("linked = %v, want exactly one identifier, of type %v", resp.GetLinked(), typ)
	}
}

// wantRows fails the test at once unless there are members members with
// identifiers identifiers.
func (f fixture) wantRows(t *testing.T, members, identifiers int) {
	t.Helper()
	if c := f.counts(t); c.members != members || c.identifiers != identifiers {
		t.Fatalf("rows = %+v, want %d members with %d identifiers", c, members, identifiers)
	}
}

// outboxUpTo is member's outbox, failing the test at once unless it holds
// n changes, the last with sequence n.
func (f fixture) outboxUpTo(t *testing.T, member string, n int) []outboxRow {
	t.Helper()
	ob := f.outbox(t, member)
	if len(ob) != n || ob[n-1].sequence != int64(n) {
		t.Fatalf("outbox = %v, want %d changes, the last with sequence %d", ob, n, n)
	}
	return ob
}

func (f fixture) counts(t *testing.T) counts {
	t.Helper()
	var c counts
	err := f.pool.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM members), (SELECT count(*) FROM member_identifiers), (SELECT count(*) FROM outbox),
		(SELECT count(*) FROM ingested_events), (SELECT count(*) FROM idempotency_keys)`).
		Scan(&c.members, &c.identifiers, &c.outbox, &c.ingested, &c.idempotency)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type outboxRow struct {
	sequence int64
	change   *mcv1.MemberChange
}

// outbox returns a member's outbox rows in sequence order, decoded.
func (f fixture) outbox(t *testing.T, memberID string) []outboxRow {
	t.Helper()
	rows, err := f.pool.Query(context.Background(),
		`SELECT sequence, payload FROM outbox WHERE member_id = $1 ORDER BY sequence`, uuid.MustParse(memberID))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		var payload []byte
		if err := rows.Scan(&r.sequence, &payload); err != nil {
			t.Fatal(err)
		}
		r.change = &mcv1.MemberChange{}
		if err := proto.Unmarshal(payload, r.change); err != nil {
			t.Fatalf("outbox payload is not a MemberChange: %v", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestResolveCreatesMember(t *testing.T) {
	f, ctx := beginService(t)

	resp := f.resolve(t, "k-create", phone(rawPhone))
	if !resp.GetCreated() {
		t.Fatal("created = false for a phone never seen before")
	}
	if _, err := uuid.Parse(resp.GetMemberId()); err != nil {
		t.Fatalf("member_id %q: %v", resp.GetMemberId(), err)
	}
	wantLinkedOnly(t, resp, typePhone)
	f.wantRows(t, 1, 1)
	ob := f.outboxUpTo(t, resp.GetMemberId(), 1)
	ch := ob[0].change
	if ch.GetMemberId() != resp.GetMemberId() || ch.GetSequence() != 1 || ch.GetMemberCreated() == nil {
		t.Fatalf("outbox change = %v, want MemberCreated #1 of %s", ch, resp.GetMemberId())
	}
	if !proto.Equal(&mcv1.MemberCreated{Identifiers: resp.GetLinked(), AuditId: ch.GetMemberCreated().GetAuditId()}, ch.GetMemberCreated()) || ch.GetMemberCreated().GetAuditId() == "" {
		t.Fatalf("MemberCreated identifiers = %v, want %v", ch.GetMemberCreated().GetIdentifiers(), resp.GetLinked())
	}

	// The member can be looked up by the phone in any notation.
	m, err := f.svc.FindByIdentifier(ctx, phone("+86 138-1234-5678"))
	if err != nil {
		t.Fatal(err)
	}
	if m.GetMemberId() != resp.GetMemberId() {
		t.Fatalf("FindByIdentifier = %s, want %s", m.GetMemberId(), resp.GetMemberId())
	}
}

func TestResolveWithoutCreate(t *testing.T) {
	f := newService(t)
	resp, err := f.svc.Resolve(ctxT(t), resolveReq("k-nocreate", false, phone(rawPhone)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMemberId() != "" || resp.GetCreated() || len(resp.GetLinked()) != 0 {
		t.Fatalf("response = %v, want empty: nothing matched and create_if_missing was false", resp)
	}
	if c := f.counts(t); c.members != 0 || c.identifiers != 0 || c.outbox != 0 {
		t.Fatalf("rows = %+v, want no member", c)
	}
}

func TestResolveLinksNewIdentifier(t *testing.T) {
	f := newService(t)
	first := f.resolve(t, "k-1", phone(rawPhone))

	// The same phone, written differently, seen with a new card.
	second := f.resolve(t, "k-2", phone("+86 138 1234 5678"), card(memberCard))
	if second.GetMemberId() != first.GetMemberId() || second.GetCreated() {
		t.Fatalf("second resolve = %v, want existing member %s", second, first.GetMemberId())
	}
	wantLinkedOnly(t, second, typeCard)
	f.wantRows(t, 1, 2)
	ob := f.outboxUpTo(t, first.GetMemberId(), 2)
	ic := ob[1].change.GetIdentityChanged()
	if ic.GetKind() != mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_LINKED ||
		len(ic.GetIdentifiers()) != 1 || !proto.Equal(ic.GetIdentifiers()[0], second.GetLinked()[0]) {
		t.Fatalf("change #2 = %v, want the card linked", ob[1].change)
	}

	// The card now finds the member; linking it again changes nothing.
	third := f.resolve(t, "k-3", card("C0012345"))
	if third.GetMemberId() != first.GetMemberId() || third.GetCreated() || len(third.GetLinked()) != 0 {
		t.Fatalf("resolve by card = %v, want member %s, nothing linked", third, first.GetMemberId())
	}
	if n := len(f.outbox(t, first.GetMemberId())); n != 2 {
		t.Fatalf("outbox has %d rows after a no-op resolve, want 2", n)
	}
}

func TestResolveIdempotency(t *testing.T) {
	f, ctx := beginService(t)
	req := resolveReq("k-idem", true, phone(rawPhone), card(memberCard))
	first, err := f.svc.Resolve(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	before := f.counts(t)

	retry, err := f.svc.Resolve(ctx, proto.Clone(req).(*mcv1.ResolveRequest))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(first, retry) {
		t.Fatalf("retry answered %v, want the first answer %v", retry, first)
	}
	if !retry.GetCreated() {
		t.Fatal("the replayed answer lost created=true")
	}
	if after := f.counts(t); after != before {
		t.Fatalf("retry wrote rows: before %+v, after %+v", before, after)
	}

	tests := []struct {
		name string
		req  *mcv1.ResolveRequest
	}{
		{"other identifier", resolveReq("k-idem", true, phone("13912345678"))},
		{"create flag flipped", resolveReq("k-idem", false, phone(rawPhone), card(memberCard))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.svc.Resolve(ctx, tt.req)
			if !errors.Is(err, changes.ErrKeyReused) {
				t.Fatalf("reused key with another request: err = %v, want ErrKeyReused", err)
			}
			if after := f.counts(t); after != before {
				t.Fatalf("rejected request wrote rows: before %+v, after %+v", before, after)
			}
		})
	}
}

func TestResolveConcurrentNewPhone(t *testing.T) {
	f, ctx := beginService(t)
	const n = 16
	resps := make([]*mcv1.ResolveResponse, n)
	errs := atOnce(n, func(i int) (err error) {
		resps[i], err = f.svc.Resolve(ctx, resolveReq(fmt.Sprintf("k-conc-%d", i), true, phone(rawPhone)))
		return err
	})

	created := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("resolver %d: %v", i, errs[i])
		}
		if resps[i].GetMemberId() != resps[0].GetMemberId() {
			t.Fatalf("resolver %d got member %s, resolver 0 got %s", i, resps[i].GetMemberId(), resps[0].GetMemberId())
		}
		if resps[i].GetCreated() {
			created++
		}
	}
	if created != 1 {
		t.Errorf("%d responses say created, want 1", created)
	}
	// Callers that arrived after the creation committed took the read-only
	// path, which stores no answer; the others stored theirs.
	if c := f.counts(t); c.members != 1 || c.identifiers != 1 || c.outbox != 1 || c.idempotency < 1 || c.idempotency > n {
		t.Fatalf("rows = %+v, want 1 member, 1 identifier, 1 change, 1..%d idempotency keys", c, n)
	}
}

func TestResolveEventConcurrentNewPhone(t *testing.T) {
	f, ctx := beginService(t)
	const n = 16
	members := make([]string, n)
	errs := atOnce(n, func(i int) error {
		res, err := f.svc.ResolveEvent(ctx, channelEvent(fmt.Sprintf("ev-conc-%d", i), phone(rawPhone)))
		members[i] = res.MemberID
		return err
	})
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("event %d: %v", i, errs[i])
		}
		if members[i] != members[0] {
			t.Fatalf("event %d went to member %s, event 0 to %s", i, members[i], members[0])
		}
	}
	if c := f.counts(t); c.members != 1 || c.identifiers != 1 || c.outbox != 1 || c.ingested != n {
		t.Fatalf("rows = %+v, want 1 member, 1 identifier, 1 change, %d ingested events", c, n)
	}
}

func TestResolveEventOnce(t *testing.T) {
	f, ctx := beginService(t)
	ev := channelEvent("ev-1", phone(rawPhone), card(memberCard))

	first, err := f.svc.ResolveEvent(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if first.MemberID == "" || !first.Detail.GetCreated() || len(first.Detail.GetLinked()) != 2 {
		t.Fatalf("first resolution = %+v, want a created member with 2 linked identifiers", first)
	}
	if len(first.Identifiers) != 2 {
		t.Fatalf("identifiers = %v, want refs of both identifiers", first.Identifiers)
	}
	before := f.counts(t)
	if before.members != 1 || before.identifiers != 2 || before.outbox != 1 || before.ingested != 1 {
		t.Fatalf("rows after first delivery = %+v", before)
	}
	if cause := f.outbox(t, first.MemberID)[0].change.GetCauseId(); cause != "ev-1" {
		t.Fatalf("change cause = %q, want the event id", cause)
	}

	again, err := f.svc.ResolveEvent(ctx, proto.Clone(ev).(*mcv1.ChannelEvent))
	if err != nil {
		t.Fatal(err)
	}
	if again.MemberID != first.MemberID || again.Detail.GetCreated() != first.Detail.GetCreated() {
		t.Fatalf("redelivery resolved to %+v, want %+v", again, first)
	}
	if len(again.Identifiers) != len(first.Identifiers) {
		t.Fatalf("redelivery identifiers = %v, want %v", again.Identifiers, first.Identifiers)
	}
	for i := range first.Identifiers {
		if !proto.Equal(again.Identifiers[i], first.Identifiers[i]) {
			t.Fatalf("redelivery identifier %d = %v, want %v", i, again.Identifiers[i], first.Identifiers[i])
		}
	}
	if after := f.counts(t); after != before {
		t.Fatalf("redelivery wrote rows: before %+v, after %+v", before, after)
	}
}

func TestResolveEventRejectsInvalidIdentifier(t *testing.T) {
	tests := []struct {
		name string
		ids  []*mcv1.Identifier
	}{
		{"invalid phone", []*mcv1.Identifier{phone("123")}},
		{"valid card with invalid phone", []*mcv1.Identifier{card(memberCard), phone("abc")}},
		{"openid without scope", []*mcv1.Identifier{{Type: typeOpenID, Value: "oAbc"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newService(t)
			_, err := f.svc.ResolveEvent(ctxT(t), channelEvent("ev-bad", tt.ids...))
			if !dlq.Rejected(err) {
				t.Fatalf("err = %v, want a dlq rejection", err)
			}
			if !errors.Is(err, identity.ErrInvalidIdentifier) {
				t.Fatalf("err = %v, want it to wrap ErrInvalidIdentifier", err)
			}
			if c := f.counts(t); c != (counts{}) {
				t.Fatalf("rejected event wrote rows: %+v", c)
			}
		})
	}
}

func TestNoRawPIIStored(t *testing.T) {
	f, ctx := beginService(t)
	const email = "alice.smith@example.com"
	emailID := &mcv1.Identifier{Type: typeEmail, Value: email}
	f.resolve(t, "k-pii", phone(rawPhone))
	if _, err := f.svc.ResolveEvent(ctx, channelEvent("ev-pii", phone("+86 138 1234 5678"), card(memberCard), emailID)); err != nil {
		t.Fatal(err)
	}

	forbidden := [][]byte{[]byte(rawPhone), []byte("alice.smith"), []byte("alice")}
	check := func(where string, b []byte) {
		t.Helper()
		for _, s := range forbidden {
			if bytes.Contains(b, s) {
				t.Errorf("%s contains raw PII %q", where, s)
			}
		}
	}

	rows, err := f.pool.Query(ctx, `SELECT id_type, scope, value_hash, coalesce(value_cipher, ''), coalesce(key_id, ''), masked, cause_id FROM member_identifiers`)
	if err != nil {
		t.Fatal(err)
	}
	pii := identitytest.Keys(t, f.pool)
	n := 0
	for rows.Next() {
		n++
		var typ int16
		var scope, keyID, masked, cause string
		var hash, cipher []byte
		if err := rows.Scan(&typ, &scope, &hash, &cipher, &keyID, &masked, &cause); err != nil {
			t.Fatal(err)
		}
		for col, v := range map[string][]byte{"scope": []byte(scope), "value_hash": hash, "value_cipher": cipher, "key_id": []byte(keyID), "masked": []byte(masked), "cause_id": []byte(cause)} {
			check(fmt.Sprintf("member_identifiers.%s (type %d)", col, typ), v)
		}
		// The display ciphertext of PII decrypts to the normalised value.
		want := map[int16]string{int16(typePhone): e164Phone, int16(typeEmail): email}[typ]
		if want == "" {
			continue
		}
		got, err := pii.Reveal(ctx, cipher, keyID, hash)
		if err != nil || got != want || !identity.IsMemberKey(keyID) {
			t.Errorf("type %d ciphertext under %s decrypts to %q, %v; want %q under the member's data key", typ, keyID, got, err, want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("member_identifiers has %d rows, want 3", n)
	}

	rows, err = f.pool.Query(ctx, `SELECT payload, traceparent FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	n = 0
	for rows.Next() {
		n++
		var payload []byte
		var tp string
		if err := rows.Scan(&payload, &tp); err != nil {
			t.Fatal(err)
		}
		check("outbox.payload", payload)
		check("outbox.traceparent", []byte(tp))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("outbox has %d rows, want 2 (created, linked)", n)
	}
}

// TestResolveEventRedeliveryReturnsFirstAnswer holds ResolveEvent to the
// ingest.Resolver contract: a redelivered event gets the first answer, so the
// member event published after an aborted ingest transaction equals the one
// a crash-free run publishes.
func TestResolveEventRedeliveryReturnsFirstAnswer(t *testing.T) {
	f, ctx := beginService(t)
	f.resolve(t, "k-existing", phone(rawPhone))
	// Known phone, new card: the card is linked by this event.
	ev := channelEvent("ev-link", phone(rawPhone), card(memberCard))
	first, err := f.svc.ResolveEvent(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Detail.GetLinked()) != 1 {
		t.Fatalf("first resolution linked %v, want the card", first.Detail.GetLinked())
	}
	again, err := f.svc.ResolveEvent(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if again.MemberID != first.MemberID || !proto.Equal(again.Detail, first.Detail) {
		t.Fatalf("redelivery resolution = %s %v, want the first answer %s %v", again.MemberID, again.Detail, first.MemberID, first.Detail)
	}
}

// TestAnEventIDUsedAgainForAnotherEventIsRefused: an event id that comes
// again with another event behind it (another store, another identifier)
// is refused as a data error naming the event id, on every path — the
// lookup of a known member, the transactional path, a partition's batch
// against an earlier batch, within one batch — and writes nothing; the
// event sent again as it was still gets its first answer. Before, the
// other event got the first one's answer and was passed on: the stages
// passed over it, having applied the first, and ClickHouse kept its row
// in place of the first's.
func TestAnEventIDUsedAgainForAnotherEventIsRefused(t *testing.T) {
	f, ctx := beginService(t)
	f.resolve(t, "k-existing", phone(rawPhone))
	refused := func(what string, err error) {
		t.Helper()
		if !dlq.Rejected(err) || !errors.Is(err, identity.ErrEventIDReused) {
			t.Errorf("%s: err = %v, want a data error for an event id used again", what, err)
		}
	}
	elsewhere := func(ev *mcv1.ChannelEvent) *mcv1.ChannelEvent {
		other := proto.Clone(ev).(*mcv1.ChannelEvent)
		other.StoreId = "another-store"
		return other
	}
	referral := func(id string) *mcv1.ChannelEvent {
		ev := channelEvent(id, phone(rawPhone))
		ev.Payload = &mcv1.ChannelEvent_Referral{Referral: &mcv1.Referral{ReferralCode: "R-1", Referee: phone("13911110002")}}
		return ev
	}
	known, viaTx := channelEvent("ev-known", phone(rawPhone)), referral("ev-referral")
	for _, ev := range []*mcv1.ChannelEvent{known, viaTx} {
		if _, err := f.svc.ResolveEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	before := f.counts(t)
	_, err := f.svc.ResolveEvent(ctx, elsewhere(known))
	refused("a known member's event", err)
	_, err = f.svc.ResolveEvent(ctx, elsewhere(viaTx))
	refused("a referral (the transactional path)", err)
	if after := f.counts(t); after != before {
		t.Errorf("refused events wrote rows: %+v, then %+v", before, after)
	}

	fresh := channelEvent("ev-fresh", phone(rawPhone))
	out, errs := f.svc.ResolveEvents(ctx, []*mcv1.ChannelEvent{elsewhere(known), known, fresh, elsewhere(fresh)})
	refused("a batch's event used in an earlier batch", errs[0])
	refused("a batch's event used earlier in the batch", errs[3])
	for _, i := range []int{1, 2} {
		if errs[i] != nil || out[i].MemberID == "" {
			t.Errorf("event %d of the batch: %v, %v; want its answer", i, out[i], errs[i])
		}
	}
	if again, err := f.svc.ResolveEvent(ctx, fresh); err != nil || again.MemberID != out[2].MemberID {
		t.Errorf("the batch's new event sent again: %v, %v; want its first answer", again, err)
	}
	// A fingerprint made under another schema of the event (by an
	// instance of another version, during a rolling upgrade, which encodes
	// the same record otherwise) is not compared: the redelivery gets its
	// first answer.
	if _, err := f.pool.Exec(ctx, `UPDATE ingested_events SET fingerprint = '\x00000000'::bytea || sha256(fingerprint) WHERE event_id = $1`, known.GetEventId()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.ResolveEvent(ctx, known); err != nil {
		t.Errorf("a redelivery fingerprinted under another schema first: %v; want its first answer", err)
	}
}

// Merging, conflicts and the rules behind them are tested in graph_test.go.

// A lookup of a known member writes nothing, yet a retry of the call that
// created the member still gets its first answer.
func TestResolveKnownMemberWritesNothing(t *testing.T) {
	f, ctx := beginService(t)
	first, err := f.svc.Resolve(ctx, resolveReq("create", true, phone(rawPhone), card(memberCard)))
	if err != nil || !first.GetCreated() {
		t.Fatalf("create = %v, %v", first, err)
	}
	before := f.counts(t)
	for i := 0; i < 3; i++ {
		got, err := f.svc.Resolve(ctx, resolveReq(fmt.Sprintf("lookup-%d", i), true, card(memberCard), phone(rawPhone)))
		if err != nil || got.GetMemberId() != first.GetMemberId() || got.GetCreated() || len(got.GetLinked()) != 0 {
			t.Fatalf("lookup = %v, %v", got, err)
		}
	}
	if after := f.counts(t); after != before {
		t.Fatalf("lookups wrote rows: %+v → %+v", before, after)
	}
	retry, err := f.svc.Resolve(ctx, resolveReq("create", true, phone(rawPhone), card(memberCard)))
	if err != nil || !proto.Equal(retry, first) {
		t.Fatalf("retry of the creating call = %v, %v; want %v", retry, err, first)
	}
}

// A referral whose referee is the referrer (the phone that sends it, or any
// identifier or device already linked to the referrer) is refused and
// changes nothing; a referral of someone else passes.
func TestResolveEventRefusesSelfReferral(t *testing.T) {
	f, ctx := beginService(t)
	referrer := phone("13911110001")
	device := &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: "device-of-referrer"}
	if _, err := f.svc.ResolveEvent(ctx, channelEvent("ev-link", referrer, device)); err != nil {
		t.Fatal(err)
	}
	referral := func(id string, referee *mcv1.Identifier, ids ...*mcv1.Identifier) *mcv1.ChannelEvent {
		ev := channelEvent(id, ids...)
		ev.Payload = &mcv1.ChannelEvent_Referral{Referral: &mcv1.Referral{ReferralCode: "R-1", Referee: referee}}
		return ev
	}
	before := f.counts(t)
	for name, ev := range map[string]*mcv1.ChannelEvent{
		"the sending phone":                         referral("ev-self-1", phone("13911110001"), referrer),
		"a device of the referrer":                  referral("ev-self-2", device, referrer),
		"the referrer's phone, written differently": referral("ev-self-3", phone("+86 139 1111 0001"), referrer),
		"a new identifier of the event":             referral("ev-self-4", card("CARD-NEW-1"), referrer, card("CARD-NEW-1")),
	} {
		_, err := f.svc.ResolveEvent(ctx, ev)
		if !dlq.Rejected(err) || !errors.Is(err, identity.ErrSelfReferral) {
			t.Errorf("%s: err = %v, want a rejection for self-referral", name, err)
		}
	}
	if after := f.counts(t); after != before {
		t.Errorf("refused referrals wrote rows: %+v, then %+v", before, after)
	}
	if _, err := f.svc.ResolveEvent(ctx, referral("ev-friend", phone("13911110002"), referrer)); err != nil {
		t.Errorf("a referral of someone else: %v", err)
	}
}

// A partition's events resolved together, and one by one, give the answers
// the transactional path alone gives them, in order: each sees what the
// events before it created or linked, and the lookups that answer events
// without a transaction (an event whose resolution changes nothing) answer
// as that path would.
func TestResolveEventsEqualsOneByOne(t *testing.T) {
	referral := func(id string, referee *mcv1.Identifier, ids ...*mcv1.Identifier) *mcv1.ChannelEvent {
		ev := channelEvent(id, ids...)
		ev.Payload = &mcv1.ChannelEvent_Referral{Referral: &mcv1.Referral{ReferralCode: "R-1", Referee: referee}}
		return ev
	}
	batch, single, reference := newService(t), newService(t), newService(t)
	ctx := ctxT(t)
	tablet := &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: "store-tablet-1"}
	phoneOfB := &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: "phone-of-b"}
	for _, f := range []fixture{batch, single, reference} {
		f.resolve(t, "known", phone("13911112222"))
		// A store tablet (a shared identifier) two shoppers have used.
		f.resolve(t, "a", phone("13911114444"), tablet)
		f.resolve(t, "b", phone("13911115555"), tablet, phoneOfB)
	}
	events := []*mcv1.ChannelEvent{
		channelEvent("e1", phone("13911112222")),                       // known: fast
		channelEvent("e2", phone("13911113333")),                       // new: creates
		channelEvent("e2b", phone("13911112222")),                      // untouched by e2: the lookup's answer holds
		channelEvent("e3", phone("13911113333"), card("CARD-E3")),      // links a card to e2's member
		channelEvent("e4", card("CARD-E3")),                            // known through e3's link
		channelEvent("e5", phone("123")),                               // invalid identifier
		channelEvent("e1", phone("13911112222")),                       // a redelivery
		channelEvent("e6", phone("13911112222"), phone("13911113333")), // two members: merges
		channelEvent("e7", card("CARD-E3")),                            // after the merge
		channelEvent("e8", phone("13911114444"), tablet),               // a shared device its shopper holds: fast
		channelEvent("e9", phone("13911115555"), tablet),               // the other holder of the tablet
		channelEvent("e10", phone("13911116666"), tablet),              // a new shopper on the tablet: creates, links it
		channelEvent("e11", phone("13911114444"), phoneOfB),            // a device only another member holds: linked
		channelEvent("e12", tablet),                                    // the shared device alone
		channelEvent("e13", phone("13911114444"), tablet, phoneOfB),    // after e11: fast
		// Three events for the transactional path that share nothing, in
		// one transaction: a new shopper, a referral the referrer refers
		// itself in (refused after resolving: rolled back, the others
		// resolved again without it), another new shopper; then one that
		// needs the first's member.
		channelEvent("e14", phone("13911117777")),
		referral("e15", phoneOfB, phone("13911114444")),
		channelEvent("e16", phone("13911118888")),
		channelEvent("e17", phone("13911117777"), card("CARD-E17")),
	}
	var want []contract.Resolution
	var wantErr []error
	for _, ev := range events {
		r, err := identity.ResolveEventInTx(ctx, reference.svc, ev)
		want, wantErr = append(want, r), append(wantErr, err)
	}
	batchGot, batchErrs := batch.svc.ResolveEvents(ctx, events)
	var singleGot []contract.Resolution
	var singleErrs []error
	for _, ev := range events {
		r, err := single.svc.ResolveEvent(ctx, ev)
		singleGot, singleErrs = append(singleGot, r), append(singleErrs, err)
	}
	for _, c := range []struct {
		name string
		f    fixture
		got  []contract.Resolution
		errs []error
	}{{"batch", batch, batchGot, batchErrs}, {"one by one", single, singleGot, singleErrs}} {
		// Member ids differ between the databases: compare which events
		// share a member, and whose member each event's origin is.
		same := func(rs []contract.Resolution, i, j int) bool { return rs[i].MemberID == rs[j].MemberID }
		sameOrigin := func(rs []contract.Resolution, i, j int) bool {
			return rs[i].Detail.GetOriginMemberId() == rs[j].MemberID
		}
		for i := range events {
			if (c.errs[i] == nil) != (wantErr[i] == nil) || (c.errs[i] != nil && !fault.IsData(c.errs[i])) {
				t.Fatalf("%s, event %d (%s): error %v, transactional path %v", c.name, i, events[i].GetEventId(), c.errs[i], wantErr[i])
			}
			if c.errs[i] != nil {
				continue
			}
			if c.got[i].MemberID == "" || len(c.got[i].Identifiers) != len(want[i].Identifiers) ||
				c.got[i].Detail.GetCreated() != want[i].Detail.GetCreated() || len(c.got[i].Detail.GetLinked()) != len(want[i].Detail.GetLinked()) ||
				len(c.got[i].Detail.GetMergedMemberIds()) != len(want[i].Detail.GetMergedMemberIds()) {
				t.Errorf("%s, event %d (%s): %+v, transactional path %+v", c.name, i, events[i].GetEventId(), c.got[i], want[i])
			}
			for j := range events {
				if c.errs[j] != nil {
					continue
				}
				if same(c.got, i, j) != same(want, i, j) {
					t.Errorf("%s, events %d and %d: same member %v, transactional path %v", c.name, i, j, same(c.got, i, j), same(want, i, j))
				}
				if sameOrigin(c.got, i, j) != sameOrigin(want, i, j) {
					t.Errorf("%s: event %d's origin is event %d's member %v, transactional path %v", c.name, i, j, sameOrigin(c.got, i, j), sameOrigin(want, i, j))
				}
			}
		}
		if c.f.counts(t) != reference.counts(t) {
			t.Errorf("rows after %s %+v, transactional path %+v", c.name, c.f.counts(t), reference.counts(t))
		}
	}
}

// lockWaiters counts the sessions of pool's database waiting for a lock.
func lockWaiters(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	return pgtest.LockWaiters(ctx, pool)
}

// answer is what ResolveEvents answered.
type answer struct {
	out  []contract.Resolution
	errs []error
}

// resolveInBackground resolves evs in a goroutine of its own; its answer
// comes on the channel.
func (f fixture) resolveInBackground(ctx context.Context, evs ...*mcv1.ChannelEvent) <-chan answer {
	done := make(chan answer, 1)
	go func() {
		out, errs := f.svc.ResolveEvents(ctx, evs)
		done <- answer{out, errs}
	}()
	return done
}

// TestAGroupTakesItsMembersInIdOrder: a group of events that link new
// identifiers to two members takes both members in id order before it
// writes, as the member stage takes a batch's. With a stage's transaction
// holding the lower member and then asking for the higher one, the group
// waits for it instead of holding the higher member while it waits for the
// lower: no deadlock, both links made.
func TestAGroupTakesItsMembersInIdOrder(t *testing.T) {
	f, ctx := beginService(t)
	x := uuid.MustParse(f.resolve(t, "x", phone("13911121001")).GetMemberId())
	y := uuid.MustParse(f.resolve(t, "y", phone("13911121002")).GetMemberId())
	lo, hi := x, y
	phoneOf := map[uuid.UUID]string{x: "13911121001", y: "13911121002"}
	if bytes.Compare(lo[:], hi[:]) > 0 {
		lo, hi = hi, lo
	}
	stage, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stage.Rollback(ctx)
	if _, err := stage.Exec(ctx, `SELECT member_id FROM members WHERE member_id = $1 FOR NO KEY UPDATE`, lo); err != nil {
		t.Fatal(err)
	}
	// The higher member's event first: taken one by one, the group would
	// hold it while it waits for the lower.
	done := f.resolveInBackground(ctx,
		channelEvent("g-hi", phone(phoneOf[hi]), card("CARD-G-HI")),
		channelEvent("g-lo", phone(phoneOf[lo]), card("CARD-G-LO")))
	// Until the group waits for a lock the stage holds.
	for {
		waiting, err := lockWaiters(ctx, f.pool)
		if err != nil {
			t.Fatalf("waiting for the group to wait for the member the stage holds: %v", err)
		}
		if waiting > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the group never waited for the member the stage holds")
		case <-time.After(10 * time.Millisecond): // the poll's interval
		}
	}
	// NOWAIT: a group that held the higher member would fail this at once
	// (a deadlock, PostgreSQL would find only after deadlock_timeout).
	if _, err := stage.Exec(ctx, `SELECT member_id FROM members WHERE member_id = $1 FOR NO KEY UPDATE NOWAIT`, hi); err != nil {
		t.Fatalf("the stage's lock of the higher member: %v (the group held it while waiting for the lower)", err)
	}
	if err := stage.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	a := <-done
	for i, m := range []uuid.UUID{hi, lo} {
		if a.errs[i] != nil || a.out[i].MemberID != m.String() || len(a.out[i].Detail.GetLinked()) != 1 {
			t.Fatalf("event %d: %+v, %v; want a card linked to %s", i, a.out[i], a.errs[i], m)
		}
	}
}

// TestAGroupLeavesBlockedValuesUnlocked: a group of ingest's transactional
// path does not lock a value the rules block (a till's placeholder phone):
// it is ignored and never stored, and every group that met it would queue
// behind the one holding it. Here another transaction holds its lock, and
// two events with the placeholder and a card each are resolved by their
// cards without waiting for it, in one group: the placeholder they share
// is no reason to resolve the second after the first.
func TestAGroupLeavesBlockedValuesUnlocked(t *testing.T) {
	f, ctx := beginService(t)
	const placeholder = "13800138000" // on rules.yaml's blocked list
	n, err := f.svc.Normalize([]*mcv1.Identifier{phone(placeholder)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx)
	if err := postgres.LockIdentifiers(ctx, other, []postgres.IdentifierKey{{Type: int16(n[0].Type), Scope: n[0].Scope, Hash: n[0].Hash}}); err != nil {
		t.Fatal(err)
	}
	done := f.resolveInBackground(ctx,
		channelEvent("g-placeholder-1", card("CARD-PLACEHOLDER-1"), phone(placeholder)),
		channelEvent("g-placeholder-2", card("CARD-PLACEHOLDER-2"), phone(placeholder)))
	for {
		select {
		case a := <-done:
			for i := range a.out {
				if a.errs[i] != nil || a.out[i].MemberID == "" || len(a.out[i].Detail.GetIgnored()) != 1 {
					t.Fatalf("event %d: resolution %+v, %v; want a member by the card, the placeholder ignored", i, a.out[i], a.errs[i])
				}
			}
			// Sharing only the placeholder, the two are one group: one
			// transaction recorded both.
			var txs int
			if err := f.pool.QueryRow(ctx, `SELECT count(DISTINCT xmin::text) FROM ingested_events WHERE event_id LIKE 'g-placeholder-%'`).Scan(&txs); err != nil {
				t.Fatal(err)
			}
			if txs != 1 {
				t.Fatalf("the two events were recorded by %d transactions; want one group", txs)
			}
			return
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(10 * time.Millisecond): // the poll's interval
		}
		waiting, err := lockWaiters(ctx, f.pool)
		if err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			t.Fatal("the group waits for the placeholder's lock, which another transaction holds")
		}
	}
}
