package migration_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/migration"
)

// imported gives a test fresh databases holding the sample export and its
// orders, imported as source "crm", and a catch-up on them.
func imported(t *testing.T) (context.Context, *pgxpool.Pool, driver.Conn, *migration.CatchUp) {
	t.Helper()
	c, pool, conn, im := begin(t)
	if rep, err := im.Run(c, open(t, "testdata/sample-jsonl"), migration.Options{}); err != nil || rep.Imported != 4 {
		t.Fatalf("import: %+v %v", rep, err)
	}
	if _, err := im.ImportOrders(c, open(t, "testdata/sample-jsonl"), conn, false, nil, nil); err != nil {
		t.Fatal(err)
	}
	return c, pool, conn, &migration.CatchUp{Importer: im, Facts: conn}
}

// state is what a catch-up changes, counted: ledger, lots, balances,
// changes on the stream, members, identifiers, coupons, positions.
func state(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var parts []string
	for _, q := range []string{
		`SELECT count(*) FROM ledger_transactions`, `SELECT count(*) FROM ledger_entries`,
		`SELECT count(*) FROM point_lots`, `SELECT coalesce(sum(remaining), 0) FROM point_lots`,
		`SELECT coalesce(sum(balance), 0) FROM points_accounts`, `SELECT count(*) FROM outbox`,
		`SELECT count(*) FROM members`, `SELECT count(*) FROM member_identifiers`,
		`SELECT count(*) * 1000 + count(*) FILTER (WHERE state = 'used') FROM coupons`,
		`SELECT count(*) FROM tier_history`, `SELECT coalesce(sum(spend), 0) FROM member_activity`,
		`SELECT count(*) FROM legacy_changes`, `SELECT count(*) FROM identity_audit`,
	} {
		parts = append(parts, fmt.Sprint(count(t, pool, q)))
	}
	return strings.Join(parts, " ")
}

