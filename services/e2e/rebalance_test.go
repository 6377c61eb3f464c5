package e2e_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	"github.com/membercenter/membercenter/pipeline/sink"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/benefits/benefitstest"
	"github.com/membercenter/membercenter/services/members"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
	"github.com/membercenter/membercenter/services/tags"
)

// TestRebalanceMidDrain runs several pipeline instances in one group
// (issue 14, item 6): instances a and b run every stage on the same topics
// and database, and a workload of channel events whose outcome depends on
// per-member order (refunds after their purchases, points redeemed once
// they are available, coupons used after they are issued, tier
// multipliers after upgrades, check-in streaks, the third purchase of a
// month) drains through them while the group changes twice:
//
//  1. b is stopped cleanly while the member-event workers of both
//     instances are inside batch transactions (the test holds one member
//     of each partition locked, as a slow transaction would); b's
//     partitions, with their records, move to a once b's static
//     membership expires, and a's workers must take them up where b's
//     stopped (they reach the locked members again);
//  2. a new instance c joins while the workers are again inside batches:
//     the group revokes partitions from a, from under those batches, and
//     gives them to c, whose workers must reach the locked members too.
//
// After the drain every effect must be there exactly once and in order:
// every member's loyalty state (balance, lots, tier history, grants,
// coupons) and the points moved per kind equal what an independent oracle
// computes from the published events; the ledger invariants hold;
// member.events.v1 holds each event once, each member's in the order
// published; each member's changes on member.changes.v1 and on a live
// stream are numbered 1..n without gaps or duplicates, their points and
// labels in publish order with a running balance that ends at the
// member's; ClickHouse has every event; the dead-letter topic holds
// exactly the deliberately bad records.
func TestRebalanceMidDrain(t *testing.T) {
	ctx := within(t, 15*time.Minute) // generous: planning alone once took 2½ minutes on a slowed machine
	began := time.Now()
	g := newInstanceGroup(t)
	a := g.start(t, "a", platform.AllServices)
	b := g.start(t, "b", nil)

	w := planWorkload(t, ctx, a.Conn, g.clock.Now(), 300)
	t.Logf("workload: %d members, %d events (%d programme operations, %d deliberately bad records), planned in %s",
		len(w.members), len(w.events), len(w.benefitIDs), len(w.poisons), time.Since(began).Round(time.Millisecond))
	live := follow(t, ctx, a.Conn)
	parts := w.parts(3)
	g.waitOwners(t, ctx, "a and b share the partitions", func(owners map[string]int) bool {
		return len(owners) == 2 && owners[g.instanceID("a")] > 0 && owners[g.instanceID("b")] > 0
	})

	// 1. b stops while the workers are in their batches.
	atStop := g.lockMembers(t, ctx, func(n int) []string { return w.pick(parts[0], n) })
	g.publish(t, ctx, parts[0])
	g.publish(t, ctx, parts[1])
	atStop.waitBlocked(t, ctx)
	stopAt := g.progress(t, ctx, w)
	stopping := time.Now()
	if err := b.Stop(); err != nil {
		t.Fatalf("clean stop of instance b: %v", err)
	}
	t.Logf("instance b stopped cleanly in %s with the workers in their batches, at %.0f%% of the drain", time.Since(stopping).Round(time.Millisecond), 100*stopAt)
	g.waitOwners(t, ctx, "b gone, a owns every partition", func(owners map[string]int) bool {
		return len(owners) == 1 && owners[g.instanceID("a")] > 0
	})
	atStop.waitBlocked(t, ctx) // a's workers took b's partitions up where b's stopped
	t.Logf("b's partitions moved to a at %.0f%% of the drain", 100*g.progress(t, ctx, w))

	// 2. c joins while the workers are in their batches.
	// (The first lock goes first: the workers waiting for it may hold
	// members the second takes.)
	atStop.release(t, ctx)
	atJoin := g.lockMembers(t, ctx, func(n int) []string { return w.pick(parts[2], n) })
	g.publish(t, ctx, parts[2])
	atJoin.waitBlocked(t, ctx)
	joinAt := g.progress(t, ctx, w)
	g.start(t, "c", nil)
	g.waitOwners(t, ctx, "c joined: a and c share the partitions", func(owners map[string]int) bool {
		return len(owners) == 2 && owners[g.instanceID("a")] > 0 && owners[g.instanceID("c")] > 0
	})
	atJoin.waitBlocked(t, ctx) // c's workers took the revoked partitions up where a's stopped
	t.Logf("c joined at %.0f%% of the drain, taking partitions from a's workers in their batches", 100*joinAt)
	atJoin.release(t, ctx)

	g.waitDrained(t, ctx, w)
	t.Logf("drained %s after the start", time.Since(began).Round(time.Millisecond))
	g.checkOracle(t, ctx, w)
	if err := pgtest.CheckRun(ctx, g.pool); err != nil {
		t.Error(err)
	}
	g.checkMemberEvents(t, ctx, w)
	final := g.checkChanges(t, ctx, w)
	live.check(t, final)
	g.checkDeadLetters(t, ctx, w)
	g.checkFacts(t, ctx, w)
	t.Logf("checked %s after the start", time.Since(began).Round(time.Millisecond))
}

