package postgres_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// MemberTables finds the tables that name members by their columns: the
// migrated ones (member_id, origin/source/target_member_id, member_ids,
// member_no) and a table added later, whatever its name; MemberRows reads
// a table's rows of the members given and nobody else's; MergedMembers
// follows merged_into chains.
func TestMemberTablesAndRows(t *testing.T) {
	pool := pgtest.NewPool(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC) // any instant: nothing here reads it
	a, b, c, other := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	for _, m := range []uuid.UUID{a, b, c, other} {
		if err := postgres.InsertMember(ctx, pool, m, now); err != nil {
			t.Fatal(err)
		}
	}
	// c merged into b, b into a.
	for _, m := range [][2]uuid.UUID{{c, b}, {b, a}} {
		if _, err := pool.Exec(ctx, `UPDATE members SET status = 'merged', merged_into = $2 WHERE member_id = $1`, m[0], m[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE "odd ""table"" name" ("the_member_id" uuid, "Note" text, "blob" bytea)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO "odd ""table"" name" VALUES ($1, 'mine', '\x0102'), ($2, 'theirs', NULL)`, c, other); err != nil {
		t.Fatal(err)
	}

	members, err := postgres.MergedMembers(ctx, pool, a)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 3 || members[0] != a || !slices.Contains(members, b) || !slices.Contains(members, c) {
		t.Errorf("merged members of a: %v; want a first, then b and c", members)
	}

	tables, err := postgres.MemberTables(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]postgres.MemberTable{}
	for _, tb := range tables {
		byName[tb.Name] = tb
	}
	for name, want := range map[string][]string{
		"members": {"member_id"}, "member_identifiers": {"member_id", "origin_member_id"},
		"merges": {"source_member_id", "target_member_id"}, "identity_audit": {"member_id", "other_member_id"},
		"identity_conflicts": {"resolved_member_id"}, `odd "table" name`: {"the_member_id"},
	} {
		if got := byName[name].MemberColumns; !slices.Equal(got, want) {
			t.Errorf("%s member columns %v; want %v", name, got, want)
		}
	}
	if got := byName["identity_conflicts"].MemberArrays; !slices.Equal(got, []string{"member_ids"}) {
		t.Errorf("identity_conflicts member arrays %v", got)
	}
	if !byName["member_code_failures"].ByMemberNo || byName["members"].ByMemberNo {
		t.Errorf("member_no: member_code_failures %v, members %v", byName["member_code_failures"].ByMemberNo, byName["members"].ByMemberNo)
	}
	if got := byName["member_identifiers"].Bytea; !slices.Equal(got, []string{"value_hash", "value_cipher"}) {
		t.Errorf("member_identifiers bytea %v", got)
	}
	for _, name := range []string{"idempotency_keys", "processed_events", "terminals", "tag_backfills"} {
		if _, ok := byName[name]; ok {
			t.Errorf("%s holds no member column but was found", name)
		}
	}

	rows, err := postgres.MemberRows(ctx, pool, byName[`odd "table" name`], members)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("odd table rows %s; want c's only", rows)
	}
	var row map[string]any
	if err := json.Unmarshal(rows[0], &row); err != nil {
		t.Fatal(err)
	}
	if row["the_member_id"] != c.String() || row["Note"] != "mine" || row["blob"] != `\x0102` {
		t.Errorf("odd table row %v", row)
	}
	rows, err = postgres.MemberRows(ctx, pool, byName["members"], members)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Errorf("%d members rows; want 3", len(rows))
	}
}
