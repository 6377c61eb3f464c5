package benefits_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/benefits/benefitstest"
)

// memory runs the engine in memory over a stream, as the worker would one
// event at a time, keeping campaign budgets and coupon totals global.
type memory struct {
	e        benefits.Engine
	states   map[string]*benefits.State
	history  map[string][]benefits.TierMove
	budgets  map[string]int64
	tpl      map[string]int
	refusals int
}

func newMemory(p *benefits.Program) *memory {
	return &memory{e: benefits.Engine{P: p}, states: map[string]*benefits.State{}, history: map[string][]benefits.TierMove{},
		budgets: map[string]int64{}, tpl: map[string]int{}}
}

func (m *memory) apply(member string, op benefits.Op) error {
	st := m.states[member]
	if st == nil {
		st = benefits.NewState(member)
	}
	c := st.Clone()
	c.Budgets, c.TplIssued = maps.Clone(m.budgets), maps.Clone(m.tpl)
	op.Origin = member
	fx, err := m.e.Apply(c, op)
	var refusal *benefits.Refusal
	if errors.As(err, &refusal) {
		m.refusals++
		return nil
	}
	if err != nil {
		return err
	}
	if fx.Duplicate || fx.NoOp {
		return nil
	}
	m.states[member], m.budgets, m.tpl = c, c.Budgets, c.TplIssued
	m.history[member] = append(m.history[member], fx.TierMoves...)
	return nil
}

func couponSummary(cs []*benefits.Coupon, at time.Time) map[string]map[string]int {
	out := map[string]map[string]int{}
	for _, c := range cs {
		state := c.State
		if state != "used" && !at.Before(c.ValidUntil) {
			state = "expired"
		}
		if out[c.Template] == nil {
			out[c.Template] = map[string]int{}
		}
		out[c.Template][state]++
	}
	return out
}

// streamSize is the members and events of a generated stream: full, or
// short under -short, or the events the variable env names with members
// for them.
func streamSize(env string, full, short [2]int, membersFor func(events int) int) (members, events int) {
	size := full
	if testing.Short() {
		size = short
	}
	if v := os.Getenv(env); v != "" {
		events, _ = strconv.Atoi(v)
		return max(1, membersFor(events)), events
	}
	return size[0], size[1]
}

// generate returns benefitstest's stream of seed for the programme src,
// members and events from start2025, and the oracle of src that drew it
// (it has seen every event).
func generate(t *testing.T, src []byte, seed uint64, members, events int) (*benefitstest.Oracle, []*mcv1.MemberEvent) {
	t.Helper()
	o, err := benefitstest.New(src)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := benefitstest.GenerateWith(o, seed, members, events, start2025)
	if err != nil {
		t.Fatal(err)
	}
	return o, stream
}

