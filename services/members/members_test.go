package members_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/benefits/benefitstest"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/members"
	"github.com/membercenter/membercenter/services/tags"
)

// A Wednesday at noon in Shanghai: no month start, no birthday.
var noon = time.Date(2026, 3, 11, 4, 0, 0, 0, time.UTC)

type fixture struct {
	pool  *pgxpool.Pool
	tags  *tags.Service
	bens  *benefits.Service
	a     members.Applier
	clock time.Time
	seq   int
}

// begin wires the two stages as services/platform does, under the default
// programme with the benefits that follow labels (sharer_perk needs the
// sharer label, buyer_perk bought_365d).
func begin(t *testing.T) (*fixture, context.Context) {
	t.Helper()
	return beginTraced(t, nil)
}

// beginTraced is begin with the pool's statements traced by tp.
func beginTraced(t *testing.T, tp trace.TracerProvider) (*fixture, context.Context) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // generous: the machine may be busy
	t.Cleanup(cancel)
	f := &fixture{pool: pgtest.NewPool(t, tp), clock: noon}
	now := func() time.Time { return f.clock }
	log := slog.New(slog.DiscardHandler)
	f.bens = benefits.New(f.pool, changes.Writer{}, log)
	f.bens.SetClock(now)
	src, err := benefitstest.LabelProgramme(benefits.DefaultProgramSource())
	if err != nil {
		t.Fatal(err)
	}
	f.useProgram(t, c, src)
	f.tags = tags.New(f.pool, changes.Writer{}, log)
	f.tags.SetClock(now)
	f.tags.SetBenefitLabels(f.bens.DependsOnLabel)
	f.a = members.Applier{Tags: f.tags, Benefits: f.bens}
	return f, c
}

// useProgram puts the programme src in force.
func (f *fixture) useProgram(t *testing.T, c context.Context, src []byte) {
	t.Helper()
	if _, err := benefits.LoadProgram(c, f.pool, src); err != nil {
		t.Fatal(err)
	}
	if err := f.bens.Reload(c); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) member(t *testing.T, c context.Context) string {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(c, f.pool, id, f.clock); err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// event is a member event a minute after the previous one; the clock
// moves to it, as it does in a platform that keeps up with its channels.
func (f *fixture) event(member string) *mcv1.MemberEvent {
	f.seq++
	f.clock = noon.Add(time.Duration(f.seq) * time.Minute)
	return &mcv1.MemberEvent{EventId: fmt.Sprintf("ev-%d", f.seq), MemberId: member,
		OccurredAt: timestamppb.New(f.clock), Channel: mcv1.Channel_CHANNEL_APP, StoreId: "s1"}
}

func (f *fixture) share(member string) *mcv1.MemberEvent {
	ev := f.event(member)
	ev.Payload = &mcv1.MemberEvent_Share{Share: &mcv1.Share{ContentId: "post", Target: "wechat"}}
	return ev
}

func (f *fixture) purchase(member string, total int64) *mcv1.MemberEvent {
	ev := f.event(member)
	ev.Payload = &mcv1.MemberEvent_Transaction{Transaction: &mcv1.Transaction{
		OrderId: "ord-" + ev.GetEventId(), Total: &mcv1.Money{Currency: "CNY", AmountMinor: total},
		Items: []*mcv1.LineItem{{Sku: "latte", Category: "coffee", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: total}}},
	}}
	return ev
}

// state is what the two stages have made of a member: its benefits, its
// true labels, its balance, and the events each stage recorded.
type state struct {
	benefits, labels          []string
	balance                   int64
	byBenefits, byTags, queue int
}

func (f *fixture) state(t *testing.T, c context.Context, member string) state {
	t.Helper()
	var s state
	err := f.pool.QueryRow(c, `SELECT
		coalesce((SELECT array_agg(benefit_id ORDER BY benefit_id) FROM benefit_grants WHERE member_id = $1), '{}'),
		coalesce((SELECT labels FROM member_label_sets WHERE member_id = $1), '{}'),
		coalesce((SELECT sum(remaining) FROM point_lots WHERE member_id = $1), 0),
		(SELECT count(*) FROM benefit_label_checks WHERE member_id = $1)`, member).Scan(&s.benefits, &s.labels, &s.balance, &s.queue)
	if err != nil {
		t.Fatal(err)
	}
	err = f.pool.QueryRow(c, `SELECT count(*) FILTER (WHERE consumer = $1), count(*) FILTER (WHERE consumer = $2)
		FROM processed_events WHERE event_id LIKE 'ev-%'`, benefits.Stage, tags.Stage).Scan(&s.byBenefits, &s.byTags)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixture) outbox(t *testing.T, c context.Context) int {
	t.Helper()
	return pgtest.Values[int](t, c, f.pool, `SELECT count(*) FROM outbox`)[0]
}

