package e2e_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/membercenter/membercenter/pipeline/relay"
	"github.com/membercenter/membercenter/pipeline/sink"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/auth"
)

// TestLargeAdjustmentNeedsASecondOperator: over gRPC with channel
// authentication on, alice's large Adjust waits for approval; alice cannot
// approve it, even naming bob in the actor header; bob approves it, and the
// points change it makes names both, on the change stream and in
// ClickHouse's member_changes.
func TestLargeAdjustmentNeedsASecondOperator(t *testing.T) {
	e, a := startWithClients(t, []string{relay.Stage, sink.Stage}, "clients:\n  - {id: backoffice, channel: backoffice, secret: "+clientSecret("c")+
		", scopes: [identity.*, benefits.*, sync.subscribe]}\n")
	ctx := within(t, 90*time.Second)
	token := func(operator string) string {
		tok, err := a.MintFor("backoffice", operator, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	alice := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token("alice"))
	bob := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token("bob"))

	r, err := mcv1.NewIdentityServiceClient(e.conn).Resolve(alice, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_BACKOFFICE,
		CreateIfMissing: true, IdempotencyKey: "mc-create", Identifiers: identifiers("13300000031", "c-mc")})
	if err != nil {
		t.Fatal(err)
	}
	member := r.GetMemberId()
	stream := e.subscribe(t, alice, &mcv1.SubscribeRequest{MemberIds: []string{member}})

	bens := mcv1.NewBenefitsServiceClient(e.conn)
	req, err := bens.Adjust(alice, &mcv1.AdjustRequest{MemberId: member, Points: 25_000, Reason: "compensation", IdempotencyKey: "mc-big"})
	if err != nil {
		t.Fatal(err)
	}
	if !req.GetPending() || req.GetApprovalId() == "" || req.GetBalance() != 0 {
		t.Fatalf("Adjust of 25,000: %v; want pending with an approval id, balance 0", req)
	}
	decide := &mcv1.DecideAdjustmentRequest{ApprovalId: req.GetApprovalId(), Approve: true, Note: "ticket 42", IdempotencyKey: "mc-ok"}
	// The header names bob; the token is alice's, and the token wins.
	spoof := metadata.AppendToOutgoingContext(alice, auth.ActorHeader, "backoffice/bob")
	if _, err := bens.DecideAdjustment(spoof, decide); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("alice approving her own adjustment: %v; want PermissionDenied", err)
	}
	if b, err := bens.GetBalance(alice, &mcv1.GetBalanceRequest{MemberId: member}); err != nil || b.GetAvailable() != 0 {
		t.Fatalf("balance after the refused approval: %v, %v; want 0", b, err)
	}
	ok, err := bens.DecideAdjustment(bob, decide)
	if err != nil {
		t.Fatal(err)
	}
	if ok.GetState() != mcv1.AdjustmentState_ADJUSTMENT_STATE_APPROVED || ok.GetBalance() != 25_000 {
		t.Fatalf("bob's approval: %v; want APPROVED, balance 25000", ok)
	}
	if _, err := bens.DecideAdjustment(bob, &mcv1.DecideAdjustmentRequest{ApprovalId: req.GetApprovalId(), Approve: true,
		IdempotencyKey: "mc-again"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("approving twice: %v; want FailedPrecondition", err)
	}

	for {
		c := nextChange(t, stream)
		if p := c.GetPointsChanged(); p != nil {
			if c.GetActor() != "backoffice/alice" || c.GetApprover() != "backoffice/bob" || p.GetDelta() != 25_000 {
				t.Fatalf("points change on the stream: %v; want 25000 by backoffice/alice approved by backoffice/bob", c)
			}
			break
		}
	}
	eventually(t, "the points change in ClickHouse names maker and checker", func() (bool, error) {
		var actor, approver string
		rows, err := e.ch.Query(ctx, `SELECT actor, approver FROM member_changes FINAL WHERE member_id = ? AND change_type = 'points_changed'`, member)
		if err != nil {
			return false, err
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			if err := rows.Scan(&actor, &approver); err != nil {
				return false, err
			}
			n++
		}
		if n > 1 || (n == 1 && (actor != "backoffice/alice" || approver != "backoffice/bob")) {
			t.Fatalf("member_changes: %d points changes, the last by %q approved by %q", n, actor, approver)
		}
		return n == 1, rows.Err()
	})
	var actions []string
	var action, actor string
	forEachRow(t, ctx, e.pool, []any{&action, &actor}, func() { actions = append(actions, action+" "+actor) },
		`SELECT action, actor FROM operator_audit ORDER BY audit_id`)
	if want := "adjust.requested backoffice/alice|adjust.approved backoffice/bob|adjust.applied backoffice/alice"; strings.Join(actions, "|") != want {
		t.Fatalf("operator audit %q, want %q", actions, want)
	}
}
