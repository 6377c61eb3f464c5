package clickhouse_test

import (
	"context"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

// An erased member's identifiers are in its own audit rows and in those of
// the members it was merged with (their merge, unmerge or refusal names it
// as the other member, with its keyed hashes): erasure takes both, and
// leaves the rows of the members that do not involve it.
func TestEraseMembersTakesTheAuditRowsNamingThemAsTheOtherMember(t *testing.T) {
	conn, cfg := chtest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const erased, partner = "01a20000-0000-7000-8000-00000000000a", "01a20000-0000-7000-8000-00000000000b"
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC)
	row := func(id, member, other, action string) clickhouse.AuditRow {
		return clickhouse.AuditRow{AuditID: id, At: at, Action: action, MemberID: member, OtherMemberID: other,
			Identifiers: `[{"hash":"5062","masked":"139****5551"}]`, Before: "{}", After: "{}", InsertedAt: at}
	}
	if err := clickhouse.NewWriter(conn).InsertAudit(ctx, []clickhouse.AuditRow{
		row("a1", erased, "", "created"),
		row("a2", erased, partner, "merged"),
		row("b1", partner, "", "created"),
		row("b2", partner, erased, "merged"),
		row("b3", partner, erased, "unmerged"),
	}); err != nil {
		t.Fatal(err)
	}
	if err := clickhouse.NewSchema(cfg, conn).EraseMembers(ctx, []string{"identity_audit"}, []string{erased}); err != nil {
		t.Fatal(err)
	}
	left := queryStrings(t, ctx, conn, `SELECT audit_id FROM identity_audit FINAL ORDER BY audit_id`)
	if len(left) != 1 || left[0] != "b1" {
		t.Errorf("audit rows left %v; want the partner's own creation only", left)
	}
}