// The oracle, a plain re-implementation of docs/benefits.md written without
// looking at the engine, replays a generated stream and must agree with the
// engine on every member's balance, lots, tier history, grants and coupons.
func TestEngineAgreesWithOracle(t *testing.T) {
	members, events := streamSize("MC_ORACLE_EVENTS", [2]int{10_000, 100_000}, [2]int{1_000, 10_000}, func(events int) int { return events / 10 })
	src := benefits.DefaultProgramSource()
	o, stream := generate(t, src, 20261123, members, events)
	p, err := benefits.ParseProgram(src)
	if err != nil {
		t.Fatal(err)
	}
	mem := newMemory(p)
	var end time.Time
	for _, ev := range stream {
		if at := ev.GetOccurredAt().AsTime(); at.After(end) {
			end = at
		}
		op, ok, err := benefits.OpFromEvent(p, ev)
		if err != nil {
			mem.refusals++ // a dead letter: the oracle refuses it too
			continue
		}
		if !ok {
			continue
		}
		if err := mem.apply(ev.GetMemberId(), op); err != nil {
			t.Fatalf("event %s: %v", ev.GetEventId(), err)
		}
	}
	end = end.AddDate(0, 1, 0)

	ids := o.Members()
	sort.Strings(ids)
	if len(ids) != len(mem.states) {
		t.Errorf("oracle has %d members, engine %d", len(ids), len(mem.states))
	}
	var diffs []string
	var moves, grants, lots int
	for _, id := range ids {
		o.AdvanceTo(id, end)
		if err := mem.apply(id, benefits.Op{Kind: benefits.OpAdvance, At: end, Cause: "end"}); err != nil {
			t.Fatal(err)
		}
		st := mem.states[id]
		if st == nil {
			diffs = append(diffs, id+": unknown to the engine")
			continue
		}
		diff := func(what string, want, got any) {
			if !reflect.DeepEqual(want, got) {
				diffs = append(diffs, fmt.Sprintf("%s %s:\n oracle %v\n engine %v", id, what, want, got))
			}
		}
		ob, oa, op := o.Balance(id, end)
		eb, ea, ep := st.Balance(end)
		diff("balance", [3]int64{ob, oa, op}, [3]int64{eb, ea, ep})
		var want, got []string
		for _, l := range o.Lots(id) {
			want = append(want, fmt.Sprintf("%d/%d %s %s %s", l.Earned, l.Remaining, l.EarnedAt.UTC().Format(time.RFC3339), l.AvailableAt.UTC().Format(time.RFC3339), l.ExpiresAt.UTC().Format(time.RFC3339)))
		}
		for _, l := range st.Lots {
			got = append(got, fmt.Sprintf("%d/%d %s %s %s", l.Earned, l.Remaining, l.EarnedAt.UTC().Format(time.RFC3339), l.AvailableAt.UTC().Format(time.RFC3339), l.ExpiresAt.UTC().Format(time.RFC3339)))
		}
		diff("lots", want, got)
		lots += len(got)
		want, got = nil, nil
		for _, m := range o.TierHistory(id) {
			want = append(want, fmt.Sprintf("%s→%s@%s %s", m.From, m.To, m.At.UTC().Format(time.RFC3339), m.Reason))
		}
		for _, m := range mem.history[id] {
			got = append(got, fmt.Sprintf("%s→%s@%s %s", m.From, m.To, m.At.UTC().Format(time.RFC3339), m.Reason))
		}
		diff("tier history", want, got)
		moves += len(got)
		eg := slices.Sorted(maps.Keys(st.Grants))
		og := o.Grants(id)
		if len(og) == 0 {
			og = nil
		}
		diff("grants", og, eg)
		grants += len(eg)
		oc := o.Coupons(id)
		if len(oc) == 0 {
			oc = map[string]map[string]int{}
		}
		diff("coupons", oc, couponSummary(st.Coupons, end))
		if len(diffs) > 20 {
			break
		}
	}
	refused := 0
	for _, n := range o.Refused() {
		refused += n
	}
	if refused != mem.refusals {
		t.Errorf("oracle refused %d operations, engine %d", refused, mem.refusals)
	}
	for _, d := range diffs {
		t.Error(d)
	}
	t.Logf("%d events, %d members: %d lots, %d tier moves, %d grants held, %d refusals; %d differences",
		len(stream), len(ids), lots, moves, grants, mem.refusals, len(diffs))
	if moves == 0 || grants == 0 || mem.refusals == 0 {
		t.Fatal("the stream exercised too little to compare")
	}
}

// The same agreement through the benefit worker's real path: every event
// applied with Service.Apply against PostgreSQL, then compared from the rows.
func TestWorkerAgreesWithOracle(t *testing.T) {
	for _, batch := range []int{1, 64} {
		t.Run(fmt.Sprintf("batches of %d", batch), func(t *testing.T) { testWorkerAgreesWithOracle(t, batch) })
	}
}