// instanceGroup is what the instances share: one database, one ClickHouse
// database, one set of topics and consumer groups.
type instanceGroup struct {
	base  platform.Config
	pool  *pgxpool.Pool
	kafka *kafka.Client
	clock *clocktest.Clock
	envA  *platformtest.Env // instance a's
}

func newInstanceGroup(t *testing.T) *instanceGroup {
	t.Helper()
	base, _ := newConfig(t)
	// A stopped static member keeps its partitions until its session
	// times out: the shortest the broker allows (group.min.session.timeout.ms),
	// so the test does not wait long for the move.
	base.Kafka.SessionTimeout = 6 * time.Second
	// Batches wait for the members the test locks for longer than the
	// default limit after which a stage gives a batch up and splits it.
	base.Kafka.RecordRetryLimit = 2 * time.Minute
	g := &instanceGroup{base: base}
	// The instances' business clock: the 20th of the test clock's month,
	// noon in Shanghai. Every event of the workload falls in that month
	// before it, and the clock cannot reach the next month during the test,
	// so no month start is due and the benefit scheduler (which advances
	// members to now) never interleaves with the events.
	sh, _ := time.LoadLocation("Asia/Shanghai")
	s := clocktest.Start().In(sh)
	g.clock = clocktest.NewAt(time.Date(s.Year(), s.Month(), 20, 12, 0, 0, 0, sh))
	g.envA = platformtest.OpenT(t, g.config("a"), testWriter{t})
	if err := g.envA.P.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The test's own connections: an instance's can all be taken by its
	// workers waiting for the members the test locks.
	pool, err := pgxpool.New(context.Background(), g.base.Postgres.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	g.pool = pool
	kc, err := kafka.NewClient(base.Kafka, g.envA.Kafka(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	g.kafka = kc
	return g
}

func (g *instanceGroup) instanceID(name string) string { return g.base.Kafka.InstanceID + "-" + name }

func (g *instanceGroup) config(name string) platform.Config {
	cfg := g.base
	cfg.Kafka.InstanceID = g.instanceID(name)
	return cfg
}

// start runs every pipeline stage, and the given services, as instance
// name: a process of its own (its own connections and instance id).
func (g *instanceGroup) start(t *testing.T, name string, services []string) *platformtest.Running {
	t.Helper()
	env := g.envA
	if name != "a" {
		env = platformtest.OpenT(t, g.config(name), testWriter{t})
	}
	return platformtest.StartT(t, env.P, platform.Options{Services: services, Stages: platform.AllStages, Now: g.clock.Now})
}

// publish produces events in order and waits for the broker's
// acknowledgements.
func (g *instanceGroup) publish(t *testing.T, ctx context.Context, evs []published) {
	t.Helper()
	rs := make([]*kgo.Record, len(evs))
	for i, e := range evs {
		rs[i] = e.rec
		rs[i].Topic = g.base.Kafka.Topics.ChannelEvents
	}
	if err := g.kafka.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// memberLock holds members' rows locked, as a slow writer would: the
// workers' batches with an event of theirs wait inside their transactions
// (every writer of a member locks its row first). Ingest goes on: its
// inserts that name the members take a key-share lock, which NO KEY
// UPDATE lets through.
type memberLock struct {
	g    *instanceGroup
	conn *pgx.Conn
	tx   pgx.Tx
	pid  uint32
}

// lockMembers locks one member of each partition of member.events.
func (g *instanceGroup) lockMembers(t *testing.T, ctx context.Context, pick func(partitions int) []string) *memberLock {
	t.Helper()
	members := pick(g.partitions())
	if len(members) != g.partitions() {
		t.Fatalf("%d members to lock, want one on each of %d partitions", len(members), g.partitions())
	}
	conn, err := pgx.Connect(ctx, g.base.Postgres.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	l := &memberLock{g: g, conn: conn, pid: conn.PgConn().PID()}
	if l.tx, err = conn.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.tx.Exec(ctx, `SELECT 1 FROM members WHERE member_id = ANY($1::uuid[]) ORDER BY member_id FOR NO KEY UPDATE`, members); err != nil {
		t.Fatal(err)
	}
	return l
}

func (g *instanceGroup) partitions() int {
	return int(g.base.Kafka.Topics.All()[g.base.Kafka.Topics.MemberEvents])
}

// waitBlocked waits until as many backends as there are workers of member
// events (one per partition: the benefit and tag stages share one) wait
// for the lock, directly or behind another that does: as a rule the batch
// transaction of every worker (a benefit label-check pass that reaches a
// locked member counts too, so "every" is what the count allows, not what
// it proves).
func (l *memberLock) waitBlocked(t *testing.T, ctx context.Context) {
	t.Helper()
	want := l.g.partitions()
	eventually(t, fmt.Sprintf("the %d workers waiting for the locked members", want), func() (bool, error) {
		// The backends behind the lock, and (for the message) what every
		// busy backend of the database waits for.
		var n int
		var busy []string
		err := l.g.pool.QueryRow(ctx, `WITH RECURSIVE blocked(pid) AS (
				SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))
				UNION
				SELECT a.pid FROM pg_stat_activity a JOIN blocked b ON b.pid = ANY(pg_blocking_pids(a.pid)))
			SELECT (SELECT count(*) FROM blocked),
			       (SELECT coalesce(array_agg(pid || ' behind ' || pg_blocking_pids(pid)::text || ': ' || left(regexp_replace(query, '\s+', ' ', 'g'), 80)), '{}')
			          FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid())`,
			int(l.pid)).Scan(&n, &busy)
		if err != nil {
			return false, err
		}
		return n >= want, fmt.Errorf("%d behind the lock (backend %d); busy:\n%s", n, l.pid, strings.Join(busy, "\n"))
	})
}

func (l *memberLock) release(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := l.tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// progress is the share of the workload's effects the two workers have
// applied.
func (g *instanceGroup) progress(t *testing.T, ctx context.Context, w *workload) float64 {
	t.Helper()
	var done int
	err := g.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = ANY($2))
		+ (SELECT count(*) FROM processed_events WHERE consumer = $3 AND event_id = ANY($4))`,
		benefits.Stage, w.benefitIDs, tags.Stage, w.goodIDs).Scan(&done)
	if err != nil {
		t.Fatal(err)
	}
	return float64(done) / float64(len(w.benefitIDs)+len(w.goodIDs))
}

// waitOwners waits until every consumer group of the stages is stable and
// its partitions are owned as ok says (owners: instance id → partitions).
func (g *instanceGroup) waitOwners(t *testing.T, ctx context.Context, what string, ok func(owners map[string]int) bool) {
	t.Helper()
	adm := kadm.NewClient(g.kafka.Client)
	var groups []string
	// One process runs the benefit and the tag stage in group members.
	for _, st := range []string{ingest.Stage, members.Stage, sink.Stage} {
		groups = append(groups, g.base.Kafka.Group(st))
	}
	eventually(t, what, func() (bool, error) {
		described, err := adm.DescribeGroups(ctx, groups...)
		if err != nil {
			return false, err
		}
		for _, name := range groups {
			d := described[name]
			if d.Err != nil {
				return false, d.Err
			}
			owners := map[string]int{}
			for _, m := range d.Members {
				if c, isConsumer := m.Assigned.AsConsumer(); isConsumer && m.InstanceID != nil {
					for _, tp := range c.Topics {
						owners[*m.InstanceID] += len(tp.Partitions)
					}
				}
			}
			if d.State != "Stable" || !ok(owners) {
				return false, fmt.Errorf("group %s %s: %v", name, d.State, owners)
			}
		}
		return true, nil
	})
}

// waitDrained waits until both workers have applied every event, no
// member waits for a label check and the outbox is published.
func (g *instanceGroup) waitDrained(t *testing.T, ctx context.Context, w *workload) {
	t.Helper()
	eventually(t, "every event applied by both workers and the outbox published", func() (bool, error) {
		var unpublished, checks int
		if err := g.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox_pending),
			(SELECT count(*) FROM benefit_label_checks)`).Scan(&unpublished, &checks); err != nil {
			return false, err
		}
		p := g.progress(t, ctx, w)
		return p >= 1 && unpublished == 0 && checks == 0,
			fmt.Errorf("%.1f%% applied, %d label checks queued, %d changes unpublished", 100*p, checks, unpublished)
	})
}

// checkOracle compares every member's loyalty state with the oracle's.
func (g *instanceGroup) checkOracle(t *testing.T, ctx context.Context, w *workload) {
	t.Helper()
	o := w.oracle
	query := func(sql string, args ...any) map[string][]string {
		out := map[string][]string{}
		var member, v string
		forEachRow(t, ctx, g.pool, []any{&member, &v}, func() { out[member] = append(out[member], v) }, sql, args...)
		return out
	}
	const stamp = "2006-01-02T15:04:05Z"
	balances := query(`SELECT member_id::text, balance::text FROM points_accounts`)
	lots := query(`SELECT member_id::text, earned || '/' || remaining || ' ' || to_char(earned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
		FROM point_lots ORDER BY member_id, lot_id`)
	moves := query(`SELECT member_id::text, from_tier || '→' || to_tier || ' ' || reason FROM tier_history ORDER BY member_id, id`)
	grants := query(`SELECT member_id::text, benefit_id FROM benefit_grants ORDER BY member_id, benefit_id`)
	coupons := query(`SELECT member_id::text, code || ' ' || state FROM coupons ORDER BY member_id, code`)
	var diffs []string
	diff := func(member, what string, want, got []string) {
		if !slices.Equal(want, got) {
			diffs = append(diffs, fmt.Sprintf("%s %s:\n  oracle %q\n  stored %q", member, what, want, got))
		}
	}
	var nLots, nMoves, nGrants, nCoupons int
	for _, m := range w.members {
		bal, _, _ := o.Balance(m, g.clock.Now())
		want := []string{fmt.Sprint(bal)}
		if bal == 0 && balances[m] == nil {
			want = nil
		}
		diff(m, "balance", want, balances[m])
		want = nil
		for _, l := range o.Lots(m) {
			want = append(want, fmt.Sprintf("%d/%d %s", l.Earned, l.Remaining, l.EarnedAt.UTC().Format(stamp)))
		}
		diff(m, "lots", want, lots[m])
		nLots += len(want)
		want = nil
		for _, mv := range o.TierHistory(m) {
			want = append(want, mv.From+"→"+mv.To+" "+mv.Reason)
		}
		diff(m, "tier history", want, moves[m])
		nMoves += len(want)
		want = o.Grants(m)
		if len(want) == 0 {
			want = nil
		}
		diff(m, "grants", want, grants[m])
		nGrants += len(want)
		want = nil
		for _, c := range o.CouponList(m) {
			want = append(want, c.Code+" "+c.State)
		}
		sort.Strings(want)
		diff(m, "coupons", want, coupons[m])
		nCoupons += len(want)
		if len(diffs) > 10 {
			break
		}
	}
	for _, d := range diffs {
		t.Error(d)
	}

	// Points moved per kind of ledger transaction, over the whole ledger.
	totals := map[string]int64{}
	var kind string
	var sum int64
	forEachRow(t, ctx, g.pool, []any{&kind, &sum}, func() { totals[kind] = sum }, `SELECT t.kind, abs(sum(e.delta)) FROM ledger_transactions t
		JOIN ledger_entries e USING (transaction_id) WHERE e.member_id IS NOT NULL GROUP BY t.kind`)
	want := o.Totals()
	maps.DeleteFunc(want, func(_ string, v int64) bool { return v == 0 })
	maps.DeleteFunc(totals, func(_ string, v int64) bool { return v == 0 })
	if !maps.Equal(want, totals) {
		t.Errorf("points moved per kind: oracle %v, ledger %v", want, totals)
	}
	var orders, accepted int
	for _, id := range w.orderIDs {
		if _, ok := o.Order(id); ok {
			accepted++
		}
	}
	if err := g.pool.QueryRow(ctx, `SELECT count(*) FROM orders WHERE order_id = ANY($1)`, w.orderIDs).Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if orders != accepted {
		t.Errorf("%d orders stored, the oracle accepted %d purchases", orders, accepted)
	}
	refused := 0
	for _, n := range o.Refused() {
		refused += n
	}
	t.Logf("compared with the oracle: %v points moved, %d orders, %d lots, %d tier moves, %d grants, %d coupons, %d refusals %v",
		want, orders, nLots, nMoves, nGrants, nCoupons, refused, o.Refused())
	if want[benefitstest.KindRedeem] == 0 || want[benefitstest.KindReverse] == 0 || nMoves == 0 || nCoupons == 0 || refused == 0 {
		t.Error("the workload exercised too little of the programme to compare")
	}
}

// checkMemberEvents: member.events.v1 holds every good event once, each
// member's in the order they were published.
func (g *instanceGroup) checkMemberEvents(t *testing.T, ctx context.Context, w *workload) {
	t.Helper()
	seen := map[string]int{}
	got := map[string][]string{}
	for _, r := range readTopic(t, ctx, g.base.Kafka.Brokers, g.base.Kafka.Topics.MemberEvents, len(w.goodIDs), time.Second) {
		ev := &mcv1.MemberEvent{}
		if err := proto.Unmarshal(r.Value, ev); err != nil {
			t.Fatalf("member.events.v1 %d@%d: %v", r.Partition, r.Offset, err)
		}
		seen[ev.GetEventId()]++
		got[ev.GetMemberId()] = append(got[ev.GetMemberId()], ev.GetEventId())
	}
	var twice, missing []string
	for id, n := range seen {
		if n > 1 {
			twice = append(twice, id)
		}
	}
	for _, id := range w.goodIDs {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	if len(twice) > 0 || len(missing) > 0 || len(seen) != len(w.goodIDs) {
		t.Errorf("member.events.v1: %d events (want %d); twice: %v; missing: %v", len(seen), len(w.goodIDs), firstFew(twice), firstFew(missing))
	}
	for _, m := range w.members {
		if !slices.Equal(got[m], w.order[m]) {
			t.Errorf("member %s: member.events.v1 order\n  %v\nwant the published order\n  %v", m, got[m], w.order[m])
			return
		}
	}
}

// checkChanges: every member's changes on member.changes.v1 are numbered
// 1..n without gaps or duplicates, n being the member's last sequence; the
// points changes carry a running balance ending at the member's balance;
// the changes caused by events come in the order the events were
// published. It returns each member's last sequence.
func (g *instanceGroup) checkChanges(t *testing.T, ctx context.Context, w *workload) map[string]uint64 {
	t.Helper()
	final := map[string]uint64{}
	balance := map[string]int64{}
	total := 0
	var m string
	var seq uint64
	var bal int64
	forEachRow(t, ctx, g.pool, []any{&m, &seq, &bal}, func() {
		final[m], balance[m] = seq, bal
		total += int(seq)
	}, `SELECT m.member_id::text, m.change_seq, coalesce(a.balance, 0)
		FROM members m LEFT JOIN points_accounts a USING (member_id) WHERE m.member_id = ANY($1::uuid[])`, w.members)
	changes := map[string][]*mcv1.MemberChange{}
	for _, r := range readTopic(t, ctx, g.base.Kafka.Brokers, g.base.Kafka.Topics.MemberChanges, total, time.Second) {
		c := &mcv1.MemberChange{}
		if err := proto.Unmarshal(r.Value, c); err != nil {
			t.Fatalf("member.changes.v1 %d@%d: %v", r.Partition, r.Offset, err)
		}
		if string(r.Key) != c.GetMemberId() {
			t.Errorf("change %d of %s keyed %q", c.GetSequence(), c.GetMemberId(), r.Key)
		}
		changes[c.GetMemberId()] = append(changes[c.GetMemberId()], c)
	}
	bad := 0
	for _, m := range w.members {
		cs := changes[m]
		seqs := make([]uint64, len(cs))
		for i, c := range cs {
			seqs[i] = c.GetSequence()
		}
		gaps, dups := kafkatest.SequenceFaults(seqs, 1)
		if gaps > 0 || dups > 0 || len(seqs) == 0 || seqs[len(seqs)-1] != final[m] {
			t.Errorf("member %s: sequences %v on member.changes.v1, want 1..%d", m, seqs, final[m])
			bad++
		}
		// Where each event stands in the member's published order.
		pos := map[string]int{}
		for i, id := range w.order[m] {
			pos[id] = i
		}
		var running int64
		lastPoints, lastLabels := -1, -1
		for _, c := range cs {
			at, byEvent := pos[strings.SplitN(c.GetCauseId(), "#", 2)[0]]
			switch {
			case c.GetPointsChanged() != nil:
				p := c.GetPointsChanged()
				running += p.GetDelta()
				if p.GetBalance() != running {
					t.Errorf("member %s change %d: balance %d after %+d, want %d", m, c.GetSequence(), p.GetBalance(), p.GetDelta(), running)
					bad++
				}
				if byEvent {
					if at < lastPoints {
						t.Errorf("member %s change %d: points of event %d of its stream after event %d's", m, c.GetSequence(), at, lastPoints)
						bad++
					}
					lastPoints = at
				}
			case c.GetLabelsChanged() != nil && byEvent:
				if at < lastLabels {
					t.Errorf("member %s change %d: labels of event %d of its stream after event %d's", m, c.GetSequence(), at, lastLabels)
					bad++
				}
				lastLabels = at
			}
		}
		if running != balance[m] {
			t.Errorf("member %s: its points changes add up to %d, its balance is %d", m, running, balance[m])
			bad++
		}
		if bad > 10 {
			break
		}
	}
	t.Logf("member.changes.v1: %d changes of %d members, each numbered 1..n", total, len(w.members))
	return final
}

// checkDeadLetters: the dead-letter topic holds each deliberately bad
// record once, refused by ingest with its reason, each event the oracle's
// programme refuses (a refund of an order already refunded in full, points
// the member does not have), refused by the member stage with the
// programme's reason, and nothing else.
func (g *instanceGroup) checkDeadLetters(t *testing.T, ctx context.Context, w *workload) {
	t.Helper()
	refused := w.oracle.RefusedEvents()
	got := map[string][]dlq.Letter{}
	byEvent := map[string][]dlq.Letter{}
	for _, r := range readTopic(t, ctx, g.base.Kafka.Brokers, g.base.Kafka.Topics.DLQ, len(w.poisons)+len(refused), time.Second) {
		l := openLetter(t, g.pool, r)
		var id string
		var mev mcv1.MemberEvent
		var cev mcv1.ChannelEvent
		switch {
		case l.Topic == g.base.Kafka.Topics.MemberEvents && proto.Unmarshal(l.Record.Value, &mev) == nil:
			id = mev.GetEventId()
		case l.Topic == g.base.Kafka.Topics.ChannelEvents && proto.Unmarshal(l.Record.Value, &cev) == nil:
			id = cev.GetEventId()
		}
		if _, ok := refused[id]; ok && id != "" {
			byEvent[id] = append(byEvent[id], l)
			continue
		}
		got[string(l.Record.Value)] = append(got[string(l.Record.Value)], l)
	}
	for id, reason := range refused {
		ls := byEvent[id]
		if len(ls) == 0 {
			t.Errorf("event %s, refused by the programme (%s), was not dead-lettered", id, reason)
		}
		for _, l := range ls {
			// What no member's state could accept (points not in whole
			// units, paying more than points may) ingest refuses first.
			if !strings.Contains(l.Reason, benefits.ErrRefused.Error()) && l.Stage != ingest.Stage {
				t.Errorf("event %s, refused by the programme (%s), dead-lettered by %s: %s", id, reason, l.Stage, l.Reason)
			}
		}
	}
	for _, p := range w.poisons {
		ls := got[string(p.value)]
		delete(got, string(p.value))
		if len(ls) != 1 || ls[0].Stage != ingest.Stage || !strings.Contains(ls[0].Reason, p.reason) {
			var reasons []string
			for _, l := range ls {
				reasons = append(reasons, l.Stage+": "+l.Reason)
			}
			t.Errorf("%s: dead letters %q; want one from ingest naming %q", p.name, reasons, p.reason)
		}
	}
	for _, ls := range got {
		for _, l := range ls {
			t.Errorf("unexpected dead letter from %s: %s", l.Stage, l.Reason)
		}
	}
}

// checkFacts: ClickHouse has every good event.
func (g *instanceGroup) checkFacts(t *testing.T, ctx context.Context, w *workload) {
	t.Helper()
	ch, err := g.envA.P.OpenClickHouse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	eventually(t, "every event in ClickHouse", func() (bool, error) {
		var n uint64
		err := ch.QueryRow(ctx, `SELECT uniqExact(event_id) FROM member_events WHERE has(?, event_id)`, w.goodIDs).Scan(&n)
		return n == uint64(len(w.goodIDs)), fmt.Errorf("%d of %d events: %v", n, len(w.goodIDs), err)
	})
}

func firstFew(xs []string) []string {
	if len(xs) > 5 {
		return xs[:5]
	}
	return xs
}

// follower follows every change on a live stream. A subscriber that falls
// too far behind (the test's goroutine starved of CPU) is told to resync
// and its stream ends; the follower then does what a channel does: it
// subscribes again with the resume token of the last message it got, and
// the replay continues the stream where it stopped (check counts on no gap
// and no change twice across it).
type follower struct {
	mu      sync.Mutex
	seqs    map[string][]uint64
	err     error
	resyncs int
}

func follow(t *testing.T, ctx context.Context, conn *grpc.ClientConn) *follower {
	t.Helper()
	sctx, stop := context.WithCancel(ctx)
	client := mcv1.NewSyncServiceClient(conn)
	stream, err := client.Subscribe(sctx, &mcv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := stream.Recv()
	if err != nil || m.GetReady() == nil {
		t.Fatalf("first message = %v, %v; want ready", m, err)
	}
	token := m.GetResumeToken()
	f := &follower{seqs: map[string][]uint64{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fail := func(err error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if sctx.Err() == nil && f.err == nil {
				f.err = err
			}
		}
		for {
			m, err := stream.Recv()
			if err != nil {
				fail(err)
				return
			}
			if m.GetResumeToken() != "" {
				token = m.GetResumeToken()
			}
			if c := m.GetChange(); c != nil {
				f.mu.Lock()
				f.seqs[c.GetMemberId()] = append(f.seqs[c.GetMemberId()], c.GetSequence())
				f.mu.Unlock()
			}
			if m.GetResyncRequired() != nil {
				f.mu.Lock()
				f.resyncs++
				f.mu.Unlock()
				if stream, err = client.Subscribe(sctx, &mcv1.SubscribeRequest{ResumeToken: token}); err != nil {
					fail(fmt.Errorf("subscribe again after a resync: %w", err))
					return
				}
			}
		}
	}()
	t.Cleanup(func() { stop(); <-done })
	return f
}

// check waits until the stream has every member's last change and checks
// it got each member's changes in sequence, none twice.
func (f *follower) check(t *testing.T, final map[string]uint64) {
	t.Helper()
	eventually(t, "the live stream has every member's last change", func() (bool, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.err != nil {
			t.Fatalf("live stream: %v", f.err)
		}
		for m, last := range final {
			if s := f.seqs[m]; len(s) == 0 || s[len(s)-1] < last {
				return false, fmt.Errorf("member %s at %v of %d", m, s, last)
			}
		}
		return true, nil
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.resyncs > 0 {
		t.Logf("live stream: told to resync %d times, resumed from its token", f.resyncs)
	}
	for m := range final {
		s := f.seqs[m]
		if gaps, dups := kafkatest.SequenceFaults(s, s[0]); gaps > 0 || dups > 0 {
			t.Errorf("live stream, member %s: sequences %v", m, s)
		}
	}
}

// workload is the channel events of the test, the members they belong to
// and what the oracle makes of them.
type workload struct {
	members    []string
	events     []published // in publishing order, the bad records among them
	order      map[string][]string
	goodIDs    []string // every event ingest accepts
	benefitIDs []string // the events the programme acts on
	orderIDs   []string
	poisons    []poison
	oracle     *benefitstest.Oracle
}

type poison struct {
	name, reason string
	value        []byte
}

// published is a record of the workload: a shopper's channel event, or a bad
// record (no member).
type published struct {
	rec       *kgo.Record
	member    string
	programme bool // the benefit worker acts on it
}

// parts splits the events into n parts, in order.
func (w *workload) parts(n int) [][]published {
	var out [][]published
	for i := range n {
		out = append(out, w.events[i*len(w.events)/n:(i+1)*len(w.events)/n])
	}
	return out
}

// pick names, for each partition of member.events, a member with an event
// the programme acts on in the middle of part: where the partition's
// workers will stop while the member is locked.
func (w *workload) pick(part []published, partitions int) []string {
	byPartition := map[int]string{}
	keys := kgo.StickyKeyPartitioner(nil).ForTopic("") // ingest's (franz-go's default): murmur2 of the key
	for i := range part {
		e := part[(len(part)/2+i)%len(part)]
		if !e.programme {
			continue
		}
		p := keys.Partition(&kgo.Record{Key: []byte(e.member)}, partitions)
		if _, ok := byPartition[p]; !ok {
			byPartition[p] = e.member
		}
	}
	return slices.Collect(maps.Values(byPartition))
}

// planned is one event of a shopper's story.
type planned struct {
	at        time.Time
	member    string
	phone     string
	ev        *mcv1.ChannelEvent
	programme bool
}

// planWorkload creates the members (so that the coupon codes the
// programme issues them are known) and writes each one's story over the
// month before now, feeding every event to the oracle as it goes, so that
// redemptions and coupons are those the member can use (and a few
// deliberately not).
func planWorkload(t *testing.T, ctx context.Context, conn *grpc.ClientConn, now time.Time, members int) *workload {
	t.Helper()
	o, err := benefitstest.New(benefits.DefaultProgramSource())
	if err != nil {
		t.Fatal(err)
	}
	w := &workload{oracle: o, order: map[string][]string{}}
	phones := make([]string, members)
	w.members = make([]string, members)
	ids := mcv1.NewIdentityServiceClient(conn)
	var eg sync.WaitGroup
	errs := make(chan error, members)
	for k := range 4 {
		eg.Add(1)
		go func() {
			defer eg.Done()
			for i := k; i < members; i += 4 {
				phones[i] = fmt.Sprintf("1376%07d", i)
				r, err := ids.Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_APP, CreateIfMissing: true,
					IdempotencyKey: "rebalance-" + phones[i],
					Identifiers:    []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phones[i]}}})
				if err != nil {
					errs <- err
					return
				}
				w.members[i] = r.GetMemberId()
			}
		}()
	}
	eg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("resolve the members: %v", err)
	}

	sh, _ := time.LoadLocation("Asia/Shanghai")
	l := now.In(sh)
	from := time.Date(l.Year(), l.Month(), 1, 1, 0, 0, 0, sh)
	until := now.Add(-time.Hour)
	rng := rand.New(rand.NewPCG(14, 6))
	var all []planned
	for i, m := range w.members {
		all = append(all, w.story(t, rng, i, m, phones[i], from, until)...)
	}
	// Shoppers act at the same time: the records go out in the order of
	// their times (each member's in its own order).
	sort.SliceStable(all, func(i, j int) bool { return all[i].at.Before(all[j].at) })
	for _, p := range all {
		v, err := proto.Marshal(p.ev)
		if err != nil {
			t.Fatal(err)
		}
		w.events = append(w.events, published{rec: &kgo.Record{Key: []byte(p.phone), Value: v}, member: p.member, programme: p.programme})
	}
	// Bad records amid the second part, on shoppers' partitions: each
	// dead-lettered alone by ingest, the shopper's next events unharmed.
	bad := func(name, reason string, phone string, edit func(*mcv1.ChannelEvent)) {
		ev := channelEvent("bad-"+name, phone, mcv1.Channel_CHANNEL_POS, until)
		ev.Payload = &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-bad-" + name,
			Total: &mcv1.Money{Currency: "CNY", AmountMinor: 5_000},
			Items: []*mcv1.LineItem{{Sku: "TEA", Category: "tea", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 5_000}}}}}
		edit(ev)
		v, _ := proto.Marshal(ev)
		w.poisons = append(w.poisons, poison{name: name, reason: reason, value: v})
	}
	bad("usd", "USD", phones[0], func(e *mcv1.ChannelEvent) {
		e.GetTransaction().Total.Currency = "USD"
		e.GetTransaction().Items[0].Amount.Currency = "USD"
	})
	bad("nul", "orderId", phones[1], func(e *mcv1.ChannelEvent) { e.GetTransaction().OrderId = "O\x00" })
	w.poisons = append(w.poisons, poison{name: "garbage", reason: "not a ChannelEvent", value: []byte{0xff, 0xff, 0xff}})
	for i, p := range w.poisons {
		at := len(w.events)/3 + (i+1)*len(w.events)/12
		w.events = slices.Insert(w.events, at, published{rec: &kgo.Record{Key: []byte(phones[i]), Value: p.value}})
	}
	return w
}

