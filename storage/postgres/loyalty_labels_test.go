package postgres_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestLoyaltyLoadReadsTheLabelsAskedFor: a load reads every true label of
// the member by default, only the named ones that are true when it names
// some, and none when it names none; alone and in a batch, where a load
// that asks for every label makes the batch read every one. A write of a
// member's labels replaces its whole set (member_label_sets).
func TestLoyaltyLoadReadsTheLabelsAskedFor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	a, b := newMember(t, pool), newMember(t, pool)
	c := newMember(t, pool)
	// Each write replaces the member's whole set: lapsed and gone stop
	// being true, and c has no true label left.
	for _, sets := range [][]postgres.LabelMembership{
		{{Member: a, Labels: []string{"lapsed", "sharer"}}, {Member: b, Labels: []string{"gone", "vip"}}, {Member: c, Labels: []string{"vip"}}},
		{{Member: a, Labels: []string{"vip", "sharer", "coffee_lover"}}, {Member: b, Labels: []string{"vip"}}, {Member: c}},
	} {
		batch := &pgx.Batch{}
		postgres.QueueLabelMembershipBatch(batch, sets, memberCreatedAt)
		if err := pool.SendBatch(ctx, batch).Close(); err != nil {
			t.Fatal(err)
		}
	}
	if one, err := postgres.LoadLoyalty(ctx, pool, postgres.LoyaltyLoad{Member: c}); err != nil || !one.Found || len(one.Labels) != 0 {
		t.Errorf("LoadLoyalty of a member whose labels stopped being true: %v, %+v", err, one)
	}
	// A member never given a set has none; one given twice in a batch gets
	// the union, each label once.
	d, e := newMember(t, pool), newMember(t, pool)
	batch := &pgx.Batch{}
	postgres.QueueLabelMembershipBatch(batch, []postgres.LabelMembership{
		{Member: e, Labels: []string{"vip"}}, {Member: e, Labels: []string{"vip", "sharer"}}}, memberCreatedAt)
	if err := pool.SendBatch(ctx, batch).Close(); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[uuid.UUID][]string{d: nil, e: {"sharer", "vip"}} {
		if one, err := postgres.LoadLoyalty(ctx, pool, postgres.LoyaltyLoad{Member: m}); err != nil || !one.Found || !slices.Equal(nonNil(one.Labels), nonNil(want)) {
			t.Errorf("LoadLoyalty: %v, labels %q; want %q", err, one.Labels, want)
		}
	}
	cases := []struct {
		name  string
		read  postgres.LabelsRead
		wantA []string
		wantB []string
	}{
		{"every label (the zero value)", postgres.LabelsRead{}, []string{"coffee_lover", "sharer", "vip"}, []string{"vip"}},
		{"named ones", postgres.LabelsRead{Named: true, Only: []string{"vip", "sharer", "lapsed", "gone", "unknown"}}, []string{"sharer", "vip"}, []string{"vip"}},
		{"none", postgres.LabelsRead{Named: true}, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			one, err := postgres.LoadLoyalty(ctx, pool, postgres.LoyaltyLoad{Member: a, Labels: c.read})
			if err != nil {
				t.Fatal(err)
			}
			if !one.Found || !slices.Equal(nonNil(one.Labels), nonNil(c.wantA)) {
				t.Errorf("LoadLoyalty: found %v, labels %q; want %q", one.Found, one.Labels, c.wantA)
			}
			rows, err := postgres.LoadLoyaltyBatch(ctx, pool, []postgres.LoyaltyLoad{{Member: a, Labels: c.read}, {Member: b, Labels: c.read}})
			if err != nil {
				t.Fatal(err)
			}
			for id, want := range map[uuid.UUID][]string{a: c.wantA, b: c.wantB} {
				if got := rows[id]; got == nil || !got.Found || !slices.Equal(nonNil(got.Labels), nonNil(want)) {
					t.Errorf("LoadLoyaltyBatch: member %s labels %v; want %q", id, got, want)
				}
			}
		})
	}
	// A batch mixing a load that names labels with one that asks for every
	// one reads every one for both.
	rows, err := postgres.LoadLoyaltyBatch(ctx, pool, []postgres.LoyaltyLoad{{Member: a, Labels: postgres.LabelsRead{Named: true}}, {Member: b}})
	if err != nil {
		t.Fatal(err)
	}
	if got := rows[a].Labels; !slices.Equal(got, []string{"coffee_lover", "sharer", "vip"}) {
		t.Errorf("mixed batch: member a labels %q; want every true label", got)
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// TestMemberLoadIsPlannedOnce: the statements of one member's load (the
// Quote's, the Commit's) are planned once per connection and then run on
// their generic plan, whatever labels, periods and orders they name.
// PostgreSQL plans a statement with an array parameter (= ANY($2)) again at
// every call, which cost a Quote more than running its statements. The
// pool keeps PostgreSQL's default (plan_cache_mode=auto), as a URL may ask:
// the platform's own default, generic plans, would hide such a statement.
func TestMemberLoadIsPlannedOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := postgres.Open(ctx, postgres.Config{URL: pgtest.NewDB(t) + "&plan_cache_mode=auto", MaxConns: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	member := newMember(t, pool)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	at := memberCreatedAt.Add(time.Hour)
	load := postgres.LoyaltyLoad{Member: member, ActivityFrom: 300,
		Labels:  postgres.LabelsRead{Named: true, Only: []string{"vip", "sharer"}},
		Periods: []string{"d:20000", "m:600"}, Orders: []string{"order-1"},
		SettledAfter: at, AvailableFrom: at, SpendUpTo: 100}
	const loads = 12
	for range loads {
		if _, err := postgres.LoadLoyalty(ctx, conn, load); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := conn.Query(ctx, `SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements WHERE generic_plans + custom_plans >= $1`, loads)
	if err != nil {
		t.Fatal(err)
	}
	type prepared struct {
		sql             string
		generic, custom int64
	}
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (prepared, error) {
		var p prepared
		return p, r.Scan(&p.sql, &p.generic, &p.custom)
	})
	if err != nil {
		t.Fatal(err)
	}
	// The member's row, its lots (twice), activity, usage, coupons,
	// grants, the counters and the order.
	if len(ps) < 9 {
		t.Fatalf("%d statements ran %d times or more; want the load's 9 at least: %v", len(ps), loads, ps)
	}
	for _, p := range ps {
		// PostgreSQL tries custom plans for the first five calls.
		if p.custom > 5 {
			t.Errorf("planned at %d of %d calls: %s", p.custom, p.generic+p.custom, p.sql)
		}
	}
}

// TestLabelSetsMigration: migration 00039 turns member_labels' rows into
// one sorted set a member, of the labels stored as true (a member whose
// rows are all false has none), and its rollback gives back a row per true
// label.
func TestLabelSetsMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPoolUnchecked(t, nil)
	p := migrations(t, pool)
	if _, err := p.DownTo(ctx, 38); err != nil {
		t.Fatal(err)
	}
	a, b, c := newMember(t, pool), newMember(t, pool), newMember(t, pool)
	if _, err := pool.Exec(ctx, `INSERT INTO member_labels (member_id, label_id, value, updated_at) VALUES
		($1, 'vip', 'true', $4), ($1, 'coffee_lover', 'true', $4 + interval '1 hour'), ($1, 'lapsed', 'false', $4),
		($2, 'sharer', 'true', $4), ($3, 'lapsed', 'false', $4)`, a, b, c, memberCreatedAt); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	sets := func() map[uuid.UUID][]string {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT member_id, labels FROM member_label_sets`)
		if err != nil {
			t.Fatal(err)
		}
		out := map[uuid.UUID][]string{}
		var m uuid.UUID
		var ls []string
		if _, err := pgx.ForEachRow(rows, []any{&m, &ls}, func() error { out[m] = ls; return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := map[uuid.UUID][]string{a: {"coffee_lover", "vip"}, b: {"sharer"}}
	if got := sets(); !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("member_label_sets after 00039: %v, want %v", got, want)
	}
	var at time.Time
	if err := pool.QueryRow(ctx, `SELECT updated_at FROM member_label_sets WHERE member_id = $1`, a).Scan(&at); err != nil || !at.Equal(memberCreatedAt.Add(time.Hour)) {
		t.Errorf("a's set updated at %v (%v), want its latest label's %v", at, err, memberCreatedAt.Add(time.Hour))
	}
	if _, err := p.DownTo(ctx, 38); err != nil {
		t.Fatal(err)
	}
	var rows []string
	if err := pool.QueryRow(ctx, `SELECT array_agg(r ORDER BY r) FROM (
		SELECT concat_ws(' ', CASE member_id WHEN $1 THEN 'a' WHEN $2 THEN 'b' ELSE 'c' END, label_id, value) AS r FROM member_labels) l`, a, b).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if w := []string{"a coffee_lover true", "a vip true", "b sharer true"}; !slices.Equal(rows, w) {
		t.Errorf("member_labels after rolling 00039 back: %q, want %q", rows, w)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sets(); !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("member_label_sets after 00039 again: %v, want %v", got, want)
	}
}

// migrations is the schema's migrations over pool's database, to move it up
// and down.
func migrations(t *testing.T, pool *pgxpool.Pool) *goose.Provider {
	t.Helper()
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { db.Close() })
	p, err := goose.NewProvider(goose.DialectPostgres, db, postgres.Migrations())
	if err != nil {
		t.Fatal(err)
	}
	return p
}