// testWorkerAgreesWithOracle applies the stream one event at a time
// (Apply) or in batches of consecutive events, as a partition's worker
// does (ApplyBatch).
func testWorkerAgreesWithOracle(t *testing.T, batch int) {
	f, _ := begin(t)
	c := ctxWithin(t, 10*time.Minute) // 2,000 events, one at a time: generous for a busy machine
	o, stream := generate(t, benefits.DefaultProgramSource(), 7, 150, 2_000)
	seen := map[string]bool{}
	var end time.Time
	for _, ev := range stream {
		if !seen[ev.GetMemberId()] {
			seen[ev.GetMemberId()] = true
			if err := postgres.InsertMember(c, f.pool, uuid.MustParse(ev.GetMemberId()), start2025); err != nil {
				t.Fatal(err)
			}
		}
		if at := ev.GetOccurredAt().AsTime(); at.After(end) {
			end = at
		}
	}
	for i := 0; i < len(stream); i += batch {
		chunk := stream[i:min(i+batch, len(stream))]
		if batch == 1 {
			if err := f.svc.Apply(c, chunk[0]); err != nil && !dlq.Rejected(err) {
				t.Fatalf("apply %s: %v", chunk[0].GetEventId(), err)
			}
			continue
		}
		rejected, err := f.svc.ApplyBatch(c, chunk)
		if err != nil {
			t.Fatalf("apply batch at %d: %v", i, err)
		}
		for k, reason := range rejected {
			if !dlq.Rejected(reason) {
				t.Fatalf("event %s refused with %v, not a data error", chunk[k].GetEventId(), reason)
			}
		}
	}
	end = end.AddDate(0, 1, 0)
	*f.clock = end
	f.advanceAll(t, c)
	var diffs []string
	for _, id := range o.Members() {
		o.AdvanceTo(id, end)
		member := uuid.MustParse(id)
		lots, err := postgres.ListLots(c, f.pool, member)
		if err != nil {
			t.Fatal(err)
		}
		sort.Slice(lots, func(i, j int) bool { return lots[i].LotID < lots[j].LotID })
		var want, got []string
		for _, l := range o.Lots(id) {
			want = append(want, fmt.Sprintf("%d/%d %s %s", l.Earned, l.Remaining, l.EarnedAt.UTC().Format(time.RFC3339), l.ExpiresAt.UTC().Format(time.RFC3339)))
		}
		for _, l := range lots {
			got = append(got, fmt.Sprintf("%d/%d %s %s", l.Earned, l.Remaining, l.EarnedAt.UTC().Format(time.RFC3339), l.ExpiresAt.UTC().Format(time.RFC3339)))
		}
		if !reflect.DeepEqual(want, got) {
			diffs = append(diffs, fmt.Sprintf("%s lots:\n oracle %v\n worker %v", id, want, got))
		}
		want, got = nil, nil
		for _, m := range o.TierHistory(id) {
			want = append(want, fmt.Sprintf("%s→%s@%s", m.From, m.To, m.At.UTC().Format(time.RFC3339)))
		}
		rows, err := f.pool.Query(c, `SELECT from_tier, to_tier, at FROM tier_history WHERE member_id = $1 ORDER BY id`, member)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var from, to string
			var at time.Time
			_ = rows.Scan(&from, &to, &at)
			got = append(got, fmt.Sprintf("%s→%s@%s", from, to, at.UTC().Format(time.RFC3339)))
		}
		rows.Close()
		if !reflect.DeepEqual(want, got) {
			diffs = append(diffs, fmt.Sprintf("%s tiers:\n oracle %v\n worker %v", id, want, got))
		}
		var grants []string
		rows, _ = f.pool.Query(c, `SELECT benefit_id FROM benefit_grants WHERE member_id = $1 ORDER BY benefit_id`, member)
		for rows.Next() {
			var g string
			_ = rows.Scan(&g)
			grants = append(grants, g)
		}
		rows.Close()
		if og := o.Grants(id); !reflect.DeepEqual(og, grants) && (len(og) > 0 || len(grants) > 0) {
			diffs = append(diffs, fmt.Sprintf("%s grants: oracle %v worker %v", id, og, grants))
		}
		if len(diffs) > 10 {
			break
		}
	}
	for _, d := range diffs {
		t.Error(d)
	}
}

var start2025 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