// Delta files are applied in date order and bring the platform to the
// legacy system's final state (import verify of the final export agrees
// at 100%, orders included); applying them again changes nothing.
func TestCatchUpDeltaFiles(t *testing.T) {
	c, pool, conn, cu := imported(t)
	rep, err := cu.ApplyFiles(c, "testdata/catchup", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Read != 14 || rep.Applied != 12 || rep.Imported != 1 || len(rep.Deleted) != 1 || len(rep.Refused) != 0 ||
		strings.Join(rep.Files, ",") != "delta-2026-06-10T09.jsonl,delta-2026-06-12T09.jsonl" {
		t.Fatalf("catch-up: %+v %v", rep, rep.Refused)
	}
	if d := rep.Deleted[0].Error(); !strings.Contains(d, "delta-2026-06-12T09.jsonl:5: L0004: members row deleted in the legacy system: not applied") {
		t.Errorf("deletion reported as %s", d)
	}
	v, err := cu.Verify(c, open(t, "testdata/catchup-final"), nil)
	if err != nil || !v.OK() {
		t.Fatalf("verify of the final export: %v %d of %d, %v", err, v.Agreeing, v.Members, v.Mismatches)
	}
	// Open points at now: L0001 550 + 500, L0002 300, L0003 250 + 120, L0005 400.
	if v.PlatformPoints != 2120 || v.SourcePoints != 2120 {
		t.Errorf("points: source %d, platform %d", v.SourcePoints, v.PlatformPoints)
	}
	// The orders the delta files brought with their lines (O-9501's three).
	want := migration.OrderTotals{Orders: 7, Amount: 348000, Lines: 4}
	if source, stored, err := cu.VerifyOrders(c, open(t, "testdata/catchup-final"), conn); err != nil || source != want || stored != want {
		t.Fatalf("verify orders: source %s, ClickHouse %s, want %s: %v", source, stored, want, err)
	}
	// Points moved against the migration account, never earned.
	if n := count(t, pool, `SELECT count(*) FROM ledger_transactions WHERE kind = 'earn'`); n != 0 {
		t.Errorf("%d earn transactions", n)
	}
	if n := count(t, pool, `SELECT -sum(delta) FROM ledger_entries WHERE account = 'programme:migrated'`); n != 2120 {
		t.Errorf("migrated account holds %d points, want the open 2120", n)
	}

	before := state(t, pool)
	again := &migration.CatchUp{Importer: cu.Importer, Facts: conn}
	rep, err = again.ApplyFiles(c, "testdata/catchup", nil)
	if err != nil || rep.Read != 14 || rep.Stale != 14 || len(rep.Refused) != 0 {
		t.Fatalf("second run: %+v %v", rep, err)
	}
	if after := state(t, pool); after != before {
		t.Errorf("a second run changed the state:\n before %s\n after  %s", before, after)
	}
}

// deltas writes a delta file of lines into a directory of its own.
func deltas(t *testing.T, lines ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "delta-2026-06-13T10.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

const lotO9001 = `"legacy_id":"L0001","ref":"O-9001","earned":1200,"earned_at":"2025-09-01T12:00:00+08:00","expires_at":"2026-09-01T12:00:00+08:00"`

// An older change arriving after a newer one of the same row is skipped;
// each bad record is refused alone, at its line, with its reason, and its
// neighbours are applied.
func TestCatchUpOrderAndBadRecords(t *testing.T) {
	c, pool, _, cu := imported(t)
	dir := deltas(t,
		`{"pos":20,"table":"lots","op":"u","after":{`+lotO9001+`,"remaining":600}}`,
		`{"pos":10,"table":"lots","op":"u","after":{`+lotO9001+`,"remaining":700}}`,
		`{"pos":21,"table":"lots","op":"u","after":{`,
		`{"pos":22,"table":"stores","op":"c","after":{"legacy_id":"L0001","store":"SH-01"}}`,
		`{"pos":23,"table":"lots","op":"c","after":{"legacy_id":"L0002","earned":10,"remaining":10,"earned_at":"2026-06-01"}}`,
		`{"pos":24,"table":"lots","op":"c","after":{"legacy_id":"L0002","ref":"X-1","earned":10,"remaining":"12.5","earned_at":"2026-06-01"}}`,
		`{"pos":25,"table":"identifiers","op":"c","after":{"legacy_id":"L0002","type":"phone","value":"13900010001"}}`,
		`{"pos":26,"table":"months","op":"c","after":{"legacy_id":"L0002","month":"2026-05","spend":1000,"points":1,"orders":1}}`,
		`{"pos":27,"table":"lots","op":"c","after":{"legacy_id":"L9999","ref":"X-2","earned":10,"remaining":10,"earned_at":"2026-06-01"}}`,
		`{"pos":28,"table":"lots","op":"c","after":{"legacy_id":"L0002","ref":"X-3","earned":10,"remaining":20,"earned_at":"2026-06-01"}}`,
		`{"pos":29,"table":"identifiers","op":"c","after":{"legacy_id":"L0002","type":"member_card","value":"CARD-0002"}}`,
		`{"pos":30,"table":"lots","op":"u","after":{"legacy_id":"L0001","ref":"O-9002","earned":500,"remaining":500,"earned_at":"2026-01-15T12:00:00+08:00","expires_at":"2027-06-30"}}`,
		`{"pos":31,"table":"lots","op":"u","after":{`+lotO9001+`,"remaining":650}}`,
	)
	rep, err := cu.ApplyFiles(c, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{
		3: "not a change", 4: `unknown table "stores"`, 5: "missing key column ref", 6: `remaining: "12.5" is not a whole number`,
		7: "conflict: an identifier already belongs to a member: phone 139****0001 belongs to member", 9: "legacy member L9999 is not imported",
		10: "lots[0].remaining 20 is more than the 10 earned", 12: "lot O-9002: earned, earned_at or expires_at changed in the legacy system",
	}
	expectRefusals(t, rep.Refused, want)
	if len(rep.Refused) != len(want) || rep.Applied != 4 || rep.Stale != 1 || rep.Conflicts != 1 {
		t.Errorf("applied %d, stale %d, refused %d: %v", rep.Applied, rep.Stale, len(rep.Refused), rep.Refused)
	}
	// 800 → 600 (pos 20; the older pos 10 skipped) → 650 (pos 31, points
	// given back in the legacy system).
	if n := count(t, pool, `SELECT remaining FROM point_lots WHERE order_id = 'O-9001'`); n != 650 {
		t.Errorf("lot O-9001 holds %d points, want 650", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM ledger_transactions WHERE kind = 'adjust'`); n != 2 {
		t.Errorf("%d adjust transactions for the lot's two moves", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM member_identifiers WHERE masked LIKE 'C%02'`); n != 1 {
		t.Errorf("the change after the refused ones was not applied (%d cards)", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM member_activity WHERE spend = 1000`); n != 1 {
		t.Errorf("the month between refusals was not applied")
	}
}

// A catch-up killed half-way (its context cancelled between changes) and
// run again ends as one clean run does.
func TestCatchUpResumesAfterAKill(t *testing.T) {
	c, pool, _, cu := imported(t)
	stopped, cancel := context.WithCancel(c)
	_, err := cu.ApplyFiles(stopped, "testdata/catchup", func(done int) {
		if done == 5 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped run: %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM legacy_changes`); n != 5 {
		t.Fatalf("%d changes applied before the kill, want 5", n)
	}
	resumed := &migration.CatchUp{Importer: cu.Importer, Facts: cu.Facts}
	rep, err := resumed.ApplyFiles(c, "testdata/catchup", nil)
	if err != nil || rep.Stale != 5 || len(rep.Refused) != 0 {
		t.Fatalf("resumed: %+v %v", rep, err)
	}

	_, clean, _, once := imported(t)
	if _, err := once.ApplyFiles(c, "testdata/catchup", nil); err != nil {
		t.Fatal(err)
	}
	if a, b := state(t, pool), state(t, clean); a != b {
		t.Errorf("killed and resumed: %s\none clean run:        %s", a, b)
	}
	if v, err := resumed.Verify(c, open(t, "testdata/catchup-final"), nil); err != nil || !v.OK() {
		t.Fatalf("verify after resuming: %v %v", err, v.Mismatches)
	}
}

// Erasing a migrated member deletes the record of its legacy rows' changes
// (keyed hashes of their keys, identifier values among them); the other
// members' stay, and the same deltas applied again skip the erased member.
func TestErasureDeletesTheRecordOfLegacyChanges(t *testing.T) {
	c, pool, _, cu := imported(t)
	if _, err := cu.ApplyFiles(c, "testdata/catchup", nil); err != nil {
		t.Fatal(err)
	}
	var member string
	if err := pool.QueryRow(c, `SELECT member_id::text FROM legacy_members WHERE legacy_id = 'L0001'`).Scan(&member); err != nil {
		t.Fatal(err)
	}
	mine := `SELECT count(*) FROM legacy_changes WHERE member_id = '` + member + `'`
	others := `SELECT count(*) FROM legacy_changes WHERE member_id IS DISTINCT FROM '` + member + `'`
	before, othersBefore := count(t, pool, mine), count(t, pool, others)
	if before == 0 || othersBefore == 0 {
		t.Fatalf("legacy changes recorded: %d of the member, %d of others; want some of each", before, othersBefore)
	}
	resp, err := cu.Profile.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: member, Reason: "DSR-2", IdempotencyKey: "e2"},
		mcv1.Channel_CHANNEL_BACKOFFICE, "backoffice/privacy")
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetPostgresRows()["legacy_changes"]; got != int64(before) {
		t.Errorf("the erasure deleted %d legacy change records, want %d", got, before)
	}
	if n := count(t, pool, mine); n != 0 {
		t.Errorf("%d legacy change records of the erased member left", n)
	}
	if n := count(t, pool, others); n != othersBefore {
		t.Errorf("the other members' legacy change records: %d → %d", othersBefore, n)
	}
	rep, err := (&migration.CatchUp{Importer: cu.Importer, Facts: cu.Facts}).ApplyFiles(c, "testdata/catchup", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Erased == 0 {
		t.Errorf("the deltas again after the erasure: %+v", rep)
	}
	if n := count(t, pool, `SELECT count(*) FROM legacy_changes`); n != othersBefore {
		t.Errorf("the deltas again: %d legacy change records, want the other members' %d (none of the erased member's)", n, othersBefore)
	}
}

// A catch-up change that links an identifier takes the identifier's lock
// before the member's row, as every resolution takes them: while a
// resolution holds the identifier, the change waits for it without holding
// the member, so a resolution that takes the member next goes on. Before,
// the change locked the member first, and the two deadlocked until
// PostgreSQL broke the cycle and one side retried.
func TestCatchUpTakesTheIdentifierBeforeTheMember(t *testing.T) {
	c, pool, _, cu := imported(t)
	var member string
	if err := pool.QueryRow(c, `SELECT member_id::text FROM legacy_members WHERE legacy_id = 'L0002'`).Scan(&member); err != nil {
		t.Fatal(err)
	}
	mail := &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: "held@example.com"}
	ns, err := cu.Identity.Normalize([]*mcv1.Identifier{mail})
	if err != nil {
		t.Fatal(err)
	}
	// A resolution holding the e-mail's lock, about to take the member.
	tx, err := pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(c) //nolint:errcheck // committed below
	if err := postgres.LockIdentifiers(c, tx, []postgres.IdentifierKey{{Type: int16(ns[0].Type), Scope: ns[0].Scope, Hash: ns[0].Hash}}); err != nil {
		t.Fatal(err)
	}
	dir := deltas(t, `{"pos":40,"table":"identifiers","op":"c","after":{"legacy_id":"L0002","type":"email","value":"held@example.com"}}`)
	type result struct {
		rep migration.CatchUpReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := cu.ApplyFiles(c, dir, nil)
		done <- result{rep, err}
	}()
	pgtest.Eventually(t, "the change waits for the e-mail", func() (bool, error) {
		n, err := pgtest.LockWaiters(c, pool)
		return n == 1, err
	})
	if _, err := tx.Exec(c, `SELECT 1 FROM members WHERE member_id = $1 FOR NO KEY UPDATE NOWAIT`, member); err != nil {
		t.Fatalf("the member's row is held while the change waits for the e-mail (%v): a resolution taking the e-mail, then the member, deadlocks with it", err)
	}
	if err := tx.Commit(c); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.rep.Applied != 1 || len(r.rep.Refused) != 0 {
		t.Fatalf("catch-up: %+v %v", r.rep, r.err)
	}
	if n := count(t, pool, `SELECT count(*) FROM member_identifiers WHERE member_id = '`+member+`' AND masked LIKE 'h%'`); n != 1 {
		t.Errorf("%d e-mails linked; want the catch-up's", n)
	}
}
