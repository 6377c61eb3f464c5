package benefits_test

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/benefits/benefitstest"
	"github.com/membercenter/membercenter/services/changes"
	memberstage "github.com/membercenter/membercenter/services/members"
	"github.com/membercenter/membercenter/services/tags"
)

// TestLabelBenefitsAgreeWithOracle: benefits that follow labels, through
// the platform's own path, agree with the oracle, which computes those
// labels itself from docs/labels.md. The generated programme
// (benefitstest.LabelProgramme) has benefits naming sharer, bought_365d,
// bought_90d (with a tier) and social_influencer; its generated stream
// makes them change by shares, purchases, referrals and time passing (a
// year past the last purchases). Against real PostgreSQL and on one
// injected clock, every event is applied by the tag worker (tags.Service,
// the shipped catalogue) and the benefit worker (benefits.Service), in an
// order drawn per event as the two consumers race, then the queued label
// checks run (CheckLabels); or, drawn as often, by the two together
// (members.Applier, as a process that runs both stages does), which follows
// the labels in its own transaction. At every instant the oracle says a label ends
// with time alone (LabelEdges) the label sweep and the label checks run, at
// every month start the loyalty scheduler as well. After every event the
// member's grants, and after every tick everyone's, must be the oracle's;
// at the end, every member's history of grants and revocations with their
// times, lots and coupons. MC_LABEL_ORACLE_EVENTS sets the stream's size.
func TestLabelBenefitsAgreeWithOracle(t *testing.T) {
	// The sweep recomputes every member with features at every tick (their
	// features change daily), and the ticks grow with the members: the
	// cost grows with their square.
	members, events := streamSize("MC_LABEL_ORACLE_EVENTS", [2]int{60, 800}, [2]int{40, 500}, func(events int) int { return events * 3 / 40 })
	src, err := benefitstest.LabelProgramme(benefits.DefaultProgramSource())
	if err != nil {
		t.Fatal(err)
	}
	gen, stream := generate(t, src, 20261205, members, events)
	// The oracle the platform is compared with replays the stream in step.
	o, err := benefitstest.New(src)
	if err != nil {
		t.Fatal(err)
	}

	c := ctxWithin(t, 15*time.Minute) // generous: the machine may be busy with other work
	pool := pgtest.NewPool(t, nil)
	clock := start2025
	now := func() time.Time { return clock }
	bs := benefits.New(pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	bs.SetClock(now)
	if _, err := benefits.LoadProgram(c, pool, src); err != nil {
		t.Fatal(err)
	}
	if err := bs.Reload(c); err != nil {
		t.Fatal(err)
	}
	ts := tags.New(pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	ts.SetClock(now)
	// As services/platform wires them: the tag worker queues members whose
	// labels a benefit of the programme depends on changed.
	ts.SetBenefitLabels(bs.DependsOnLabel)
	for _, l := range o.NamedLabels() {
		if !ts.Known(l) || !bs.DependsOnLabel(l) {
			t.Fatalf("label %s: in the catalogue %v, followed by benefits %v", l, ts.Known(l), bs.DependsOnLabel(l))
		}
	}

	together := memberstage.Applier{Tags: ts, Benefits: bs}

	var end time.Time
	ids := map[string]bool{}
	for _, ev := range stream {
		if !ids[ev.GetMemberId()] {
			ids[ev.GetMemberId()] = true
			if err := postgres.InsertMember(c, pool, uuid.MustParse(ev.GetMemberId()), start2025); err != nil {
				t.Fatal(err)
			}
		}
		if at := ev.GetOccurredAt().AsTime(); at.After(end) {
			end = at
		}
	}
	// The ticks: month starts and the instants labels end with time alone,
	// until a month after the last event and a day after every label has
	// ended (a year after the last purchases).
	edges := gen.LabelEdges()
	end = end.AddDate(0, 1, 0)
	if len(edges) > 0 && edges[len(edges)-1].After(end) {
		end = edges[len(edges)-1].Add(24 * time.Hour)
	}
	loc, _ := time.LoadLocation("Asia/Shanghai")
	scheduler := map[time.Time]bool{end: true}
	for ms := time.Date(2025, 2, 1, 0, 0, 0, 0, loc); !ms.After(end); ms = ms.AddDate(0, 1, 0) {
		scheduler[ms.UTC()] = true
	}
	ticks := slices.Collect(maps.Keys(scheduler))
	ticks = append(ticks, edges...)
	slices.SortFunc(ticks, time.Time.Compare)
	ticks = slices.CompactFunc(ticks, time.Time.Equal)

	var a agreement
	checkLabels := func() {
		for {
			n, err := bs.CheckLabels(c, 100)
			if err != nil {
				t.Fatal(err)
			}
			a.checks += n
			if n < 100 {
				return
			}
		}
	}
	// A tick runs the label sweep and the label checks; at month starts
	// (and at the end) the loyalty scheduler too, for month starts on time.
	// Elsewhere the scheduler is left out for time: what it does there is
	// expiry, which an operation does first anyway (§1), whenever it runs.
	tick := func(at time.Time) {
		clock = at
		n, err := ts.Sweep(c, 500)
		if err != nil {
			t.Fatal(err)
		}
		a.swept += n
		checkLabels()
		for scheduler[at] {
			n, err := bs.Advance(c, 500)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
		o.AdvanceAll(at)
		a.compareAll(t, c, pool, o, at)
	}
	order := rand.New(rand.NewPCG(20261205, 14))
	ti := 0
	for _, ev := range stream {
		at := ev.GetOccurredAt().AsTime()
		for ; ti < len(ticks) && !ticks[ti].After(at); ti++ {
			tick(ticks[ti])
		}
		clock = at
		// The two workers consume member events independently: either may
		// get to an event first.
		applyTags := func() {
			if err := ts.Apply(c, ev); err != nil {
				t.Fatalf("tags: event %s: %v", ev.GetEventId(), err)
			}
		}
		applyBenefits := func() {
			if err := bs.Apply(c, ev); err != nil && !dlq.Rejected(err) {
				t.Fatalf("benefits: event %s: %v", ev.GetEventId(), err)
			}
		}
		// Or, as a process that runs both stages does, one worker applies
		// it for both in one transaction, labels first, and follows the
		// labels it changed in that transaction: no label check runs.
		applyTogether := func() {
			if err := together.Apply(c, ev); err != nil && !dlq.Rejected(err) {
				t.Fatalf("members: event %s: %v", ev.GetEventId(), err)
			}
		}
		switch order.IntN(3) {
		case 0:
			applyTags()
			applyBenefits()
			checkLabels()
			a.tagsFirst++
		case 1:
			applyBenefits()
			applyTags()
			checkLabels()
		default:
			applyTogether()
			a.together++
		}
		if err := o.Apply(ev); err != nil {
			t.Fatal(err)
		}
		a.compareMember(t, c, pool, o, ev.GetMemberId(), at)
		if len(a.diffs) > 10 {
			break
		}
	}
	for ; ti < len(ticks) && len(a.diffs) <= 10; ti++ {
		tick(ticks[ti])
	}
	if len(a.diffs) <= 10 {
		a.compareEnd(t, c, pool, o, end)
	}
	for _, d := range a.diffs {
		t.Error(d)
	}
	t.Logf("%d events (%d applied by the tag worker first, %d by both stages together), %d members, %d ticks; %d label checks, %d members swept",
		len(stream), a.tagsFirst, a.together, len(ids), len(ticks), a.checks, a.swept)
	t.Logf("grants compared %d times for one member and %d times for all (%d benefits held in all); "+
		"%d grants and %d revocations of benefits following labels (%v) and %d of other benefits compared with their times; %d differences",
		a.memberSteps, a.allSteps, a.held, a.labelGrants, a.labelRevokes, a.byBenefit, a.otherChanges, len(a.diffs))
	for b := range labelBenefits {
		if a.byBenefit != nil && (a.byBenefit[b] == 0 || a.revokedBy[b] == 0) {
			t.Errorf("%s granted %d times and revoked %d: the stream exercised too little to compare", b, a.byBenefit[b], a.revokedBy[b])
		}
	}
}

// agreement collects what the comparison compared and how it differed.
type agreement struct {
	diffs                     []string
	memberSteps, allSteps     int
	held                      int
	labelGrants, labelRevokes int
	otherChanges              int
	byBenefit, revokedBy      map[string]int
	checks, swept, tagsFirst  int
	together                  int
}

// labelBenefits are the benefits of benefitstest.LabelProgramme.
var labelBenefits = map[string]bool{"sharer_perk": true, "buyer_perk": true, "regular_perk": true, "influencer_badge": true}

func grantRows(t *testing.T, c context.Context, pool *pgxpool.Pool, member string) map[string][]string {
	t.Helper()
	q := `SELECT member_id::text, benefit_id FROM benefit_grants ORDER BY 1, 2`
	args := []any{}
	if member != "" {
		q = `SELECT member_id::text, benefit_id FROM benefit_grants WHERE member_id = $1 ORDER BY 1, 2`
		args = append(args, uuid.MustParse(member))
	}
	type grant struct{ Member, Benefit string }
	rows, _ := pool.Query(c, q, args...) // its error is CollectRows'
	grants, err := pgx.CollectRows(rows, pgx.RowToStructByPos[grant])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, g := range grants {
		out[g.Member] = append(out[g.Member], g.Benefit)
	}
	return out
}

func (a *agreement) compareMember(t *testing.T, c context.Context, pool *pgxpool.Pool, o *benefitstest.Oracle, member string, at time.Time) {
	t.Helper()
	a.memberSteps++
	got := grantRows(t, c, pool, member)[member]
	want := o.Grants(member)
	a.held += len(want)
	if !slices.Equal(want, got) {
		a.diffs = append(a.diffs, fmt.Sprintf("%s after its event at %s: oracle holds %v, platform %v (labels %v)",
			member, at.Format(time.RFC3339), want, got, o.Labels(member, at)))
	}
}

func (a *agreement) compareAll(t *testing.T, c context.Context, pool *pgxpool.Pool, o *benefitstest.Oracle, at time.Time) {
	t.Helper()
	a.allSteps++
	rows := grantRows(t, c, pool, "")
	for _, id := range o.Members() {
		want, got := o.Grants(id), rows[id]
		a.held += len(want)
		if !slices.Equal(want, got) {
			a.diffs = append(a.diffs, fmt.Sprintf("%s at %s: oracle holds %v, platform %v (labels %v)",
				id, at.Format(time.RFC3339), want, got, o.Labels(id, at)))
		}
		delete(rows, id)
	}
	for id, got := range rows {
		a.diffs = append(a.diffs, fmt.Sprintf("%s at %s: unknown to the oracle, platform holds %v", id, at.Format(time.RFC3339), got))
	}
}

// compareEnd compares every member's benefit history (with times), lots
// and coupons.
func (a *agreement) compareEnd(t *testing.T, c context.Context, pool *pgxpool.Pool, o *benefitstest.Oracle, end time.Time) {
	t.Helper()
	a.byBenefit, a.revokedBy = map[string]int{}, map[string]int{}
	type change struct {
		benefit string
		granted bool
		at      time.Time
	}
	hist := map[string][]change{}
	rows, err := pool.Query(c, `SELECT member_id::text, benefit_id, granted, at FROM benefit_history ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var m string
		var ch change
		if err := rows.Scan(&m, &ch.benefit, &ch.granted, &ch.at); err != nil {
			t.Fatal(err)
		}
		hist[m] = append(hist[m], ch)
	}
	rows.Close()
	format := func(cs []change) []string {
		// Changes at one instant come in the order their operations ran,
		// which the race of the two workers decides; a benefit's own
		// changes keep their order.
		slices.SortStableFunc(cs, func(x, y change) int {
			return cmp.Or(x.at.Compare(y.at), strings.Compare(x.benefit, y.benefit))
		})
		out := make([]string, len(cs))
		for i, ch := range cs {
			sign := "-"
			if ch.granted {
				sign = "+"
			}
			out[i] = sign + ch.benefit + "@" + ch.at.UTC().Format(time.RFC3339)
		}
		return out
	}
	for _, id := range o.Members() {
		var want []change
		for _, ch := range o.BenefitHistory(id) {
			want = append(want, change{ch.Benefit, ch.Granted, ch.At})
			switch {
			case !labelBenefits[ch.Benefit]:
				a.otherChanges++
			case ch.Granted:
				a.labelGrants++
				a.byBenefit[ch.Benefit]++
			default:
				a.labelRevokes++
				a.revokedBy[ch.Benefit]++
			}
		}
		if w, g := format(want), format(hist[id]); !slices.Equal(w, g) {
			a.diffs = append(a.diffs, fmt.Sprintf("%s benefit history:\n oracle   %v\n platform %v", id, w, g))
		}

		member := uuid.MustParse(id)
		lots, err := postgres.ListLots(c, pool, member)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(lots, func(x, y postgres.Lot) int { return cmp.Compare(x.LotID, y.LotID) })
		var wl, gl []string
		for _, l := range o.Lots(id) {
			wl = append(wl, fmt.Sprintf("%d/%d %s", l.Earned, l.Remaining, l.EarnedAt.UTC().Format(time.RFC3339)))
		}
		for _, l := range lots {
			gl = append(gl, fmt.Sprintf("%d/%d %s", l.Earned, l.Remaining, l.EarnedAt.UTC().Format(time.RFC3339)))
		}
		if !slices.Equal(wl, gl) {
			a.diffs = append(a.diffs, fmt.Sprintf("%s lots:\n oracle   %v\n platform %v", id, wl, gl))
		}

		gc := map[string]map[string]int{}
		crows, err := pool.Query(c, `SELECT template_id, state, valid_until FROM coupons WHERE member_id = $1`, member)
		if err != nil {
			t.Fatal(err)
		}
		for crows.Next() {
			var tpl, state string
			var until time.Time
			if err := crows.Scan(&tpl, &state, &until); err != nil {
				t.Fatal(err)
			}
			if state != "used" && !end.Before(until) {
				state = "expired"
			}
			if gc[tpl] == nil {
				gc[tpl] = map[string]int{}
			}
			gc[tpl][state]++
		}
		crows.Close()
		if wc := o.Coupons(id); !reflect.DeepEqual(wc, gc) {
			a.diffs = append(a.diffs, fmt.Sprintf("%s coupons: oracle %v, platform %v", id, wc, gc))
		}
	}
	for id := range hist {
		if !slices.Contains(o.Members(), id) {
			a.diffs = append(a.diffs, fmt.Sprintf("%s: unknown to the oracle, platform history %v", id, format(hist[id])))
		}
	}
}
