package benefitstest

// Labels a benefit may name, computed by the oracle itself from the
// definitions in docs/labels.md (never from services/tags): each is a
// count of the member's events of one kind in a rolling window compared
// with a threshold. Part of the test oracle, not production code.

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Kinds of events the oracle's labels count.
const (
	factPurchase = "purchase" // a Transaction event
	factShare    = "share"    // a Share event
	factReferral = "referral" // a Referral event
)

// window is "events of kind in the last days days" (a feature of
// docs/labels.md: orders_365d, shares_90d, referrals_90d, …).
type window struct {
	kind string
	days int
}

// labelDef is a bool label of docs/labels.md over window counts: holds
// gets the counts in the order of reads.
type labelDef struct {
	reads []window
	holds func(n []int) bool
}

// labelDefs are the labels the oracle knows, each as docs/labels.md
// defines it (the expression is quoted beside it). A programme whose
// benefits name any other label is refused by New: the oracle could not
// check it.
var labelDefs = map[string]labelDef{
	// orders_7d > 0 (and 30, 90, 365): at least one purchase in the window.
	"bought_7d":   {reads: []window{{factPurchase, 7}}, holds: func(n []int) bool { return n[0] > 0 }},
	"bought_30d":  {reads: []window{{factPurchase, 30}}, holds: func(n []int) bool { return n[0] > 0 }},
	"bought_90d":  {reads: []window{{factPurchase, 90}}, holds: func(n []int) bool { return n[0] > 0 }},
	"bought_365d": {reads: []window{{factPurchase, 365}}, holds: func(n []int) bool { return n[0] > 0 }},
	// shares_90d >= 3
	"sharer": {reads: []window{{factShare, 90}}, holds: func(n []int) bool { return n[0] >= 3 }},
	// shares_90d >= 10 || referrals_90d >= 3
	"social_influencer": {reads: []window{{factShare, 90}, {factReferral, 90}},
		holds: func(n []int) bool { return n[0] >= 10 || n[1] >= 3 }},
}

