package e2e_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/membercenter/membercenter/pipeline/relay"
	"github.com/membercenter/membercenter/pipeline/sink"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/identity"
)

// TestOperatorActionsCarryTheAuthenticatedActor: with channel
// authentication on, an operator action's audit record names the client and
// the operator its token was minted for; a caller cannot name someone else
// with the actor header. Coupons the operator issues name the operator in
// PostgreSQL's and ClickHouse's operator_audit and on their changes.
func TestOperatorActionsCarryTheAuthenticatedActor(t *testing.T) {
	e, a := startWithClients(t, []string{relay.Stage, sink.Stage}, "clients:\n  - {id: backoffice, channel: backoffice, secret: "+clientSecret("b")+", scopes: [identity.*, benefits.*]}\n")
	ctx := within(t, 60*time.Second)
	tok, err := a.MintFor("backoffice", "alice", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The token is alice's; the header claims mallory.
	as := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok, identity.ActorHeader, "mallory")
	ids := mcv1.NewIdentityServiceClient(e.conn)
	var members []string
	for i, phone := range []string{"13300000021", "13300000022"} {
		r, err := ids.Resolve(as, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_BACKOFFICE, CreateIfMissing: true,
			IdempotencyKey: "op-" + phone, Identifiers: identifiers(phone, "c-op-"+string(rune('a'+i)))})
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, r.GetMemberId())
	}
	m, err := ids.Merge(as, &mcv1.MergeRequest{SourceMemberId: members[0], TargetMemberId: members[1], Reason: "same shopper", IdempotencyKey: "op-merge"})
	if err != nil {
		t.Fatal(err)
	}
	actors := pgtest.Values[string](t, ctx, e.pool, `SELECT DISTINCT actor FROM identity_audit WHERE cause_id LIKE 'rpc:%' ORDER BY actor`)
	if len(actors) != 1 || actors[0] != "backoffice/alice" {
		t.Fatalf("audit actors of the operator's calls (merge %s): %v; want only backoffice/alice", m.GetMergeId(), actors)
	}

	// Coupons issued: the operator is on the coupon's change and in the
	// operator audit, in PostgreSQL and, through the running sink stage,
	// in ClickHouse.
	issued, err := mcv1.NewBenefitsServiceClient(e.conn).IssueCoupons(as, &mcv1.IssueCouponsRequest{TemplateId: "C10",
		MemberIds: members[1:], Reason: "welcome", IdempotencyKey: "op-coupons"})
	if err != nil || issued.GetIssued() != 1 {
		t.Fatalf("IssueCoupons: %v, %v", issued, err)
	}
	var pgActor string
	if err := e.pool.QueryRow(ctx, `SELECT string_agg(actor, ',') FROM operator_audit WHERE action = 'coupon.issued'`).Scan(&pgActor); err != nil ||
		pgActor != "backoffice/alice" {
		t.Errorf("coupon.issued in PostgreSQL by %q (%v); want once by backoffice/alice", pgActor, err)
	}
	eventually(t, "coupon.issued by backoffice/alice in ClickHouse operator_audit", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM operator_audit FINAL
			WHERE action = 'coupon.issued' AND actor = 'backoffice/alice' AND member_id = ?`, members[1]).Scan(&n)
		return n == 1, err
	})
	eventually(t, "the coupon change by backoffice/alice in ClickHouse member_changes", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM member_changes FINAL
			WHERE change_type = 'coupon_changed' AND actor = 'backoffice/alice' AND member_id = ?`, members[1]).Scan(&n)
		return n == 1, err
	})

	// An operator name the audit cannot hold as is is refused at minting.
	if _, err := a.MintFor("backoffice", "alice; DROP", time.Minute); err == nil {
		t.Error("minting for an operator name with spaces and ';': want an error")
	}
}