// TestBenefitsFollowLabelsInTheBatch: three shares make a member a
// sharer, and the benefit that follows the label is granted in the same
// transaction though the programme ignores shares, with nothing left
// queued for the label checks; a first purchase grants the benefit that
// follows bought_365d with it, and earns its points once.
func TestBenefitsFollowLabelsInTheBatch(t *testing.T) {
	f, c := begin(t)
	m, sharer := f.member(t, c), f.member(t, c)
	batch := []*mcv1.MemberEvent{f.share(m), f.share(sharer), f.share(m), f.share(sharer), f.share(m), f.share(sharer), f.purchase(m, 10000)}
	rejected, err := f.a.ApplyBatch(c, batch)
	if err != nil || len(rejected) != 0 {
		t.Fatalf("ApplyBatch: %v, rejected %v", err, rejected)
	}
	if s := f.state(t, c, sharer); !slices.Equal(s.benefits, []string{"sharer_perk"}) || s.queue != 0 {
		t.Errorf("a member with three shares only: benefits %v, %d label checks queued; want sharer_perk, none", s.benefits, s.queue)
	}
	s := f.state(t, c, m)
	for _, l := range []string{"sharer", "bought_365d"} {
		if !slices.Contains(s.labels, l) {
			t.Errorf("label %s not set: %v", l, s.labels)
		}
	}
	for _, b := range []string{"sharer_perk", "buyer_perk"} {
		if !slices.Contains(s.benefits, b) {
			t.Errorf("benefit %s not granted with its label: %v", b, s.benefits)
		}
	}
	if s.queue != 0 {
		t.Errorf("%d label checks left queued: the batch's transaction should have taken them", s.queue)
	}
	if s.balance <= 0 {
		t.Errorf("balance %d after a purchase", s.balance)
	}
	if s.byTags != 7 || s.byBenefits != 1 {
		t.Errorf("processed: %d by tags (want 7), %d by benefits (want 1: the programme ignores shares)", s.byTags, s.byBenefits)
	}

	// The batch again, as after a crash before the offsets were committed:
	// nothing changes.
	before := f.outbox(t, c)
	if rejected, err := f.a.ApplyBatch(c, batch); err != nil || len(rejected) != 0 {
		t.Fatalf("ApplyBatch again: %v, rejected %v", err, rejected)
	}
	if again := f.state(t, c, m); !sameState(again, s) || f.outbox(t, c) != before {
		t.Errorf("a redelivered batch changed something: %+v, outbox %d; was %+v, outbox %d", again, f.outbox(t, c), s, before)
	}
}

func sameState(a, b state) bool {
	return slices.Equal(a.benefits, b.benefits) && slices.Equal(a.labels, b.labels) && a.balance == b.balance &&
		a.byBenefits == b.byBenefits && a.byTags == b.byTags && a.queue == b.queue
}

// TestRefusedEventIsRefusedOnceAndHoldsUpNoOther: an event both stages
// refuse is refused once, as a data error naming its fault, and the
// batch's other events are applied by both stages; an event for a member
// that does not exist is refused alone.
func TestRefusedEventIsRefusedOnceAndHoldsUpNoOther(t *testing.T) {
	f, c := begin(t)
	m := f.member(t, c)
	bad := f.purchase(m, 5000)
	bad.Resolution = &mcv1.Resolution{OriginMemberId: "not-a-uuid"}
	ghost := f.purchase(uuid.Must(uuid.NewV7()).String(), 5000)
	good := f.purchase(m, 8000)
	rejected, err := f.a.ApplyBatch(c, []*mcv1.MemberEvent{bad, ghost, good})
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 2 || rejected[0] == nil || rejected[1] == nil {
		t.Fatalf("rejected %v, want events 0 and 1", rejected)
	}
	for i, want := range map[int]string{0: "origin_member_id", 1: "not found"} {
		if !fault.IsData(rejected[i]) || !strings.Contains(rejected[i].Error(), want) {
			t.Errorf("event %d: %v (data error: %v); want a data error naming %q", i, rejected[i], fault.IsData(rejected[i]), want)
		}
	}
	processed := pgtest.Values[string](t, c, f.pool, `SELECT consumer || ' ' || event_id FROM processed_events WHERE event_id = ANY($1) ORDER BY 1`,
		[]string{bad.GetEventId(), good.GetEventId()})
	if want := []string{"benefits " + good.GetEventId(), "tags " + good.GetEventId()}; !slices.Equal(processed, want) {
		t.Errorf("processed %v, want %v: the good event once by each stage, the refused one by none", processed, want)
	}
	s := f.state(t, c, m)
	if s.balance <= 0 || !slices.Contains(s.labels, "bought_365d") {
		t.Errorf("the good event was not applied: balance %d, labels %v", s.balance, s.labels)
	}
}

