package clickhouse_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
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

// The identity changes of the members an erased one was merged with (a
// merge undone since, an unmerge, a refusal, a conflict) name it and list
// its identifiers and summary: erasure blanks those, keeps the changes
// (naming it by id) and leaves every other change as it was.
func TestEraseMembersBlanksTheChangesNamingThemAsTheOtherMember(t *testing.T) {
	conn, cfg := chtest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const erased, partner, bystander = "01a20000-0000-7000-8000-00000000000a", "01a20000-0000-7000-8000-00000000000b",
		"01a20000-0000-7000-8000-00000000000c"
	const hash, masked = "5062e1f0c0ffee", "139****5551"
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC)
	// protojson as the sink writes it: whitespace after a colon or not, and
	// strings holding brackets, quotes and backslashes.
	identity := func(other, sep string) string {
		return `{"memberId":` + sep + `"` + partner + `","identityChanged":` + sep + `{"kind":` + sep + `"IDENTITY_CHANGE_KIND_MERGED",` +
			`"identifiers":` + sep + `[{"type":"IDENTIFIER_TYPE_PHONE","valueHash":"` + hash + `","scope":"a]b\"[c\\","masked":"` + masked + `"}],` +
			`"otherMemberId":` + sep + `"` + other + `","reason":"same person","before":` + sep +
			`"{\"identifiers\":[\"` + masked + `\"],\"note\":\"a \\\"quoted\\\" ]\"}","after":"{\"identifiers\":[\"` + masked + `\"]}"}}`
	}
	rows := []clickhouse.ChangeRow{
		{MemberID: partner, Sequence: 1, ChangeType: "identity_changed", Payload: identity(erased, "")},
		{MemberID: partner, Sequence: 2, ChangeType: "identity_changed", Payload: identity(erased, " ")},
		{MemberID: partner, Sequence: 3, ChangeType: "identity_changed", Payload: identity(bystander, " ")},
		{MemberID: partner, Sequence: 4, ChangeType: "points_changed", Payload: `{"pointsChanged":{"delta":"5"},"causeId":"` + erased + `"}`},
		{MemberID: erased, Sequence: 9, ChangeType: "member_erased", Payload: `{"memberErased":{}}`},
	}
	for i := range rows {
		rows[i].ChangeID, rows[i].OccurredAt, rows[i].InsertedAt = fmt.Sprintf("c%d", i), at, at
	}
	if err := clickhouse.NewWriter(conn).InsertChanges(ctx, rows); err != nil {
		t.Fatal(err)
	}
	if err := clickhouse.NewSchema(cfg, conn).EraseMembers(ctx, []string{"member_changes"}, []string{erased}); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]string{}
	var member, payload string
	var seq uint64
	r, err := conn.Query(ctx, `SELECT member_id, sequence, payload FROM member_changes FINAL ORDER BY member_id, sequence`)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		if err := r.Scan(&member, &seq, &payload); err != nil {
			t.Fatal(err)
		}
		got[seq] = payload
	}
	r.Close()
	if len(got) != len(rows) {
		t.Fatalf("changes left %v; want all %d (the erased member's erasure included)", got, len(rows))
	}
	for _, seq := range []uint64{1, 2} {
		var c struct {
			IdentityChanged struct {
				Kind, OtherMemberID, Reason, Before, After string
				Identifiers                                []any
			}
		}
		if err := json.Unmarshal([]byte(got[seq]), &c); err != nil {
			t.Fatalf("change %d after the erasure is not JSON: %v: %s", seq, err, got[seq])
		}
		ic := c.IdentityChanged
		if strings.Contains(got[seq], hash) || strings.Contains(got[seq], masked) || len(ic.Identifiers) != 0 ||
			ic.Before != "{}" || ic.After != "{}" || ic.OtherMemberID != erased || ic.Kind != "IDENTITY_CHANGE_KIND_MERGED" || ic.Reason != "same person" {
			t.Errorf("change %d after the erasure: %s; want it naming the erased member, without its identifiers or summaries", seq, got[seq])
		}
	}
	for i, seq := range []uint64{3, 4, 9} {
		if want := rows[2+i].Payload; got[seq] != want {
			t.Errorf("change %d after the erasure: %s; want it untouched: %s", seq, got[seq], want)
		}
	}
}

// `membercenter migrate` makes no member_profiles (the tag stage's first
// catalogue does), and a ClickHouse sink may run before any tag stage has
// (`pipeline --stages=relay,clickhouse-sink`): an erasure there deletes
// from the tables that exist and goes through. Before, it failed on the
// missing table, and the sink retried its batch — every member's changes
// — until a tag stage started (found by a black-box probe).
func TestEraseMembersBeforeTheProfilesTableExists(t *testing.T) {
	conn, cfg := chtest.NewDB(t) // as `membercenter migrate` leaves it
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const erased, kept = "01a20000-0000-7000-8000-00000000000a", "01a20000-0000-7000-8000-00000000000b"
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC)
	var rows []clickhouse.ChangeRow
	for i, m := range []string{erased, kept} {
		rows = append(rows, clickhouse.ChangeRow{MemberID: m, Sequence: 1, ChangeID: fmt.Sprintf("c%d", i), ChangeType: "points_changed",
			Payload: "{}", OccurredAt: at, InsertedAt: at})
	}
	if err := clickhouse.NewWriter(conn).InsertChanges(ctx, rows); err != nil {
		t.Fatal(err)
	}
	tables := []string{"member_changes", "label_changes", "identity_audit", clickhouse.ProfilesTable}
	if err := clickhouse.NewSchema(cfg, conn).EraseMembers(ctx, tables, []string{erased}); err != nil {
		t.Fatalf("erasing a member in a database `migrate` made: %v", err)
	}
	if left := queryStrings(t, ctx, conn, `SELECT member_id FROM member_changes FINAL`); len(left) != 1 || left[0] != kept {
		t.Errorf("changes left %v; want the other member's only", left)
	}
}
