package tags_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/tags"
)

// testCatalog is small and fixed, so these tests do not move with the
// shipped catalogue (which TestCatalogExamples covers).
const testCatalog = `
version: test-1
timezone: Asia/Shanghai
filters:
  - id: coffee
    description: coffee in the basket
    expr: "'coffee' in p.categories"
labels:
  - id: active_30d
    name_en: Active buyer
    name_zh: 近30天活跃
    group: lifecycle
    description: At least one purchase in the last 30 days.
    type: bool
    kind: window
    expr: orders_30d > 0
    examples:
      - given: {orders_30d: 1}
        expect: true
  - id: spend_30d_value
    name_en: Spend 30d
    name_zh: 近30天消费
    group: value
    description: Net spend in the last 30 days.
    type: number
    kind: window
    expr: spend_30d
    examples:
      - given: {spend_30d: 12.5}
        expect: 12.5
  - id: coffee_lover
    name_en: Coffee lover
    name_zh: 咖啡爱好者
    group: affinity
    description: Coffee in at least half of the purchases with basket lines, 365 days.
    type: bool
    kind: rule
    expr: coffee_share_365d >= 0.5
    examples:
      - given: {coffee_share_365d: 0.5}
        expect: true
      - given: {}
        expect: null
  - id: checkin_fan
    name_en: Check-in fan
    name_zh: 签到达人
    group: engagement
    description: Three check-ins in 7 days.
    type: bool
    kind: window
    expr: checkins_7d >= 3
    examples:
      - given: {checkins_7d: 3}
        expect: true
  - id: age_band
    name_en: Age band
    name_zh: 年龄段
    group: demographics
    description: Age band from birth date.
    type: enum
    values: [under_25, "25_39", 40_plus]
    kind: attribute
    expr: 'age < 25 ? "under_25" : age < 40 ? "25_39" : "40_plus"'
    examples:
      - given: {age: 30}
        expect: "25_39"
      - given: {}
        expect: null
`

type fixture struct {
	pool  *pgxpool.Pool
	svc   *tags.Service
	clock *time.Time
}

var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC) // a Monday

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureLogged(t, slog.DiscardHandler)
}

// newFixtureLogged is newFixture with the service logging to h.
func newFixtureLogged(t testing.TB, h slog.Handler) *fixture {
	t.Helper()
	pool := pgtest.NewPool(t, nil)
	svc := tags.New(pool, changes.Writer{}, slog.New(h))
	c, err := tags.ParseCatalog([]byte(testCatalog))
	if err != nil {
		t.Fatal(err)
	}
	svc.UseCatalog(c)
	now := t0
	f := &fixture{pool: pool, svc: svc, clock: &now}
	svc.SetClock(func() time.Time { return *f.clock })
	return f
}

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// begin opens a test: its fixture and the context of its calls.
func begin(t *testing.T) (*fixture, context.Context) { return newFixture(t), ctxT(t) }

