package benefits_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/benefits"
)

// sharerProgramme is the default programme with a benefit that follows the
// sharer label.
func sharerProgramme(t *testing.T, f *fixture) {
	t.Helper()
	src := bytes.Replace(benefits.DefaultProgramSource(), []byte("benefits:\n"),
		[]byte("benefits:\n  - {id: sharer_perk, name: Sharer perk, labels: [sharer]}\n"), 1)
	src = bytes.Replace(src, []byte("version: default-1"), []byte("version: sharer-1"), 1)
	f.useProgram(t, ctx(t), src)
}

// setSharer sets or clears the member's sharer label, as the tag stage
// does, and queues the member for the benefits' label check.
func setSharer(t *testing.T, f *fixture, member uuid.UUID, set bool) {
	t.Helper()
	b := &pgx.Batch{}
	lm := postgres.LabelMembership{Member: member} // its only label
	if set {
		lm.Labels = []string{"sharer"}
	}
	postgres.QueueLabelMembershipBatch(b, []postgres.LabelMembership{lm}, *f.clock)
	postgres.QueueBenefitLabelChecks(b, []uuid.UUID{member})
	if err := f.pool.SendBatch(ctx(t), b).Close(); err != nil {
		t.Fatal(err)
	}
}

// TestBenefitsFollowLabelChanges: a member queued because a label a benefit
// depends on changed gets the benefit when the label holds and loses it
// when it no longer does, once per queued change; a label no benefit reads
// is not followed.
func TestBenefitsFollowLabelChanges(t *testing.T) {
	f, c := begin(t)
	sharerProgramme(t, f)
	if !f.svc.DependsOnLabel("sharer") || f.svc.DependsOnLabel("coffee_lover") {
		t.Fatalf("DependsOnLabel: sharer %v, coffee_lover %v; want true, false", f.svc.DependsOnLabel("sharer"), f.svc.DependsOnLabel("coffee_lover"))
	}
	m := f.member(t)
	id := uuid.MustParse(m)
	labelAndQueue := func(set bool) { t.Helper(); setSharer(t, f, id, set) }
	holds := func() bool {
		t.Helper()
		return slices.Contains(f.benefitIDs(t, c, m), "sharer_perk")
	}
	check := func(wantTaken int) {
		t.Helper()
		n, err := f.svc.CheckLabels(c, 100)
		if err != nil {
			t.Fatal(err)
		}
		if n != wantTaken {
			t.Fatalf("CheckLabels took %d members, want %d", n, wantTaken)
		}
	}

	labelAndQueue(true)
	if holds() {
		t.Fatal("sharer_perk held before its label change was checked")
	}
	check(1)
	if !holds() {
		t.Fatal("sharer_perk not granted once the sharer label holds")
	}
	check(0) // the queue is empty: nothing is taken twice
	outbox := f.rows(t)[5]

	labelAndQueue(false)
	check(1)
	if holds() {
		t.Fatal("sharer_perk still held after the sharer label stopped holding")
	}
	if f.rows(t)[5] <= outbox {
		t.Error("the revocation published no member change")
	}
}

// TestPendingRevokeIsStoredAsItChanges: a benefit revoked at the month's
// end stays held, marked pending revocation, once its label stops holding;
// the mark is stored when it is set and when it is lifted again, and a
// check that changes nothing leaves it as it is.
func TestPendingRevokeIsStoredAsItChanges(t *testing.T) {
	f, c := begin(t)
	src := bytes.Replace(benefits.DefaultProgramSource(), []byte("benefits:\n"),
		[]byte("benefits:\n  - {id: sharer_badge, name: Sharer badge, labels: [sharer], revoke: end_of_month}\n"), 1)
	f.useProgram(t, c, bytes.Replace(src, []byte("version: default-1"), []byte("version: badge-1"), 1))
	m := f.member(t)
	id := uuid.MustParse(m)
	label := func(set bool) {
		t.Helper()
		setSharer(t, f, id, set)
		if _, err := f.svc.CheckLabels(c, 100); err != nil {
			t.Fatal(err)
		}
	}
	pending := func(when string) bool {
		t.Helper()
		var p bool
		if err := f.pool.QueryRow(c, `SELECT pending_revoke FROM benefit_grants WHERE member_id = $1 AND benefit_id = 'sharer_badge'`, id).Scan(&p); err != nil {
			t.Fatalf("sharer_badge %s: %v", when, err)
		}
		return p
	}
	label(true)
	if pending("granted") {
		t.Fatal("a benefit just granted is pending revocation")
	}
	label(false)
	if !pending("once the label stopped holding") {
		t.Fatal("the benefit whose label stopped holding is not marked for revocation at the month's end")
	}
	label(false) // checked again, nothing changes
	if !pending("checked again") {
		t.Fatal("a check that changed nothing lifted the pending revocation")
	}
	label(true)
	if pending("once the label holds again") {
		t.Fatal("the pending revocation stayed after the label held again")
	}
}

// TestALabelCheckSharesALimitedCouponAcrossItsMembers: two members whose
// label a benefit follows are checked in one pass, and the benefit gives a
// coupon of which one is left: the first member (in id order) gets it, the
// second the benefit without it, and the pass goes through.
func TestALabelCheckSharesALimitedCouponAcrossItsMembers(t *testing.T) {
	f, c := begin(t)
	src := bytes.Replace(benefits.DefaultProgramSource(), []byte("benefits:\n"),
		[]byte("benefits:\n  - {id: sharer_perk, name: Sharer perk, labels: [sharer], coupon: P10}\n"), 1)
	src = bytes.Replace(src, []byte("total_limit: 100000"), []byte("total_limit: 1"), 1)
	f.useProgram(t, c, bytes.Replace(src, []byte("version: default-1"), []byte("version: sharer-coupon-1"), 1))
	a, b := uuid.MustParse(f.member(t)), uuid.MustParse(f.member(t))
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	setSharer(t, f, a, true)
	setSharer(t, f, b, true)
	if n, err := f.svc.CheckLabels(c, 100); err != nil || n != 2 {
		t.Fatalf("CheckLabels: %d members, %v; want 2 and no error", n, err)
	}
	for _, m := range []uuid.UUID{a, b} {
		if !slices.Contains(f.benefitIDs(t, c, m.String()), "sharer_perk") {
			t.Fatalf("member %s has no sharer_perk", m)
		}
	}
	var holders []uuid.UUID
	rows, err := f.pool.Query(c, `SELECT member_id FROM coupons WHERE template_id = 'P10'`)
	if err != nil {
		t.Fatal(err)
	}
	if holders, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
		t.Fatal(err)
	}
	if len(holders) != 1 || holders[0] != a {
		t.Fatalf("P10 coupons held by %v; want one, by %s", holders, a)
	}
}