func channelEvent(id, phone string, ch mcv1.Channel, at time.Time) *mcv1.ChannelEvent {
	return &mcv1.ChannelEvent{EventId: id, Channel: ch, StoreId: "SH-001", OccurredAt: timestamppb.New(at),
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}}}
}

// story writes one member's events between from and until, in time order.
func (w *workload) story(t *testing.T, rng *rand.Rand, i int, member, phone string, from, until time.Time) []planned {
	t.Helper()
	span := until.Sub(from)
	var times []time.Time
	for range 6 + rng.IntN(8) {
		times = append(times, from.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Second))
	}
	// A quarter of the members check in every day for a week and more.
	streak := map[time.Time]bool{}
	if rng.IntN(4) == 0 {
		day := from.Add(time.Duration(rng.IntN(8)) * 24 * time.Hour).Add(8 * time.Hour)
		for d := range 8 + rng.IntN(3) {
			at := day.Add(time.Duration(d)*24*time.Hour + time.Duration(rng.IntN(3600))*time.Second)
			if at.Before(until) {
				times = append(times, at)
				streak[at] = true
			}
		}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	times = slices.Compact(times)
	o := w.oracle
	var orders []string
	var out []planned
	for n, at := range times {
		id := fmt.Sprintf("rb-%03d-%02d", i, n)
		ev := channelEvent(id, phone, mcv1.Channel_CHANNEL_POS, at)
		programme := true
		switch r := rng.IntN(100); {
		case streak[at] || (r < 12 && n > 0):
			ev.Channel = mcv1.Channel_CHANNEL_APP
			ev.Payload = &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
		case n == 0 && r < 30:
			ev.Channel = mcv1.Channel_CHANNEL_APP
			ev.Payload = &mcv1.ChannelEvent_SignUp{SignUp: &mcv1.SignUp{City: "Shanghai"}}
		case r < 22 && len(orders) > 0:
			// A refund of one of the member's earlier orders: a third of
			// what is left, or all of it (now and then of an order
			// refunded in full already: refused).
			oid := orders[rng.IntN(len(orders))]
			for _, o2 := range orders {
				if info, ok := o.Order(o2); ok && !info.FullyRefunded && rng.IntN(15) > 0 {
					oid = o2
				}
			}
			amount := int64(0)
			if info, ok := o.Order(oid); ok && rng.IntN(2) == 0 {
				amount = (info.Paid - info.Refunded) / 3
			}
			ev.Payload = &mcv1.ChannelEvent_Refund{Refund: &mcv1.Refund{OrderId: oid, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount}}}
		case r < 32:
			ev.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(60 + rng.IntN(1200))}}
			programme = false
		case r < 36:
			ev.Channel = mcv1.Channel_CHANNEL_APP
			ev.Payload = &mcv1.ChannelEvent_Share{Share: &mcv1.Share{ContentId: "post-1", Target: "wechat"}}
			programme = false
		default:
			ev.Payload = &mcv1.ChannelEvent_Transaction{Transaction: w.purchase(rng, member, id, at)}
			orders = append(orders, "O-"+id)
			w.orderIDs = append(w.orderIDs, "O-"+id)
		}
		if err := o.Apply(ingest.MemberEvent(ev, ingest.Resolution{MemberID: member}, at)); err != nil {
			t.Fatal(err)
		}
		w.goodIDs = append(w.goodIDs, id)
		if programme {
			w.benefitIDs = append(w.benefitIDs, id)
		}
		w.order[member] = append(w.order[member], id)
		out = append(out, planned{at: at, member: member, phone: phone, ev: ev, programme: programme})
	}
	return out
}