func (f *fixture) member(t testing.TB) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	// Tests that terminate the database's sessions may hand this insert an
	// idle connection the server already ended: it is tried again, as the
	// platform's own writes are.
	var err error
	for range 3 {
		if err = postgres.InsertMember(context.Background(), f.pool, id, *f.clock); err == nil || fault.Classify(err) != fault.Transient {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func purchase(id string, member uuid.UUID, at time.Time, amount int64, cats ...string) *mcv1.MemberEvent {
	txn := &mcv1.Transaction{OrderId: "O-" + id, Total: &mcv1.Money{Currency: "CNY", AmountMinor: amount}}
	for _, c := range cats {
		txn.Items = append(txn.Items, &mcv1.LineItem{Sku: c + "-1", Category: c, Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount / int64(len(cats))}})
	}
	return &mcv1.MemberEvent{EventId: id, MemberId: member.String(), Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-1",
		OccurredAt: timestamppb.New(at), Payload: &mcv1.MemberEvent_Transaction{Transaction: txn}}
}

// apply applies ev, failing the test when it is refused.
func (f *fixture) apply(t *testing.T, c context.Context, ev *mcv1.MemberEvent) {
	t.Helper()
	if err := f.svc.Apply(c, ev); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) labels(t *testing.T, m uuid.UUID) map[string]any {
	t.Helper()
	l, _, err := f.svc.Labels(context.Background(), f.pool, m)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// wantLabel reports an error unless member m's label id is want; when
// says after what.
func (f *fixture) wantLabel(t *testing.T, m uuid.UUID, id string, want any, when string) {
	t.Helper()
	if got := f.labels(t, m)[id]; got != want {
		t.Errorf("%s = %v %s; want %v", id, got, when, want)
	}
}

// labelChanges returns the LabelsChanged changes in the member's outbox.
func (f *fixture) labelChanges(t *testing.T, m uuid.UUID) []*mcv1.LabelsChanged {
	t.Helper()
	payloads := pgtest.Values[[]byte](t, context.Background(), f.pool, `SELECT payload FROM outbox WHERE member_id = $1 ORDER BY sequence`, m)
	var out []*mcv1.LabelsChanged
	for _, p := range payloads {
		ch := &mcv1.MemberChange{}
		if err := proto.Unmarshal(p, ch); err != nil {
			t.Fatal(err)
		}
		if lc := ch.GetLabelsChanged(); lc != nil {
			out = append(out, lc)
		}
	}
	return out
}

func TestApplyComputesLabelsOnceAndWritesTheChange(t *testing.T) {
	f, c := begin(t)
	m := f.member(t)
	ev := purchase("e1", m, t0.Add(-time.Hour), 3000, "coffee", "bakery")
	f.apply(t, c, ev)
	got := f.labels(t, m)
	if got["active_30d"] != true || got["spend_30d_value"] != 30.0 || got["coffee_lover"] != true {
		t.Errorf("labels after a coffee purchase: %v", got)
	}
	if _, ok := got["age_band"]; ok {
		t.Errorf("age_band set without a birth date: %v", got["age_band"])
	}
	// Redelivery changes nothing.
	f.apply(t, c, ev)
	f.wantLabel(t, m, "spend_30d_value", 30.0, "after a redelivery (counted twice?)")
	lc := f.labelChanges(t, m)
	if len(lc) != 1 {
		t.Fatalf("%d label changes in the outbox, want 1", len(lc))
	}
	ids := ""
	for _, l := range lc[0].GetLabels() {
		ids += l.GetLabelId() + " "
	}
	if ids != "active_30d checkin_fan coffee_lover spend_30d_value " {
		t.Errorf("label change lists %q", ids)
	}
	// The profile export queue follows, and member_label_sets holds exactly the
	// labels that are true.
	var queued int
	var rows []string
	if err := f.pool.QueryRow(c, `SELECT (SELECT count(*) FROM profile_exports WHERE member_id = $1),
		coalesce((SELECT labels FROM member_label_sets WHERE member_id = $1), '{}')`, m).Scan(&queued, &rows); err != nil {
		t.Fatal(err)
	}
	var want []string
	for id, v := range got {
		if v == true {
			want = append(want, id)
		}
	}
	slices.Sort(want)
	if queued != 1 || !slices.Equal(rows, want) || !slices.Contains(rows, "coffee_lover") {
		t.Errorf("profile_exports %d, member_label_sets %v; want 1 and the true labels %v", queued, rows, want)
	}
}

// TestMissingFieldsAreAbsent: a purchase without basket lines says nothing
// about categories, so coffee_lover stays absent rather than false.
func TestMissingFieldsAreAbsent(t *testing.T) {
	f, c := begin(t)
	m := f.member(t)
	f.apply(t, c, purchase("e1", m, t0.Add(-time.Hour), 1000))
	got := f.labels(t, m)
	if _, ok := got["coffee_lover"]; ok {
		t.Errorf("coffee_lover = %v from a purchase without lines; want absent", got["coffee_lover"])
	}
	if got["active_30d"] != true {
		t.Errorf("active_30d = %v", got["active_30d"])
	}
	// A purchase with lines decides it; the one without does not dilute it.
	f.apply(t, c, purchase("e2", m, t0.Add(-30*time.Minute), 1000, "coffee"))
	f.wantLabel(t, m, "coffee_lover", true, "after a coffee basket")
}

// TestWindowExpiresOnTime: with no further event, the sweep clears
// active_30d exactly 30 days after the purchase, not before.
func TestWindowExpiresOnTime(t *testing.T) {
	f, c := begin(t)
	m := f.member(t)
	bought := t0.Add(-time.Hour)
	f.apply(t, c, purchase("e1", m, bought, 1000))
	var due time.Time
	if err := f.pool.QueryRow(c, `SELECT due_at FROM member_features WHERE member_id = $1`, m).Scan(&due); err != nil {
		t.Fatal(err)
	}
	if due.After(bought.Add(30 * 24 * time.Hour)) {
		t.Fatalf("due at %v, after the window ends at %v", due, bought.Add(30*24*time.Hour))
	}
	// Sweep day by day until just before the end: still active.
	for *f.clock = t0; f.clock.Before(bought.Add(30*24*time.Hour - time.Second)); *f.clock = f.clock.Add(24 * time.Hour) {
		if _, err := f.svc.Sweep(c, 100); err != nil {
			t.Fatal(err)
		}
	}
	*f.clock = bought.Add(30*24*time.Hour - time.Second)
	if _, err := f.svc.Sweep(c, 100); err != nil {
		t.Fatal(err)
	}
	if got := f.labels(t, m)["active_30d"]; got != true {
		t.Fatalf("active_30d = %v one second before the window ends", got)
	}
	*f.clock = bought.Add(30 * 24 * time.Hour)
	n, err := f.svc.Sweep(c, 100)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("sweep recomputed %d members at the window's end, want 1", n)
	}
	got := f.labels(t, m)
	if got["active_30d"] != false || got["spend_30d_value"] != 0.0 {
		t.Errorf("at the window's end: active_30d %v, spend %v; want false, 0", got["active_30d"], got["spend_30d_value"])
	}
	lc := f.labelChanges(t, m)
	if last := lc[len(lc)-1]; len(last.GetLabels()) != 2 {
		t.Errorf("the expiry's change lists %d labels: %v", len(last.GetLabels()), last)
	}
	// A label no longer true leaves member_label_sets.
	var rows int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM member_label_sets WHERE member_id = $1 AND 'active_30d' = ANY (labels)`, m).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Errorf("active_30d is false but still in member_label_sets")
	}
}

// TestCheckInRecomputesOnlyWhatItCanChange: a check-in re-evaluates the
// labels over check-ins; the others keep their stored value even if their
// inputs would say otherwise (shown by editing a stored label).
func TestCheckInRecomputesOnlyWhatItCanChange(t *testing.T) {
	f, c := begin(t)
	m := f.member(t)
	f.apply(t, c, purchase("e1", m, t0.Add(-time.Hour), 1000))
	dirty := f.svc.Catalog().Dirty(tags.KindCheckIn)
	if !dirty["checkin_fan"] || dirty["spend_30d_value"] || dirty["active_30d"] {
		t.Errorf("check-in dirty set %v", dirty)
	}
	for i := range 3 {
		ev := &mcv1.MemberEvent{EventId: fmt.Sprintf("ci%d", i), MemberId: m.String(), Channel: mcv1.Channel_CHANNEL_APP,
			OccurredAt: timestamppb.New(t0.Add(time.Duration(i-3) * time.Minute)), Payload: &mcv1.MemberEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}}
		f.apply(t, c, ev)
	}
	f.wantLabel(t, m, "checkin_fan", true, "after three check-ins")
}

// TestConsentWithdrawalWithholdsBehaviouralLabels: profiling consent
// withdrawn → only demographic labels remain; granted again → back.
func TestConsentWithdrawalWithholdsBehaviouralLabels(t *testing.T) {
	f, c := begin(t)
	m := f.member(t)
	if _, err := f.pool.Exec(c, `UPDATE members SET attributes = '{"birth_date": "1990-05-01"}' WHERE member_id = $1`, m); err != nil {
		t.Fatal(err)
	}
	f.apply(t, c, purchase("e1", m, t0.Add(-time.Hour), 1000))
	set := func(granted bool) {
		t.Helper()
		err := pgx.BeginFunc(c, f.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(c, `INSERT INTO member_consents (member_id, purpose, granted, decided_at, cause) VALUES ($1, 2, $2, now(), 'test')
				ON CONFLICT (member_id, purpose) DO UPDATE SET granted = EXCLUDED.granted`, m, granted); err != nil {
				return err
			}
			return f.svc.Recompute(c, tx, m, "test", mcv1.Channel_CHANNEL_APP)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	set(false)
	got := f.labels(t, m)
	if len(got) != 1 || got["age_band"] != "25_39" {
		t.Errorf("labels with profiling withdrawn: %v; want only age_band", got)
	}
	// Events keep counting while withdrawn; labels come back when granted.
	f.apply(t, c, purchase("e2", m, t0.Add(-time.Minute), 500))
	if got := f.labels(t, m); len(got) != 1 {
		t.Errorf("a purchase while withdrawn set labels: %v", got)
	}
	set(true)
	if got := f.labels(t, m); got["spend_30d_value"] != 15.0 || got["active_30d"] != true {
		t.Errorf("labels after consent granted again: %v", got)
	}
}

// TestBadCatalogueIsRefusedAndTheRunningOneStays: loading a catalogue that
// fails validation stores nothing; a stored one that no longer validates is
// skipped by Reload, and the running catalogue stays in force.
func TestBadCatalogueIsRefusedAndTheRunningOneStays(t *testing.T) {
	f, c := begin(t)
	bad := strings.Replace(testCatalog, "expr: orders_30d > 0", "expr: orderz_30d > 0", 1)
	bad = strings.Replace(bad, "version: test-1", "version: test-2", 1)
	_, err := tags.LoadCatalog(c, f.pool, []byte(bad))
	if err == nil || !strings.Contains(err.Error(), "label active_30d") || !strings.Contains(err.Error(), "orderz_30d") {
		t.Fatalf("load of a bad catalogue: %v; want an error naming active_30d and orderz_30d", err)
	}
	var n int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM label_catalogs`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d catalogues stored (%v), want 0", n, err)
	}
	// A good new version is picked up by Reload.
	good := strings.Replace(testCatalog, "version: test-1", "version: test-3", 1)
	if _, err := tags.LoadCatalog(c, f.pool, []byte(good)); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Reload(c); err != nil || f.svc.Catalog().Version != "test-3" {
		t.Fatalf("reload: %v, version %s", err, f.svc.Catalog().Version)
	}
	// One stored behind the loader's back that does not validate is refused.
	if _, err := f.pool.Exec(c, `INSERT INTO label_catalogs (version, source) VALUES ('test-2', $1)`, bad); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Reload(c); err == nil || !strings.Contains(err.Error(), "keeping test-3") {
		t.Errorf("reload of a bad stored catalogue: %v", err)
	}
	if v := f.svc.Catalog().Version; v != "test-3" {
		t.Errorf("catalogue in force %s, want test-3", v)
	}
	// Loading the same version twice is refused.
	if _, err := tags.LoadCatalog(c, f.pool, []byte(good)); err == nil || !strings.Contains(err.Error(), "loaded before") {
		t.Errorf("second load of test-3: %v", err)
	}
}

