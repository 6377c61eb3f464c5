package benefits_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/benefits"
)

// as is c on behalf of operator actor (authentication off: auth.Actor
// takes it from the context).
func as(c context.Context, actor string) context.Context { return auth.WithActor(c, actor) }

// auditRow is one operator_audit record, as the tests compare them.
type auditRow struct {
	Actor, Action, Cause string
	Detail               map[string]any
}

func (f *fixture) audit(t *testing.T, member string) []auditRow {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT actor, action, cause_id, detail FROM operator_audit
		WHERE member_id = $1 ORDER BY audit_id`, uuid.MustParse(member))
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (auditRow, error) {
		var r auditRow
		var d []byte
		if err := row.Scan(&r.Actor, &r.Action, &r.Cause, &d); err != nil {
			return r, err
		}
		return r, json.Unmarshal(d, &r.Detail)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pointsChanges are the points changes written for member, in order.
func (f *fixture) pointsChanges(t *testing.T, member string) []*mcv1.MemberChange {
	t.Helper()
	var out []*mcv1.MemberChange
	for _, ch := range f.outboxChanges(t, member) {
		if ch.GetPointsChanged() != nil {
			out = append(out, ch)
		}
	}
	return out
}

func (f *fixture) balance(t *testing.T, c context.Context, member string) int64 {
	t.Helper()
	b, err := f.srv.GetBalance(c, &mcv1.GetBalanceRequest{MemberId: member})
	if err != nil {
		t.Fatal(err)
	}
	return b.GetAvailable()
}

func decide(approval string, approve bool, key string) *mcv1.DecideAdjustmentRequest {
	return &mcv1.DecideAdjustmentRequest{ApprovalId: approval, Approve: approve, Note: "checked " + key, IdempotencyKey: key}
}

// TestSmallAdjustmentAppliesAtOnceWithItsActor: an adjustment within
// limits.adjust_approval_points is applied by the call, and its operator is
// in the audit and on the change it made.
func TestSmallAdjustmentAppliesAtOnceWithItsActor(t *testing.T) {
	f, c, m := beginWithMember(t)
	resp, err := f.srv.Adjust(as(c, "backoffice/alice"), &mcv1.AdjustRequest{MemberId: m, Points: 10_000, Reason: "goodwill", IdempotencyKey: "small"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPending() || resp.GetApprovalId() != "" || resp.GetBalance() != 10_000 {
		t.Fatalf("adjustment at the threshold: %v; want applied, balance 10000", resp)
	}
	want := []auditRow{{Actor: "backoffice/alice", Action: "adjust.applied", Cause: "rpc:benefits.Adjust:small",
		Detail: map[string]any{"points": 10_000.0, "reason": "goodwill"}}}
	if got := f.audit(t, m); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("audit %v\nwant %v", got, want)
	}
	if ch := f.pointsChanges(t, m); len(ch) != 1 || ch[0].GetActor() != "backoffice/alice" || ch[0].GetApprover() != "" {
		t.Errorf("points changes %v; want one by backoffice/alice", ch)
	}
	// Without an actor (authentication off, no header), the audit says "api".
	if _, err := f.srv.Adjust(c, &mcv1.AdjustRequest{MemberId: m, Points: -5, Reason: "fix", IdempotencyKey: "anon"}); err != nil {
		t.Fatal(err)
	}
	if a := f.audit(t, m); len(a) != 2 || a[1].Actor != "api" {
		t.Errorf("audit %v; want a second record by api", a)
	}
}

// TestLargeAdjustmentWaitsForASecondOperator walks an adjustment above the
// threshold from its request to its approval: nothing moves until another
// operator approves, then the points move once, whatever is retried.
func TestLargeAdjustmentWaitsForASecondOperator(t *testing.T) {
	f, c, m := beginWithMember(t)
	alice, bob, carol := as(c, "backoffice/alice"), as(c, "backoffice/bob"), as(c, "backoffice/carol")
	f.adjust(t, alice, &mcv1.AdjustRequest{MemberId: m, Points: 1_000, Reason: "start", IdempotencyKey: "start"})
	big := &mcv1.AdjustRequest{MemberId: m, Points: 50_000, Reason: "store credit for lost order", IdempotencyKey: "big"}
	before := f.rows(t)

	req, err := f.srv.Adjust(alice, big)
	if err != nil {
		t.Fatal(err)
	}
	if !req.GetPending() || req.GetApprovalId() == "" || req.GetBalance() != 1_000 {
		t.Fatalf("large adjustment: %v; want pending with an approval id and the unchanged balance 1000", req)
	}
	id := req.GetApprovalId()
	// The same key, by anyone, is the same approval.
	for _, who := range []context.Context{alice, bob} {
		again, err := f.srv.Adjust(who, big)
		if err != nil || again.GetApprovalId() != id || !again.GetPending() {
			t.Fatalf("retry: %v, %v; want approval %s again", again, err, id)
		}
	}
	if got := f.balance(t, c, m); got != 1_000 {
		t.Fatalf("balance %d while pending, want 1000", got)
	}
	after := f.rows(t)
	if after[0] != before[0] || after[2] != before[2] || after[5] != before[5] {
		t.Fatalf("a pending adjustment wrote ledger, lots or changes: %v → %v", before, after)
	}
	list, err := f.srv.ListAdjustmentApprovals(c, &mcv1.ListAdjustmentApprovalsRequest{State: mcv1.AdjustmentState_ADJUSTMENT_STATE_PENDING, MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	if a := list.GetApprovals(); len(a) != 1 || a[0].GetApprovalId() != id || a[0].GetMaker() != "backoffice/alice" ||
		a[0].GetPoints() != 50_000 || a[0].GetDecidedAt() != nil {
		t.Fatalf("pending approvals %v", a)
	}

	// The maker cannot approve: refused, nothing changes.
	if _, err := f.srv.DecideAdjustment(alice, decide(id, true, "self")); !errors.Is(err, benefits.ErrSameOperator) {
		t.Fatalf("the maker approving: %v; want ErrSameOperator", err)
	}
	if got := f.balance(t, c, m); got != 1_000 {
		t.Fatalf("balance %d after the maker's refused approval, want 1000", got)
	}

	// Another operator approves: the points move, once.
	ok, err := f.srv.DecideAdjustment(bob, decide(id, true, "d1"))
	if err != nil {
		t.Fatal(err)
	}
	if ok.GetState() != mcv1.AdjustmentState_ADJUSTMENT_STATE_APPROVED || ok.GetBalance() != 51_000 {
		t.Fatalf("approval: %v; want APPROVED, balance 51000", ok)
	}
	for _, second := range []struct {
		c   context.Context
		req *mcv1.DecideAdjustmentRequest
	}{{bob, decide(id, true, "d2")}, {carol, decide(id, false, "d3")}} {
		_, err := f.srv.DecideAdjustment(second.c, second.req)
		if !errors.Is(err, benefits.ErrDecided) || !strings.Contains(err.Error(), "approved") {
			t.Fatalf("deciding again (%s): %v; want ErrDecided naming the state", second.req.GetIdempotencyKey(), err)
		}
	}
	retry, err := f.srv.DecideAdjustment(bob, decide(id, true, "d1"))
	if err != nil || !proto.Equal(retry, ok) {
		t.Fatalf("retry of the approval: %v, %v; want the first answer %v", retry, err, ok)
	}
	// The request retried after the approval still names it.
	if again, err := f.srv.Adjust(alice, big); err != nil || again.GetApprovalId() != id {
		t.Fatalf("retry of the request: %v, %v", again, err)
	}
	if got := f.balance(t, c, m); got != 51_000 {
		t.Fatalf("balance %d, want 51000: applied once", got)
	}
	var applied int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM ledger_transactions WHERE cause_id LIKE 'approval:%'`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != 1 {
		t.Fatalf("%d ledger transactions of the approval, want 1", applied)
	}

	// The change carries maker and checker; the audit has every step.
	ch := f.pointsChanges(t, m)
	last := ch[len(ch)-1]
	if last.GetActor() != "backoffice/alice" || last.GetApprover() != "backoffice/bob" || last.GetCauseId() != "approval:"+id ||
		last.GetPointsChanged().GetDelta() != 50_000 {
		t.Fatalf("the approved adjustment's change: %v", last)
	}
	var got []string
	for _, a := range f.audit(t, m) {
		got = append(got, fmt.Sprintf("%s %s maker=%v approver=%v approval=%v", a.Action, a.Actor, a.Detail["maker"], a.Detail["approver"],
			a.Detail["approval_id"] != nil))
	}
	want := []string{
		"adjust.applied backoffice/alice maker=<nil> approver=<nil> approval=false",
		"adjust.requested backoffice/alice maker=<nil> approver=<nil> approval=true",
		"adjust.approved backoffice/bob maker=backoffice/alice approver=<nil> approval=true",
		"adjust.applied backoffice/alice maker=<nil> approver=backoffice/bob approval=true",
	}
	// The approval's two records share a clock reading; order them as written.
	if !slices.Equal(got, want) {
		t.Fatalf("audit:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if _, err := f.srv.DecideAdjustment(bob, decide(uuid.NewString(), true, "unknown")); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("deciding an unknown approval: %v; want ErrNotFound", err)
	}
}

// TestRejectedAdjustmentNeverApplies: a rejection leaves the balance alone,
// and the rejected adjustment cannot be approved afterwards.
func TestRejectedAdjustmentNeverApplies(t *testing.T) {
	f, c, m := beginWithMember(t)
	req, err := f.srv.Adjust(as(c, "backoffice/alice"), &mcv1.AdjustRequest{MemberId: m, Points: 20_000, Reason: "typo?", IdempotencyKey: "r"})
	if err != nil {
		t.Fatal(err)
	}
	no, err := f.srv.DecideAdjustment(as(c, "backoffice/bob"), decide(req.GetApprovalId(), false, "no"))
	if err != nil {
		t.Fatal(err)
	}
	if no.GetState() != mcv1.AdjustmentState_ADJUSTMENT_STATE_REJECTED || no.GetBalance() != 0 {
		t.Fatalf("rejection: %v", no)
	}
	if _, err := f.srv.DecideAdjustment(as(c, "backoffice/carol"), decide(req.GetApprovalId(), true, "yes")); !errors.Is(err, benefits.ErrDecided) ||
		!strings.Contains(err.Error(), "rejected") {
		t.Fatalf("approving a rejected adjustment: %v; want ErrDecided naming rejected", err)
	}
	if got := f.balance(t, c, m); got != 0 {
		t.Fatalf("balance %d after a rejection, want 0", got)
	}
	if ch := f.pointsChanges(t, m); len(ch) != 0 {
		t.Fatalf("a rejected adjustment made changes: %v", ch)
	}
	list, err := f.srv.ListAdjustmentApprovals(c, &mcv1.ListAdjustmentApprovalsRequest{State: mcv1.AdjustmentState_ADJUSTMENT_STATE_REJECTED})
	if err != nil {
		t.Fatal(err)
	}
	if a := list.GetApprovals(); len(a) != 1 || a[0].GetChecker() != "backoffice/bob" || a[0].GetNote() != "checked no" || a[0].GetDecidedAt() == nil {
		t.Fatalf("rejected approvals %v", a)
	}
	if a := f.audit(t, m); len(a) != 2 || a[1].Action != "adjust.rejected" || a[1].Actor != "backoffice/bob" || a[1].Detail["maker"] != "backoffice/alice" {
		t.Fatalf("audit %v; want requested, then rejected by bob naming the maker", a)
	}
}

// TestConcurrentApproveAndRejectOneWins: an approval and a rejection of the
// same adjustment sent at once: exactly one of them wins, the other is
// refused as already decided, and the balance is the sum of what won.
func TestConcurrentApproveAndRejectOneWins(t *testing.T) {
	f, c, m := beginWithMember(t)
	const rounds = 6
	var want int64
	for i := range rounds {
		points := int64(11_000 + i)
		req, err := f.srv.Adjust(as(c, "backoffice/alice"), &mcv1.AdjustRequest{MemberId: m, Points: points, Reason: "race",
			IdempotencyKey: fmt.Sprintf("race-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 2)
		for j, d := range []struct {
			who     string
			approve bool
		}{{"backoffice/bob", true}, {"backoffice/carol", false}} {
			wg.Go(func() {
				<-start
				_, errs[j] = f.srv.DecideAdjustment(as(c, d.who), decide(req.GetApprovalId(), d.approve, fmt.Sprintf("%s-%d", d.who, i)))
			})
		}
		close(start)
		wg.Wait()
		switch {
		case errs[0] == nil && errors.Is(errs[1], benefits.ErrDecided):
			want += points
		case errs[1] == nil && errors.Is(errs[0], benefits.ErrDecided):
		default:
			t.Fatalf("round %d: approve %v, reject %v; want exactly one to win", i, errs[0], errs[1])
		}
	}
	if got := f.balance(t, c, m); got != want {
		t.Fatalf("balance %d, want %d (the approvals that won)", got, want)
	}
	var approved, applied int
	if err := f.pool.QueryRow(c, `SELECT (SELECT count(*) FROM adjustment_approvals WHERE state = 'approved'),
		(SELECT count(*) FROM operator_audit WHERE action = 'adjust.applied')`).Scan(&approved, &applied); err != nil {
		t.Fatal(err)
	}
	if approved != applied {
		t.Fatalf("%d approved, %d applied", approved, applied)
	}
}

// TestOperatorAuditIsAppendOnly: the database refuses to change or remove
// an audit record, or a decided approval.
func TestOperatorAuditIsAppendOnly(t *testing.T) {
	f, c, m := beginWithMember(t)
	req, err := f.srv.Adjust(as(c, "backoffice/alice"), &mcv1.AdjustRequest{MemberId: m, Points: -20_000, Reason: "clawback", IdempotencyKey: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.DecideAdjustment(as(c, "backoffice/bob"), decide(req.GetApprovalId(), false, "no")); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`UPDATE operator_audit SET actor = 'mallory'`,
		`DELETE FROM operator_audit`,
		`UPDATE adjustment_approvals SET state = 'approved', checker = 'backoffice/mallory'`,
		`DELETE FROM adjustment_approvals`,
	} {
		_, err := f.pool.Exec(c, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s: %v; want refused (insufficient_privilege)", sql, err)
		}
	}
	if a := f.audit(t, m); len(a) != 2 || a[0].Actor != "backoffice/alice" || a[1].Actor != "backoffice/bob" {
		t.Fatalf("audit after the refused statements: %v", a)
	}
}

// TestApprovalThresholdZeroTurnsApprovalsOff: with
// limits.adjust_approval_points 0, every adjustment within the maximum is
// applied at once.
func TestApprovalThresholdZeroTurnsApprovalsOff(t *testing.T) {
	f, c := begin(t)
	src := bytes.Replace(benefits.DefaultProgramSource(), []byte("adjust_approval_points: 10000"), []byte("adjust_approval_points: 0"), 1)
	src = bytes.Replace(src, []byte("version: default-1"), []byte("version: no-approvals-1"), 1)
	f.useProgram(t, c, src)
	m := f.member(t)
	resp, err := f.srv.Adjust(as(c, "backoffice/alice"), &mcv1.AdjustRequest{MemberId: m, Points: 5_000_000, Reason: "migration", IdempotencyKey: "m"})
	if err != nil || resp.GetPending() || resp.GetBalance() != 5_000_000 {
		t.Fatalf("%v, %v; want applied at once", resp, err)
	}
}

// TestListAdjustmentApprovalsPages: approvals come a page at a time, in
// the order of one page of all; a page token that is no approval's id (malformed, or a
// well-formed id of none, which listed an empty page) is ErrBadPageToken.
func TestListAdjustmentApprovalsPages(t *testing.T) {
	f, c, m := beginWithMember(t)
	var ids []string
	for i := range 3 {
		req, err := f.srv.Adjust(as(c, "backoffice/alice"), &mcv1.AdjustRequest{MemberId: m, Points: int64(12_000 + i), Reason: "pages",
			IdempotencyKey: fmt.Sprintf("pages-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, req.GetApprovalId())
	}
	var got []string
	token := ""
	for range 4 {
		page, err := f.srv.ListAdjustmentApprovals(c, &mcv1.ListAdjustmentApprovalsRequest{MemberId: m, PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page.GetApprovals() {
			got = append(got, a.GetApprovalId())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	all, err := f.srv.ListAdjustmentApprovals(c, &mcv1.ListAdjustmentApprovalsRequest{MemberId: m, PageSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, a := range all.GetApprovals() {
		want = append(want, a.GetApprovalId())
	}
	if !slices.Equal(got, want) || !slices.Equal(slices.Sorted(slices.Values(want)), slices.Sorted(slices.Values(ids))) {
		t.Fatalf("approvals listed by pages of 2 %v, in one page %v; want the same, the three requested %v", got, want, ids)
	}
	for _, token := range []string{"not-a-token", uuid.NewString()} {
		_, err := f.srv.ListAdjustmentApprovals(c, &mcv1.ListAdjustmentApprovalsRequest{MemberId: m, PageToken: token})
		if !errors.Is(err, benefits.ErrBadPageToken) {
			t.Errorf("page token %q: %v; want ErrBadPageToken", token, err)
		}
	}
}