// KnownLabels returns the labels a programme's benefits may name for the
// oracle, sorted.
func KnownLabels() []string {
	out := make([]string, 0, len(labelDefs))
	for id := range labelDefs {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func checkLabel(benefit, label string) error {
	if _, ok := labelDefs[label]; !ok {
		return fmt.Errorf("programme: benefit %s: label %q is not one the oracle computes (%s)", benefit, label, strings.Join(KnownLabels(), ", "))
	}
	return nil
}

type fact struct {
	kind string
	at   time.Time
}

// labelFacts is what a member's labels are computed from: every event of
// a counted kind applied to the member once (by event id), whatever the
// programme made of it, and the label values last acted on.
type labelFacts struct {
	facts   []fact
	events  map[string]bool
	current map[string]bool // named label → value last acted on
	checked time.Time       // window ends up to here are acted on
}

// factKind is the kind of fact an event is for the labels, "" for none.
func factKind(ev *mcv1.MemberEvent) string {
	switch ev.GetPayload().(type) {
	case *mcv1.MemberEvent_Transaction:
		return factPurchase
	case *mcv1.MemberEvent_Share:
		return factShare
	case *mcv1.MemberEvent_Referral:
		return factReferral
	}
	return ""
}

const day = 24 * time.Hour

// inWindow says whether an event at r is in the last days days at now: the
// window is the days×24 hours ending at now, so r <= now < r + days.
func inWindow(r, now time.Time, days int) bool {
	return !now.Before(r) && now.Before(r.Add(time.Duration(days)*day))
}

// labelHolds computes one label at now from the facts.
func labelHolds(lf *labelFacts, label string, now time.Time) bool {
	if lf == nil {
		return false
	}
	def := labelDefs[label]
	n := make([]int, len(def.reads))
	for _, f := range lf.facts {
		for i, w := range def.reads {
			if f.kind == w.kind && inWindow(f.at, now, w.days) {
				n[i]++
			}
		}
	}
	return def.holds(n)
}

// namedValues computes every label the programme's benefits name at now.
func (o *Oracle) namedValues(lf *labelFacts, now time.Time) map[string]bool {
	out := make(map[string]bool, len(o.named))
	for _, l := range o.named {
		out[l] = labelHolds(lf, l, now)
	}
	return out
}

// holdsLabels says whether the member holds every one of labels at t.
func (o *Oracle) holdsLabels(memberID string, labels []string, t time.Time) bool {
	lf := o.labels[memberID]
	for _, l := range labels {
		if !labelHolds(lf, l, t) {
			return false
		}
	}
	return true
}

// windowEnds returns the instants in (after, upTo] at which one of the
// member's facts leaves a window a named label reads, sorted and unique.
func (o *Oracle) windowEnds(lf *labelFacts, after, upTo time.Time) []time.Time {
	var out []time.Time
	for _, l := range o.named {
		for _, w := range labelDefs[l].reads {
			for _, f := range lf.facts {
				if f.kind != w.kind {
					continue
				}
				e := f.at.Add(time.Duration(w.days) * day)
				if e.After(after) && !e.After(upTo) {
					out = append(out, e)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return slices.CompactFunc(out, time.Time.Equal)
}

// followLabels acts on the member's named labels that change with time
// alone (a window ending) in (checked, t], each at its instant, and moves
// checked to t.
func (o *Oracle) followLabels(memberID string, t time.Time) {
	lf := o.labels[memberID]
	if lf == nil {
		return
	}
	if !t.After(lf.checked) {
		return
	}
	for _, e := range o.windowEnds(lf, lf.checked, t) {
		o.labelChange(memberID, lf, e)
	}
	lf.checked = t
}

// foldLabelFact adds the event to the member's label facts (once per
// event id) and acts on a change of a named label at t.
func (o *Oracle) foldLabelFact(ev *mcv1.MemberEvent, t time.Time) {
	kind := factKind(ev)
	if kind == "" || len(o.named) == 0 {
		return
	}
	mid := ev.GetMemberId()
	lf := o.labels[mid]
	if lf == nil {
		lf = &labelFacts{events: map[string]bool{}, current: map[string]bool{}}
		o.labels[mid] = lf
	}
	if lf.events[ev.GetEventId()] {
		return
	}
	lf.events[ev.GetEventId()] = true
	lf.facts = append(lf.facts, fact{kind: kind, at: ev.GetOccurredAt().AsTime()})
	o.labelChange(mid, lf, t)
	if t.After(lf.checked) {
		lf.checked = t
	}
}

// labelChange recomputes the named labels at t and, when one changed
// since it was last acted on, re-evaluates the member's benefits at t: an
// operation without effect (month starts, expiry, benefits), which
// creates the member when it has no loyalty state yet.
func (o *Oracle) labelChange(memberID string, lf *labelFacts, t time.Time) {
	vals := o.namedValues(lf, t)
	changed := false
	for l, v := range vals {
		if lf.current[l] != v {
			changed = true
		}
	}
	if !changed {
		return
	}
	lf.current = vals
	m := o.members[memberID]
	if m == nil {
		m = newMember(memberID, t, o.monthOf(t))
		o.members[memberID] = m
	} else {
		if t.Before(m.clock) {
			t = m.clock
		}
		o.monthStarts(m, t)
		o.expire(m, t)
	}
	o.evalBenefits(m, t, false)
	m.clock = t
}

// Labels returns the labels the programme's benefits name that the member
// holds at at, sorted.
func (o *Oracle) Labels(memberID string, at time.Time) []string {
	var out []string
	for _, l := range o.named {
		if labelHolds(o.labels[memberID], l, at) {
			out = append(out, l)
		}
	}
	return out
}

// NamedLabels returns the labels the programme's benefits name, sorted.
func (o *Oracle) NamedLabels() []string { return slices.Clone(o.named) }

// LabelEdges returns, sorted, every instant at which a label the
// programme's benefits name changes for some member with time alone (an
// event leaving a window), as far as the events applied so far say. A
// harness runs the platform's scheduled jobs at these instants, so that
// both act on the change at the same time.
func (o *Oracle) LabelEdges() []time.Time {
	var out []time.Time
	for _, lf := range o.labels {
		if len(lf.facts) == 0 {
			continue
		}
		first := lf.facts[0].at
		for _, f := range lf.facts {
			if f.at.Before(first) {
				first = f.at
			}
		}
		for _, e := range o.windowEnds(lf, first, time.Unix(1<<40, 0)) {
			// Only the facts before e count: a fact at e itself is an
			// event's change, not time's.
			before := &labelFacts{}
			for _, f := range lf.facts {
				if f.at.Before(e) {
					before.facts = append(before.facts, f)
				}
			}
			for _, l := range o.named {
				if labelHolds(before, l, e.Add(-time.Nanosecond)) != labelHolds(before, l, e) {
					out = append(out, e)
					break
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return slices.CompactFunc(out, time.Time.Equal)
}

// BenefitChange is one grant or revocation of a benefit.
type BenefitChange struct {
	Benefit string
	Granted bool
	At      time.Time
}

// BenefitHistory returns every grant and revocation of the member's
// benefits, in order.
func (o *Oracle) BenefitHistory(memberID string) []BenefitChange {
	if m := o.members[memberID]; m != nil {
		return slices.Clone(m.benefitLog)
	}
	return nil
}