// A batch of a partition's events gives each member the labels the same
// events give one at a time, with one label change per member, skips what
// was applied before (and a redelivery inside the batch), and refuses only
// the events it cannot apply.
func TestApplyBatchEqualsOneAtATime(t *testing.T) {
	batched, single := newFixture(t), newFixture(t)
	c := ctxT(t)
	type who struct{ b, s uuid.UUID }
	members := []who{{batched.member(t), single.member(t)}, {batched.member(t), single.member(t)}}
	events := func(m func(who) uuid.UUID) []*mcv1.MemberEvent {
		a, b := members[0], members[1]
		signUp := &mcv1.MemberEvent{EventId: "s1", MemberId: m(a).String(), Channel: mcv1.Channel_CHANNEL_APP, OccurredAt: timestamppb.New(t0.Add(-5 * time.Hour)),
			Payload: &mcv1.MemberEvent_SignUp{SignUp: &mcv1.SignUp{BirthDate: timestamppb.New(time.Date(1995, 5, 1, 0, 0, 0, 0, time.UTC))}}}
		return []*mcv1.MemberEvent{
			signUp,
			purchase("p1", m(a), t0.Add(-4*time.Hour), 2000, "coffee"),
			purchase("p2", m(b), t0.Add(-3*time.Hour), 5000, "bakery"),
			purchase("p3", m(a), t0.Add(-2*time.Hour), 1000, "coffee", "bakery"),
		}
	}
	for _, ev := range events(func(w who) uuid.UUID { return w.s }) {
		if err := single.svc.Apply(c, ev); err != nil {
			t.Fatal(err)
		}
	}
	// The first purchase was applied before the batch; the batch carries it
	// again, a redelivery of p2 inside it, and an event without a payload.
	evs := events(func(w who) uuid.UUID { return w.b })
	if err := batched.svc.Apply(c, evs[1]); err != nil {
		t.Fatal(err)
	}
	before := len(batched.labelChanges(t, members[0].b))
	bad := &mcv1.MemberEvent{EventId: "bad", MemberId: members[1].b.String(), OccurredAt: timestamppb.New(t0)}
	rejected, err := batched.svc.ApplyBatch(c, append(evs, evs[2], bad))
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || rejected[len(evs)+1] == nil {
		t.Fatalf("rejected = %v, want the event without a payload only", rejected)
	}
	for _, w := range members {
		if got, want := batched.labels(t, w.b), single.labels(t, w.s); !maps.EqualFunc(got, want, func(x, y any) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) {
			t.Errorf("batched labels %v, one at a time %v", got, want)
		}
	}
	if n := len(batched.labelChanges(t, members[0].b)) - before; n != 1 {
		t.Errorf("%d label changes for the batch of the first member, want 1", n)
	}
	var processed int
	if err := batched.pool.QueryRow(c, `SELECT count(*) FROM processed_events WHERE consumer = 'tags'`).Scan(&processed); err != nil {
		t.Fatal(err)
	}
	if processed != 4 {
		t.Errorf("%d events processed, want the 4 distinct ones", processed)
	}
	// The sign-up's birth date became the member's attribute.
	var bd string
	if err := batched.pool.QueryRow(c, `SELECT attributes->>'birth_date' FROM members WHERE member_id = $1`, members[0].b).Scan(&bd); err != nil || bd != "1995-05-01" {
		t.Errorf("birth_date attribute = %q, %v", bd, err)
	}
}