// TestSharesTheStreamWithAStageAlone: events a stage applied alone (a
// process that runs only the tag stage) are not applied again by the
// combined worker, which still applies them for the other stage, and
// follows the labels they changed.
func TestSharesTheStreamWithAStageAlone(t *testing.T) {
	f, c := begin(t)
	m := f.member(t, c)
	batch := []*mcv1.MemberEvent{f.purchase(m, 10000), f.share(m), f.share(m), f.share(m)}
	if rejected, err := f.tags.ApplyBatch(c, batch[:2]); err != nil || len(rejected) != 0 {
		t.Fatalf("tags alone: %v, rejected %v", err, rejected)
	}
	alone := f.state(t, c, m)
	if rejected, err := f.a.ApplyBatch(c, batch); err != nil || len(rejected) != 0 {
		t.Fatalf("ApplyBatch: %v, rejected %v", err, rejected)
	}
	s := f.state(t, c, m)
	if alone.byTags != 2 || s.byTags != 4 || s.byBenefits != 1 {
		t.Errorf("processed by tags %d then %d (want 2, 4), by benefits %d (want 1)", alone.byTags, s.byTags, s.byBenefits)
	}
	if !slices.Contains(s.benefits, "sharer_perk") || !slices.Contains(s.benefits, "buyer_perk") || s.queue != 0 {
		t.Errorf("benefits %v, %d queued; want sharer_perk and buyer_perk, none queued", s.benefits, s.queue)
	}
}

// limitedCoupon is the label programme with P10 limited to one coupon in
// all, and given by the big-basket campaign as well as by sharer_perk.
func limitedCoupon(t *testing.T) []byte {
	t.Helper()
	src, err := benefitstest.LabelProgramme(benefits.DefaultProgramSource())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]string{
		{"total_limit: 100000", "total_limit: 1"},
		{"    bonus: 10\n    coupon: C10\n", "    bonus: 10\n    coupon: P10\n"},
		{"version: default-1+labels", "version: limited-p10-1"},
	} {
		if !bytes.Contains(src, []byte(r[0])) {
			t.Fatalf("the default programme has no %q", r[0])
		}
		src = bytes.Replace(src, []byte(r[0]), []byte(r[1]), 1)
	}
	return src
}

// TestALimitTakenByTheBatchCountsForItsLabelChecks: a purchase takes the
// last coupon of a limited template in the benefit stage's part of the
// batch, and a member whose new label earns a benefit giving the same
// coupon is checked later in the same transaction: the check sees the
// coupon taken (though the shared count is written only at the end), so
// the batch applies, with the one coupon held by the buyer.
func TestALimitTakenByTheBatchCountsForItsLabelChecks(t *testing.T) {
	f, c := begin(t)
	f.useProgram(t, c, limitedCoupon(t))
	buyer, sharer := f.member(t, c), f.member(t, c)
	batch := []*mcv1.MemberEvent{f.share(sharer), f.share(sharer), f.share(sharer), f.purchase(buyer, 60000)}
	if rejected, err := f.a.ApplyBatch(c, batch); err != nil || len(rejected) != 0 {
		t.Fatalf("ApplyBatch: %v, rejected %v", err, rejected)
	}
	if s := f.state(t, c, sharer); !slices.Contains(s.benefits, "sharer_perk") {
		t.Errorf("the sharer's benefits %v: want sharer_perk, granted with its label", s.benefits)
	}
	holders := pgtest.Values[string](t, c, f.pool, `SELECT member_id::text FROM coupons WHERE template_id = 'P10'`)
	issued := pgtest.Values[int](t, c, f.pool, `SELECT coalesce(sum(issued), 0)::int FROM coupon_template_counts WHERE template_id = 'P10'`)
	if !slices.Equal(holders, []string{buyer}) || issued[0] != 1 {
		t.Errorf("P10 held by %v, counted %d issued; want by the buyer %s alone, 1", holders, issued[0], buyer)
	}
}

// statements applies batch through the member stage and returns the SQL
// of the statements it ran (traced by tp into rec), in order, blanks
// folded.
func (f *fixture) statements(t *testing.T, c context.Context, tp trace.TracerProvider, rec *tracetest.SpanRecorder, batch []*mcv1.MemberEvent) []string {
	t.Helper()
	ctx, span := tp.Tracer("test").Start(c, "batch")
	rejected, err := f.a.ApplyBatch(ctx, batch)
	span.End()
	if err != nil || len(rejected) != 0 {
		t.Fatalf("ApplyBatch: %v, rejected %v", err, rejected)
	}
	// A statement is a span of its own, or an event of its batch's span
	// (which ends after them; a failed statement's own span would end
	// before, but ApplyBatch succeeded).
	var sqls []string
	add := func(attrs []attribute.KeyValue) {
		for _, a := range attrs {
			if a.Key == semconv.DBQueryTextKey {
				sqls = append(sqls, strings.Join(strings.Fields(a.Value.AsString()), " "))
			}
		}
	}
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID() != span.SpanContext().TraceID() {
			continue
		}
		for _, e := range s.Events() {
			add(e.Attributes)
		}
		add(s.Attributes())
	}
	return sqls
}

