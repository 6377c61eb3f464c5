package e2e_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/platform"
)

// TestExportMemberDataOverGRPC: after a purchase through the pipeline and
// an attribute update, ExportMemberData answers the member (with a
// member-bound token for it) with one JSON document holding its
// PostgreSQL rows — the raw phone and mobile among them — and its
// ClickHouse rows; a member-bound token for another member is refused, and
// so is a call without a token.
func TestExportMemberDataOverGRPC(t *testing.T) {
	e, a := startWithClients(t, platform.AllStages, `clients:
  - {id: pos, channel: pos, secret: `+clientSecret("p")+`, scopes: [identity.resolve]}
  - {id: app, channel: app, secret: `+clientSecret("a")+`, scopes: [profile.*, privacy.export], own_members: true}
`)
	ctx := within(t, 90*time.Second)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	posTok, _ := a.Mint("pos", time.Minute)
	const phone, mobile = "13300000031", "13600000032"
	resolve := func(key, phone string) string {
		r, err := mcv1.NewIdentityServiceClient(e.conn).Resolve(as(posTok), &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS,
			CreateIfMissing: true, IdempotencyKey: key, Identifiers: identifiers(phone, "")})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMemberId()
	}
	member, other := resolve("export-1", phone), resolve("export-2", "13300000033")
	memberTok, _ := a.Mint("app", time.Minute, member)
	otherTok, _ := a.Mint("app", time.Minute, other)

	e.publishEvent(t, ctx, phone, posTransaction("export-tx", phone, "", 8800))
	profiles := mcv1.NewProfileServiceClient(e.conn)
	if _, err := profiles.UpdateAttributes(as(memberTok), &mcv1.UpdateAttributesRequest{MemberId: member, IdempotencyKey: "export-attrs",
		Attributes: map[string]string{"mobile": mobile, "city": "Suzhou"}}); err != nil {
		t.Fatal(err)
	}
	// The purchase and the member's changes in ClickHouse (the sink is
	// asynchronous).
	eventually(t, "the purchase and the points it earned in ClickHouse", func() (bool, error) {
		var evs, points uint64
		if err := e.ch.QueryRow(ctx, `SELECT count() FROM member_events WHERE member_id = ?`, member).Scan(&evs); err != nil {
			return false, err
		}
		if err := e.ch.QueryRow(ctx, `SELECT count() FROM member_changes WHERE member_id = ? AND points_delta != 0`, member).Scan(&points); err != nil {
			return false, err
		}
		return evs > 0 && points > 0, nil
	})

	resp, err := profiles.ExportMemberData(as(memberTok), &mcv1.ExportMemberDataRequest{MemberId: member})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Format     string                      `json:"format"`
		MemberID   string                      `json:"member_id"`
		Members    []string                    `json:"members"`
		Postgres   map[string][]map[string]any `json:"postgres"`
		ClickHouse map[string][]map[string]any `json:"clickhouse"`
	}
	if err := json.Unmarshal([]byte(resp.GetDocument()), &doc); err != nil {
		t.Fatalf("document is not JSON: %v", err)
	}
	if resp.GetMemberId() != member || doc.MemberID != member || doc.Format != "membercenter.member-data.v1" || len(doc.Members) != 1 {
		t.Errorf("export of %s: member %s, document %q %s %v", member, resp.GetMemberId(), doc.Format, doc.MemberID, doc.Members)
	}
	if resp.GetExportedAt().AsTime().IsZero() {
		t.Error("no exported_at")
	}
	// PostgreSQL: decrypted identifiers and attributes, the order.
	var values []string
	for _, r := range doc.Postgres["member_identifiers"] {
		v, _ := r["value"].(string)
		values = append(values, v)
	}
	if len(values) != 1 || values[0] != "+86"+phone {
		t.Errorf("identifier values %v; want +86%s", values, phone)
	}
	if rows := doc.Postgres["members"]; len(rows) != 1 || rows[0]["attributes"].(map[string]any)["mobile"] != "+86"+mobile {
		t.Errorf("members rows %v", rows)
	}
	if rows := doc.Postgres["orders"]; len(rows) != 1 || rows[0]["order_id"] != "O-export-tx" {
		t.Errorf("orders rows %v", rows)
	}
	if len(doc.Postgres["ledger_entries"]) == 0 || len(doc.Postgres["identity_audit"]) == 0 {
		t.Errorf("no ledger entries or identity audit rows: %v", doc.Postgres)
	}
	// ClickHouse: the member's event and changes, nobody else's.
	if rows := doc.ClickHouse["member_events"]; len(rows) != 1 || rows[0]["order_id"] != "O-export-tx" {
		t.Errorf("ClickHouse member_events %v", rows)
	}
	if len(doc.ClickHouse["member_changes"]) == 0 {
		t.Error("no ClickHouse member_changes rows")
	}
	for table, rows := range doc.ClickHouse {
		for _, r := range rows {
			if r["member_id"] != member {
				t.Errorf("ClickHouse %s row of %v", table, r["member_id"])
			}
		}
	}
	if strings.Contains(resp.GetDocument(), other) {
		t.Errorf("the document names the other member %s", other)
	}

	// Member-bound: another member's token is refused; no token is refused.
	if _, err := profiles.ExportMemberData(as(otherTok), &mcv1.ExportMemberDataRequest{MemberId: member}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("export with another member's token: %v; want PermissionDenied", err)
	}
	if _, err := profiles.ExportMemberData(ctx, &mcv1.ExportMemberDataRequest{MemberId: member}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("export without a token: %v; want Unauthenticated", err)
	}
}
