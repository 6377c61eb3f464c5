package facts_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/membercenter/membercenter/pipeline/sink"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/facts"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

func TestWriteEventsAndChanges(t *testing.T) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(t)
	at := time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)
	ts := timestamppb.New(at)
	w := facts.Writer{W: clickhouse.NewWriter(conn), Now: func() time.Time { return at.Add(time.Second) }}

	events := []sink.Event{
		{Msg: &mcv1.MemberEvent{EventId: "e1", MemberId: "m1", OccurredAt: ts, IngestedAt: ts,
			Resolution: &mcv1.Resolution{OriginMemberId: "m0"},
			Payload: &mcv1.MemberEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "o1",
				Total: &mcv1.Money{Currency: "CNY", AmountMinor: 5000}, CouponCodes: []string{"C1", "C2", "C3"}}}}},
		{Msg: &mcv1.MemberEvent{EventId: "e2", MemberId: "m1", OccurredAt: ts, IngestedAt: ts,
			Payload: &mcv1.MemberEvent_Review{Review: &mcv1.Review{Sku: "sku-1", Rating: 4, TextLength: 120}}}},
	}
	if err := w.WriteEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT event_id, event_type, origin_member_id, coupon_count, review_rating
		FROM member_events FINAL ORDER BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id, typ, origin string
		var coupons uint16
		var rating uint8
		if err := rows.Scan(&id, &typ, &origin, &coupons, &rating); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s/%s/%s/%d/%d", id, typ, origin, coupons, rating))
	}
	rows.Close()
	// e2 has no resolution: its origin is its member.
	if want := "e1/transaction/m0/3/0 e2/review/m1/0/4"; strings.Join(got, " ") != want {
		t.Fatalf("events %q, want %q", got, want)
	}

	changes := []sink.Change{
		{Msg: &mcv1.MemberChange{MemberId: "m1", Sequence: 5, ChangeId: "c5", OccurredAt: ts, CauseId: "e1",
			Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: &mcv1.LabelsChanged{Labels: []*mcv1.LabelValue{
				{LabelId: "vip", Value: &mcv1.LabelValue_BoolValue{BoolValue: true}},
				{LabelId: "lifecycle_stage", Value: &mcv1.LabelValue_EnumValue{EnumValue: "loyal"},
					ComputedAt: timestamppb.New(at.Add(-time.Minute))},
				{LabelId: "spend_30d", Value: &mcv1.LabelValue_NumberValue{NumberValue: 1234.5}},
				{LabelId: "churn_risk", Cleared: true},
			}}}}},
		{Msg: &mcv1.MemberChange{MemberId: "m1", Sequence: 6, ChangeId: "c6", OccurredAt: ts, CauseId: "e1",
			Actor: "backoffice/alice", Approver: "backoffice/bob",
			Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{
				Kind: mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_REDEEM, Delta: -300, Balance: 700}}}},
		{Msg: &mcv1.MemberChange{MemberId: "m1", Sequence: 7, ChangeId: "c7", OccurredAt: ts, CauseId: "rpc:benefits.IssueCoupons:k:m1",
			Actor: "backoffice/carol",
			Change: &mcv1.MemberChange_CouponChanged{CouponChanged: &mcv1.CouponChanged{CouponId: "C10-m1-1", TemplateId: "C10",
				State: mcv1.CouponState_COUPON_STATE_ISSUED}}}},
	}
	// Twice, as after a redelivery: the label rows collapse.
	for range 2 {
		if err := w.WriteChanges(ctx, changes); err != nil {
			t.Fatal(err)
		}
	}
	rows, err = conn.Query(ctx, `SELECT label_id, value, cleared, sequence, changed_at, cause_id
		FROM label_changes FINAL ORDER BY label_id`)
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for rows.Next() {
		var label, value, cause string
		var cleared uint8
		var seq uint64
		var changed time.Time
		if err := rows.Scan(&label, &value, &cleared, &seq, &changed, &cause); err != nil {
			t.Fatal(err)
		}
		if seq != 5 || cause != "e1" {
			t.Errorf("%s: sequence %d cause %q", label, seq, cause)
		}
		got = append(got, fmt.Sprintf("%s=%s/%d@%s", label, value, cleared, changed.UTC().Format("15:04")))
	}
	rows.Close()
	want := "churn_risk=/1@10:30 lifecycle_stage=loyal/0@10:29 spend_30d=1234.5/0@10:30 vip=true/0@10:30"
	if strings.Join(got, " ") != want {
		t.Fatalf("label_changes %q\nwant %q", got, want)
	}
	var kind, actor, approver string
	if err := conn.QueryRow(ctx, `SELECT points_kind, actor, approver FROM member_changes FINAL WHERE sequence = 6`).Scan(&kind, &actor, &approver); err != nil {
		t.Fatal(err)
	}
	if kind != "redeem" || actor != "backoffice/alice" || approver != "backoffice/bob" {
		t.Fatalf("points_kind %q, actor %q, approver %q", kind, actor, approver)
	}
	// An operator's coupon names the operator too.
	var changeType string
	if err := conn.QueryRow(ctx, `SELECT change_type, actor, approver FROM member_changes FINAL WHERE sequence = 7`).Scan(&changeType, &actor, &approver); err != nil {
		t.Fatal(err)
	}
	if changeType != "coupon_changed" || actor != "backoffice/carol" || approver != "" {
		t.Fatalf("coupon change: %q, actor %q, approver %q", changeType, actor, approver)
	}
}

