package contract

import (
	"errors"
	"fmt"

	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// CheckMemberEvent says why ev, read from member.events.v1, is not an
// event ingest writes: one without an event id, with a member id that is
// not a UUID, or without a valid time. Every stage that reads the topic
// refuses such a record as a data error, so one published there by hand
// reaches none of them (an empty value decodes as an empty event).
func CheckMemberEvent(ev *mcv1.MemberEvent) error {
	if ev.GetEventId() == "" || ev.GetMemberId() == "" {
		return errors.New("member event without event_id or member_id")
	}
	if _, err := uuid.Parse(ev.GetMemberId()); err != nil {
		return fmt.Errorf("member_id %q: %w", ev.GetMemberId(), err)
	}
	if err := ev.GetOccurredAt().CheckValid(); err != nil {
		return fmt.Errorf("member event %s: occurred_at: %w", ev.GetEventId(), err)
	}
	return nil
}

// CheckMemberChange says why c, read from member.changes.v1, is not a
// change the relay publishes: one without a member id that is a UUID, a
// sequence from 1, a change id, a valid time or a change (of a kind this
// binary knows, or of one added since: a field it does not know). The ClickHouse
// sink refuses such a record as a data error and the sync hub passes it
// over, so a record published there by hand is neither stored nor sent to
// the channels' streams.
func CheckMemberChange(c *mcv1.MemberChange) error {
	if _, err := uuid.Parse(c.GetMemberId()); err != nil {
		return fmt.Errorf("member change: member_id %q: %w", c.GetMemberId(), err)
	}
	switch {
	case c.GetSequence() == 0:
		return fmt.Errorf("member change of %s without a sequence", c.GetMemberId())
	case c.GetChangeId() == "":
		return fmt.Errorf("member change %d of %s without a change_id", c.GetSequence(), c.GetMemberId())
	case c.GetChange() == nil && len(c.ProtoReflect().GetUnknown()) == 0:
		// (A change of a kind added later is unknown to this binary, not
		// missing: during a rolling upgrade it is passed on as it is.)
		return fmt.Errorf("member change %s carries no change", c.GetChangeId())
	}
	if err := c.GetOccurredAt().CheckValid(); err != nil {
		return fmt.Errorf("member change %s: occurred_at: %w", c.GetChangeId(), err)
	}
	return nil
}