// purchase is a basket of ¥10 to ¥900 (some with coffee), paid partly with
// points when the member has some available (now and then with more than
// it has, or more than half the basket: refused), and with a coupon when
// it holds one.
func (w *workload) purchase(rng *rand.Rand, member, id string, at time.Time) *mcv1.Transaction {
	total := int64(1_000 + rng.IntN(60_000))
	if rng.IntN(8) == 0 {
		total = int64(50_000 + rng.IntN(40_000)) // earns a C10 coupon
	}
	category := "tea"
	if rng.IntN(3) == 0 {
		category = "coffee"
	}
	tx := &mcv1.Transaction{OrderId: "O-" + id, Total: &mcv1.Money{Currency: "CNY", AmountMinor: total},
		Items: []*mcv1.LineItem{
			{Sku: "CUP", Category: category, Brand: "house", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: total / 2}},
			{Sku: "CAKE", Category: "bakery", Brand: "house", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: total - total/2}},
		}}
	if _, available, _ := w.oracle.Balance(member, at); available >= 100 && rng.IntN(3) == 0 {
		redeem := min(available, total/2) / 100 * 100
		if rng.IntN(20) == 0 {
			redeem = available/100*100 + 100 // more than the member has: refused
		}
		tx.PointsRedeemed = redeem
	}
	for _, c := range w.oracle.CouponList(member) {
		// C10 needs a basket of ¥50 (now and then a smaller one: refused).
		big := total >= 5_000 || rng.IntN(10) == 0
		if c.State == benefitstest.CouponIssued && !at.Before(c.ValidFrom) && at.Before(c.ValidUntil) && big && rng.IntN(2) == 0 {
			tx.CouponCodes = []string{c.Code}
			break
		}
	}
	return tx
}
