package contract_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/contract"
)

const member = "01a24e98-ea2d-76fa-b586-8372a497a4ff"

// occurred is any instant: the checks ask only that a time be valid.
var occurred = time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC)

func TestCheckMemberEvent(t *testing.T) {
	good := func() *mcv1.MemberEvent {
		return &mcv1.MemberEvent{EventId: "e1", MemberId: member, OccurredAt: timestamppb.New(occurred)}
	}
	if err := contract.CheckMemberEvent(good()); err != nil {
		t.Fatalf("a well-formed event: %v", err)
	}
	for name, tc := range map[string]struct {
		edit func(*mcv1.MemberEvent)
		want string
	}{
		"empty":          {func(e *mcv1.MemberEvent) { *e = mcv1.MemberEvent{} }, "without event_id or member_id"},
		"no event id":    {func(e *mcv1.MemberEvent) { e.EventId = "" }, "without event_id"},
		"member no UUID": {func(e *mcv1.MemberEvent) { e.MemberId = "not-a-uuid" }, `member_id "not-a-uuid"`},
		"no time":        {func(e *mcv1.MemberEvent) { e.OccurredAt = nil }, "occurred_at"},
		"nanos 2e9":      {func(e *mcv1.MemberEvent) { e.OccurredAt.Nanos = 2e9 }, "occurred_at"},
	} {
		ev := good()
		tc.edit(ev)
		if err := contract.CheckMemberEvent(ev); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error naming %q", name, err, tc.want)
		}
	}
}

func TestCheckMemberChange(t *testing.T) {
	good := func() *mcv1.MemberChange {
		return &mcv1.MemberChange{MemberId: member, Sequence: 1, ChangeId: "c1", OccurredAt: timestamppb.New(occurred),
			Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{Delta: 5}}}
	}
	if err := contract.CheckMemberChange(good()); err != nil {
		t.Fatalf("a well-formed change: %v", err)
	}
	// A change of a kind added after this binary was built: field 40,
	// unknown here, a message of its own.
	later := good()
	later.Change = nil
	later.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 40, protowire.BytesType), []byte{0x08, 0x01}))
	if err := contract.CheckMemberChange(later); err != nil {
		t.Errorf("a change of a kind added later: %v; want it passed on", err)
	}
	for name, tc := range map[string]struct {
		edit func(*mcv1.MemberChange)
		want string
	}{
		"empty":          {func(c *mcv1.MemberChange) { *c = mcv1.MemberChange{} }, "member_id"},
		"member no UUID": {func(c *mcv1.MemberChange) { c.MemberId = "x" }, `member_id "x"`},
		"no sequence":    {func(c *mcv1.MemberChange) { c.Sequence = 0 }, "without a sequence"},
		"no change id":   {func(c *mcv1.MemberChange) { c.ChangeId = "" }, "without a change_id"},
		"no change":      {func(c *mcv1.MemberChange) { c.Change = nil }, "carries no change"},
		"no time":        {func(c *mcv1.MemberChange) { c.OccurredAt = nil }, "occurred_at"},
	} {
		c := good()
		tc.edit(c)
		if err := contract.CheckMemberChange(c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error naming %q", name, err, tc.want)
		}
	}
}