// TestSharedCountsAreWrittenLast: the rows of the limits members share
// (here a coupon template's total, taken by a purchase and by a label
// check) are written by the batch's last statement before the commit, so
// the other partitions' batches wait for them only through a commit.
func TestSharedCountsAreWrittenLast(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	f, c := beginTraced(t, tp)
	f.useProgram(t, c, bytes.Replace(limitedCoupon(t), []byte("total_limit: 1"), []byte("total_limit: 10"), 1))
	buyer, sharer := f.member(t, c), f.member(t, c)
	sqls := f.statements(t, c, tp, rec, []*mcv1.MemberEvent{f.share(sharer), f.share(sharer), f.share(sharer), f.purchase(buyer, 60000)})
	last := slices.IndexFunc(sqls, func(q string) bool {
		return strings.Contains(q, "coupon_template_counts") && strings.HasPrefix(q, "INSERT")
	})
	if last < 0 || len(sqls) < 2 {
		t.Fatalf("no write of coupon_template_counts among the batch's %d statements", len(sqls))
	}
	if rest := append(sqls[last+1:], ""); len(rest) != 2 || !strings.EqualFold(rest[0], "commit") {
		t.Errorf("%d statements came after the shared count's write, the first %.70q; want the commit alone", len(rest)-1, rest[0])
	}
	if n := pgtest.Values[int](t, c, f.pool, `SELECT issued FROM coupon_template_counts WHERE template_id = 'P10'`); n[0] != 2 {
		t.Errorf("P10 counted %d issued; want 2 (the buyer's and the sharer's)", n[0])
	}
}

// TestTheBatchsChangesAreWrittenTogether: the tag phase's label changes,
// the benefit phase's point changes and the label checks' grants of a
// batch go to the outbox in one insert, with one move of the members'
// sequences, each member's changes numbered on from the last, in the
// order of the outbox; a second batch goes on from there.
func TestTheBatchsChangesAreWrittenTogether(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	f, c := beginTraced(t, tp)
	buyer, sharer := f.member(t, c), f.member(t, c)
	statements := func(batch []*mcv1.MemberEvent) []string { return f.statements(t, c, tp, rec, batch) }
	count := func(sqls []string, prefix string) int {
		n := 0
		for _, q := range sqls {
			if strings.HasPrefix(q, prefix) {
				n++
			}
		}
		return n
	}
	// Each member's sequences in outbox order; they must run 1, 2, 3...
	// and end at the member's change_seq.
	check := func(when string, atLeast int) {
		t.Helper()
		for _, m := range []string{buyer, sharer} {
			seqs := pgtest.Values[int64](t, c, f.pool, `SELECT sequence FROM outbox WHERE member_id = $1 ORDER BY outbox_id`, m)
			last := pgtest.Values[int64](t, c, f.pool, `SELECT change_seq FROM members WHERE member_id = $1`, m)[0]
			if len(seqs) < atLeast || last != int64(len(seqs)) {
				t.Errorf("%s: member %s has %d changes, change_seq %d; want at least %d, and change_seq their number", when, m, len(seqs), last, atLeast)
			}
			for i, s := range seqs {
				if s != int64(i+1) {
					t.Errorf("%s: member %s's changes in outbox order are numbered %v", when, m, seqs)
					break
				}
			}
		}
	}

	first := statements([]*mcv1.MemberEvent{f.share(sharer), f.share(sharer), f.share(sharer), f.purchase(buyer, 60000)})
	if s := f.state(t, c, sharer); !slices.Contains(s.benefits, "sharer_perk") {
		t.Fatalf("the sharer's benefits %v: want sharer_perk, granted by the label check of the batch", s.benefits)
	}
	if n, u := count(first, "INSERT INTO outbox"), count(first, "UPDATE members m SET change_seq"); n != 1 || u != 1 {
		t.Errorf("the batch wrote the outbox with %d inserts and moved sequences with %d updates; want one of each", n, u)
	}
	check("after the first batch", 2) // the labels' change and a benefit's, each

	second := statements([]*mcv1.MemberEvent{f.purchase(buyer, 3000), f.share(sharer), f.purchase(sharer, 5000)})
	if n := count(second, "INSERT INTO outbox"); n != 1 {
		t.Errorf("the second batch wrote the outbox with %d inserts; want one", n)
	}
	check("after the second batch", 3)
}