func TestLabelValueText(t *testing.T) {
	for _, tc := range []struct {
		v    *mcv1.LabelValue
		want string
	}{
		{&mcv1.LabelValue{Value: &mcv1.LabelValue_BoolValue{BoolValue: false}}, "false"},
		{&mcv1.LabelValue{Value: &mcv1.LabelValue_EnumValue{EnumValue: "at_risk"}}, "at_risk"},
		{&mcv1.LabelValue{Value: &mcv1.LabelValue_NumberValue{NumberValue: 0.1}}, "0.1"},
		{&mcv1.LabelValue{Value: &mcv1.LabelValue_NumberValue{NumberValue: 3}}, "3"},
		{&mcv1.LabelValue{Value: &mcv1.LabelValue_NumberValue{NumberValue: 1e21}}, "1e+21"},
		{&mcv1.LabelValue{}, ""},
	} {
		if got := facts.LabelValueText(tc.v); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.v, got, tc.want)
		}
	}
}

// TestKindsNameEveryPayload: Kind and ChangeType name a payload by its
// field of the oneof; the payloads, in the schema's order, are named by
// the vocabulary (the Kind constants, the change types member_changes
// holds), and a message without one is "unknown".
func TestKindsNameEveryPayload(t *testing.T) {
	kinds := []string{facts.KindTransaction, facts.KindRefund, facts.KindVisit, facts.KindBrowse, facts.KindSignUp,
		facts.KindCheckIn, facts.KindShare, facts.KindReferral, facts.KindReview}
	changeTypes := []string{"member_created", "points_changed", "tier_changed", "identity_changed", "attributes_changed",
		"consent_changed", "labels_changed", "benefit_changed", "coupon_changed", "member_erased"}
	for _, tc := range []struct {
		msg   proto.Message
		oneof protoreflect.Name
		name  func(proto.Message) string
		vocab []string
	}{
		{&mcv1.MemberEvent{}, "payload", func(m proto.Message) string { return facts.EventType(m.(*mcv1.MemberEvent)) }, kinds},
		{&mcv1.MemberChange{}, "change", func(m proto.Message) string { return facts.ChangeType(m.(*mcv1.MemberChange)) }, changeTypes},
	} {
		r := tc.msg.ProtoReflect()
		fields := r.Descriptor().Oneofs().ByName(tc.oneof).Fields()
		var named []string
		for i := range fields.Len() {
			fd := fields.Get(i)
			m := r.New()
			m.Set(fd, m.NewField(fd))
			named = append(named, tc.name(m.Interface()))
		}
		if got, want := strings.Join(named, " "), strings.Join(tc.vocab, " "); got != want {
			t.Errorf("the %s payloads are named %q, want %q", tc.oneof, got, want)
		}
		if got := tc.name(tc.msg); got != "unknown" {
			t.Errorf("%s without a payload: %q, want unknown", tc.oneof, got)
		}
	}
	if got := facts.Kind(&mcv1.MemberEvent{}); got != "" {
		t.Errorf("Kind without a payload: %q", got)
	}
}

// An identity change that reaches the sink after the erasure of the other
// member it names (its partition behind, or redelivered) is stored as the
// erasure leaves the rows stored before it: naming the member by id,
// without its identifiers or summaries, and without an audit row. A change
// naming a member not erased is stored whole.
func TestIdentityChangesNamingAnErasedMemberAreStoredBlanked(t *testing.T) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(t)
	at := time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)
	const erased, kept, hash = "01a20000-0000-7000-8000-0000000000e1", "01a20000-0000-7000-8000-0000000000e2", "9f86d081884c7d65"
	var asked []string
	w := facts.Writer{W: clickhouse.NewWriter(conn), Now: func() time.Time { return at },
		Erased: func(_ context.Context, members []string) ([]string, error) {
			asked = append(asked, members...)
			return []string{erased}, nil
		}}
	merge := func(seq uint64, other string) sink.Change {
		return sink.Change{Msg: &mcv1.MemberChange{MemberId: "m2", Sequence: seq, ChangeId: fmt.Sprintf("c%d", seq), OccurredAt: timestamppb.New(at),
			Change: &mcv1.MemberChange_IdentityChanged{IdentityChanged: &mcv1.IdentityChanged{
				Kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_MERGED, OtherMemberId: other, AuditId: fmt.Sprintf("a%d", seq),
				Identifiers: []*mcv1.IdentifierRef{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, ValueHash: hash, Masked: "139****5551"}},
				Before:      `{"source":{"identifiers":["phone:139****5551"]}}`, After: `{"identifiers":["phone:139****5551"]}`}}}}
	}
	if err := w.WriteChanges(ctx, []sink.Change{merge(1, erased), merge(2, kept)}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(asked, " ") != erased+" "+kept {
		t.Errorf("asked about %v; want the two other members", asked)
	}
	payloads := map[uint64]string{}
	rows, err := conn.Query(ctx, `SELECT sequence, payload FROM member_changes FINAL WHERE member_id = 'm2'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var seq uint64
		var p string
		if err := rows.Scan(&seq, &p); err != nil {
			t.Fatal(err)
		}
		payloads[seq] = p
	}
	rows.Close()
	if p := payloads[1]; p == "" || strings.Contains(p, hash) || strings.Contains(p, "5551") || !strings.Contains(p, erased) {
		t.Errorf("the change naming the erased member stored as %q; want it naming the member, without its identifiers or summaries", p)
	}
	if p := payloads[2]; !strings.Contains(p, hash) || !strings.Contains(p, "5551") {
		t.Errorf("the change naming a member not erased stored as %q; want it whole", p)
	}
	var audits []string
	rows, err = conn.Query(ctx, `SELECT audit_id FROM identity_audit FINAL ORDER BY audit_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			t.Fatal(err)
		}
		audits = append(audits, a)
	}
	rows.Close()
	if strings.Join(audits, " ") != "a2" {
		t.Errorf("audit rows %v; want only the one of the change naming a member not erased", audits)
	}
}
