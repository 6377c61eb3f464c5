package identity_test

import (
	"testing"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/benefits"
)

// TestUnmergeReturnsAnApprovedAdjustmentToItsMember: while A is merged into
// B, an operator adjusts A's points. A small Adjust (applied at once) goes
// back to A on Unmerge, as Unmerge promises ("what was linked or earned
// since"). A large one (maker–checker) must too: it was requested for A,
// and ListAdjustmentApprovals for A lists it. The approval was
// recorded under B (the survivor at request time), not listed for A, and
// the approved points stayed with B after the unmerge (a black-box probe).
func TestUnmergeReturnsAnApprovedAdjustmentToItsMember(t *testing.T) {
	f, ctx := beginService(t)
	srv := benefits.NewServer(f.benefits)
	alice, bob := auth.WithActor(ctx, "ops/alice"), auth.WithActor(ctx, "ops/bob")
	a := f.resolve(t, "a", phone("13955530001")).GetMemberId()
	b := f.resolve(t, "b", phone("13955530002")).GetMemberId()
	m := f.merge(t, a, b, "same person", "m")

	if _, err := srv.Adjust(alice, &mcv1.AdjustRequest{MemberId: a, Points: 500, Reason: "small", IdempotencyKey: "small"}); err != nil {
		t.Fatal(err)
	}
	big, err := srv.Adjust(alice, &mcv1.AdjustRequest{MemberId: a, Points: 20_000, Reason: "big", IdempotencyKey: "big"})
	if err != nil || !big.GetPending() {
		t.Fatalf("large Adjust of A: %v, %v; want pending", big, err)
	}
	listed, err := srv.ListAdjustmentApprovals(ctx, &mcv1.ListAdjustmentApprovalsRequest{MemberId: a})
	if err != nil {
		t.Fatal(err)
	}
	if len(listed.GetApprovals()) != 1 {
		t.Errorf("ListAdjustmentApprovals for A lists %d approvals; want the one requested for A", len(listed.GetApprovals()))
	}
	// B's list holds the approvals of the members merged into it too: its
	// balance is what an approval changes.
	if listed, err = srv.ListAdjustmentApprovals(ctx, &mcv1.ListAdjustmentApprovalsRequest{MemberId: b}); err != nil ||
		len(listed.GetApprovals()) != 1 {
		t.Errorf("ListAdjustmentApprovals for B, A merged into it: %v, %v; want A's", listed.GetApprovals(), err)
	}
	if _, err := srv.DecideAdjustment(bob, &mcv1.DecideAdjustmentRequest{ApprovalId: big.GetApprovalId(), Approve: true, IdempotencyKey: "ok"}); err != nil {
		t.Fatal(err)
	}
	f.unmerge(t, m.GetMergeId(), "not the same person", "u")

	balA, err := srv.GetBalance(ctx, &mcv1.GetBalanceRequest{MemberId: a})
	if err != nil {
		t.Fatal(err)
	}
	balB, err := srv.GetBalance(ctx, &mcv1.GetBalanceRequest{MemberId: b})
	if err != nil {
		t.Fatal(err)
	}
	if balA.GetAvailable() != 20_500 || balB.GetAvailable() != 0 {
		t.Errorf("after Unmerge: A holds %d, B holds %d; want A 20500 (both adjustments were for A), B 0",
			balA.GetAvailable(), balB.GetAvailable())
	}
}
