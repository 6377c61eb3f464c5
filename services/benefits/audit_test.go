package benefits_test

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// TestIssuedCouponsAreAuditedOnceWithTheirOperator: every coupon an
// operator issues names the operator on its change and in the operator
// audit, one record per coupon, written with the coupon; a retried request
// (the same key, whoever sends it, however often, at once) writes nothing
// again, and a member the programme refuses gets no record.
func TestIssuedCouponsAreAuditedOnceWithTheirOperator(t *testing.T) {
	f, c := begin(t)
	m1, m2, full := f.member(t), f.member(t), f.member(t)
	alice := as(c, "backoffice/alice")
	// full already holds the most C10 coupons a member may (5).
	for i := range 5 {
		if _, err := f.srv.ClaimCoupon(c, &mcv1.ClaimCouponRequest{MemberId: full, TemplateId: "C10", IdempotencyKey: fmt.Sprint("claim", i)}); err != nil {
			t.Fatal(err)
		}
	}
	req := &mcv1.IssueCouponsRequest{TemplateId: "C10", MemberIds: []string{m1, m2, full}, Reason: "apology for the outage", IdempotencyKey: "outage"}
	resp, err := f.srv.IssueCoupons(alice, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetIssued() != 2 || resp.GetSkipped()[full] == "" {
		t.Fatalf("issued %d, skipped %v; want 2 issued and %s skipped", resp.GetIssued(), resp.GetSkipped(), full)
	}
	want := func(m string, n int, key string) auditRow {
		return auditRow{Actor: "backoffice/alice", Action: "coupon.issued", Cause: "rpc:benefits.IssueCoupons:" + key + ":" + m,
			Detail: map[string]any{"template": "C10", "code": fmt.Sprintf("C10-%s-%d", m, n), "cause": "issued: apology for the outage"}}
	}
	check := func(when string, n int) {
		t.Helper()
		for _, m := range []string{m1, m2} {
			wantRows := []auditRow{want(m, 1, "outage")}
			if n == 2 {
				wantRows = append(wantRows, want(m, 2, "outage-2"))
			}
			if got := f.audit(t, m); fmt.Sprint(got) != fmt.Sprint(wantRows) {
				t.Errorf("%s: audit of %s %v\nwant %v", when, m, got, wantRows)
			}
			var coupons []*mcv1.CouponChanged
			for _, ch := range f.outboxChanges(t, m) {
				if cc := ch.GetCouponChanged(); cc != nil {
					coupons = append(coupons, cc)
					if ch.GetActor() != "backoffice/alice" || ch.GetApprover() != "" {
						t.Errorf("%s: coupon change %v by %q; want backoffice/alice", when, cc, ch.GetActor())
					}
				}
			}
			if len(coupons) != n {
				t.Errorf("%s: %d coupon changes of %s; want %d", when, len(coupons), m, n)
			}
		}
		if a := f.audit(t, full); len(a) != 0 {
			t.Errorf("%s: a refused member has audit records %v", when, a)
		}
	}
	check("issued", 1)
	before := f.rows(t)

	// Retried: sequentially by another operator, then four at once.
	if _, err := f.srv.IssueCoupons(as(c, "backoffice/bob"), req); err != nil {
		t.Fatal(err)
	}
	if err := concurrently(4, func() error { _, err := f.srv.IssueCoupons(alice, req); return err }); err != nil {
		t.Fatal(err)
	}
	if after := f.rows(t); after != before {
		t.Errorf("a retried issue wrote rows: %v, before %v", after, before)
	}
	check("retried", 1)

	// A new request (a new key) raced by its retries: one more coupon, one
	// more record, each member.
	again := &mcv1.IssueCouponsRequest{TemplateId: "C10", MemberIds: []string{m1, m2}, Reason: req.GetReason(), IdempotencyKey: "outage-2"}
	if err := concurrently(3, func() error { _, err := f.srv.IssueCoupons(alice, again); return err }); err != nil {
		t.Fatal(err)
	}
	check("issued again", 2)
}

// concurrently calls fn n times at once and returns the first error.
func concurrently(n int, fn func() error) error {
	var g errgroup.Group
	for range n {
		g.Go(fn)
	}
	return g.Wait()
}

// TestIssueCouponsCountsAMemberListedTwiceOnce: a member listed more than
// once (in any case) is issued one coupon and counted once; before, each
// repeat replayed the first answer and was counted as issued again.
func TestIssueCouponsCountsAMemberListedTwiceOnce(t *testing.T) {
	f, c := begin(t)
	m, other := f.member(t), f.member(t)
	req := &mcv1.IssueCouponsRequest{TemplateId: "C10", MemberIds: []string{m, strings.ToUpper(m), other, m}, Reason: "apology", IdempotencyKey: "twice"}
	resp, err := f.srv.IssueCoupons(as(c, "backoffice/alice"), req)
	if err != nil {
		t.Fatal(err)
	}
	var held int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM coupons WHERE member_id = $1`, m).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if resp.GetIssued() != 2 || len(resp.GetSkipped()) != 0 || held != 1 {
		t.Errorf("issued %d, skipped %v, and the member listed three times holds %d coupons; want 2 issued (two members), none skipped, 1 coupon",
			resp.GetIssued(), resp.GetSkipped(), held)
	}
}