// The label sweep takes a member's locks in the order the tag worker does
// (the members' rows in id order, then their features), so neither ever
// waits for the other in a cycle. A cycle would lose nothing (PostgreSQL
// breaks it after deadlock_timeout and the loser retries) but stalls both
// for a second each time: in the bench's drains the sweep, which locked the
// due members' features first, broke a dozen such cycles a minute.
//
// Here a worker's batch holds the members' rows while the sweep starts on
// the same, due, members; then the batch takes their features, as the
// worker does next, and commits. PostgreSQL must count no deadlock.
func TestSweepLocksMembersBeforeFeatures(t *testing.T) {
	f, c := begin(t)
	var dbName string
	if err := f.pool.QueryRow(c, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	// Purchases made 30 days less 30 seconds ago: their 30-day windows
	// end, and the members are due for the sweep, a minute later.
	members := make([]uuid.UUID, 20)
	evs := make([]*mcv1.MemberEvent, len(members))
	for i := range members {
		members[i] = f.member(t)
		evs[i] = purchase(fmt.Sprintf("e%d", i), members[i], t0.Add(-30*24*time.Hour+30*time.Second), 1000)
	}
	if refused, err := f.svc.ApplyBatch(c, evs); err != nil || len(refused) > 0 {
		t.Fatalf("refused %v, err %v", refused, err)
	}
	*f.clock = t0.Add(time.Minute)

	batch, err := f.pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	defer batch.Rollback(c)
	if _, err := postgres.LockMembersForUpdate(c, batch, members); err != nil {
		t.Fatal(err)
	}
	type result struct {
		n   int
		err error
	}
	swept := make(chan result, 1)
	go func() {
		n, err := f.svc.Sweep(c, 500)
		swept <- result{n, err}
	}()
	admin, err := pgx.Connect(c, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(c)
	pgtest.Eventually(t, "the sweep to wait for the batch's members", func() (bool, error) {
		var waiting int
		err := admin.QueryRow(c, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'`, dbName).Scan(&waiting)
		return waiting > 0, err
	})
	if _, err := postgres.LoadFeaturesBatch(c, batch, members, nil, nil); err != nil {
		t.Fatalf("the batch's features: %v", err)
	}
	if err := batch.Commit(c); err != nil {
		t.Fatal(err)
	}
	r := <-swept
	if r.err != nil || r.n != len(members) {
		t.Fatalf("sweep: %d members, err %v; want %d", r.n, r.err, len(members))
	}

	// A backend reports its statistics when it exits: close the pool's
	// sessions (Reset leaves the pool usable for the checks at the end),
	// wait for them to end, then read the database's count.
	f.pool.Reset()
	pgtest.Eventually(t, "the test's sessions to end", func() (bool, error) {
		var sessions int
		err := admin.QueryRow(c, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1`, dbName).Scan(&sessions)
		return sessions == 0, err
	})
	var deadlocks int64
	if err := admin.QueryRow(c, `SELECT deadlocks FROM pg_stat_database WHERE datname = $1`, dbName).Scan(&deadlocks); err != nil {
		t.Fatal(err)
	}
	if deadlocks != 0 {
		t.Errorf("PostgreSQL broke %d deadlocks between the worker's batch and the sweep", deadlocks)
	}
}
