package e2e_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/identity"
)

// TestOperatorActionsCarryTheAuthenticatedActor: with channel
// authentication on, an operator action's audit record names the client and
// the operator its token was minted for; a caller cannot name someone else
// with the actor header.
func TestOperatorActionsCarryTheAuthenticatedActor(t *testing.T) {
	e, a := startWithClients(t, nil, "clients:\n  - {id: backoffice, channel: backoffice, secret: "+clientSecret("b")+", scopes: [identity.*]}\n")
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
	var actors []string
	rows, err := e.pool.Query(ctx, `SELECT DISTINCT actor FROM identity_audit WHERE cause_id LIKE 'rpc:%' ORDER BY actor`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			t.Fatal(err)
		}
		actors = append(actors, a)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(actors) != 1 || actors[0] != "backoffice/alice" {
		t.Fatalf("audit actors of the operator's calls (merge %s): %v; want only backoffice/alice", m.GetMergeId(), actors)
	}
	// An operator name the audit cannot hold as is is refused at minting.
	if _, err := a.MintFor("backoffice", "alice; DROP", time.Minute); err == nil {
		t.Error("minting for an operator name with spaces and ';': want an error")
	}
}
