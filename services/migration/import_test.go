package migration_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/migration"
)

// now is the import's clock: the sample's lots are open then, but one.
var now = time.Date(2026, 6, 15, 12, 0, 0, 0, time.FixedZone("CST", 8*3600))

func newImporter(t *testing.T, pool *pgxpool.Pool, source string) *migration.Importer {
	t.Helper()
	clock := func() time.Time { return now }
	im, err := migration.New(context.Background(), migration.Setup{Pool: pool, Changes: changes.Writer{Now: clock},
		Log: slog.New(slog.DiscardHandler), Source: source, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// begin gives a test fresh PostgreSQL and ClickHouse databases and an
// importer of source "crm" on them.
func begin(t *testing.T) (context.Context, *pgxpool.Pool, driver.Conn, *migration.Importer) {
	t.Helper()
	pool := pgtest.NewPool(t, nil)
	conn, _ := chtest.NewDB(t)
	return ctxT(t), pool, conn, newImporter(t, pool, "crm")
}

// expectRefusals checks that each line of want was refused with a reason
// holding its text.
func expectRefusals(t *testing.T, refused []*migration.RowError, want map[int]string) {
	t.Helper()
	got := map[int]string{}
	for _, r := range refused {
		got[r.Line] = r.File + ": " + r.Reason
	}
	for line, w := range want {
		if !strings.Contains(got[line], w) {
			t.Errorf("line %d refused as %q, want %q", line, got[line], w)
		}
	}
}

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return c
}

func open(t *testing.T, dir string) *migration.Source {
	t.Helper()
	src, err := migration.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func count(t *testing.T, pool *pgxpool.Pool, sql string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The sample export imports whole, verifies at 100%, and a second run
// doubles nothing; the same people under another source name are
// conflicts, never merged.
func TestImportVerifyRoundTrip(t *testing.T) {
	c := ctxT(t)
	pool := pgtest.NewPool(t, nil)
	im := newImporter(t, pool, "crm")

	dry, err := im.Run(c, open(t, "testdata/sample-jsonl"), migration.Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Imported != 4 || len(dry.Refused) != 0 || count(t, pool, `SELECT count(*) FROM members`) != 0 {
		t.Fatalf("dry run: %+v; %d members kept", dry, count(t, pool, `SELECT count(*) FROM members`))
	}

	rep, err := im.Run(c, open(t, "testdata/sample-jsonl"), migration.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Open points at now: 800 + 500 (L0001), 300 (L0002), 250 (L0003).
	if rep.Imported != 4 || len(rep.Refused) != 0 || rep.Points != 1850 {
		t.Fatalf("import: %+v", rep)
	}
	if len(rep.Ignored) != 1 || !strings.Contains(rep.Ignored[0], "L0003: phone 138****0000 ignored (phone.blocked)") {
		t.Errorf("ignored: %v", rep.Ignored)
	}
	v, err := im.Verify(c, open(t, "testdata/sample-jsonl"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !v.OK() || v.SourcePoints != 1850 || v.PlatformPoints != 1850 {
		t.Fatalf("verify: %d of %d agree, points %d/%d: %v", v.Agreeing, v.Members, v.SourcePoints, v.PlatformPoints, v.Mismatches)
	}
	// The CSV form of the same export verifies against the same members.
	if v, err := im.Verify(c, open(t, "testdata/sample-csv"), nil); err != nil || !v.OK() {
		t.Fatalf("verify csv: %v %v", err, v.Mismatches)
	}
	before := count(t, pool, `SELECT count(*) FROM outbox`)
	again, err := im.Run(c, open(t, "testdata/sample-jsonl"), migration.Options{})
	if err != nil || again.Imported != 0 || again.Already != 4 || again.Changed != 0 {
		t.Fatalf("second run: %+v %v", again, err)
	}
	if after := count(t, pool, `SELECT count(*) FROM outbox`); after != before {
		t.Errorf("a second run wrote %d changes", after-before)
	}
	if n := count(t, pool, `SELECT count(*) FROM members`); n != 4 {
		t.Errorf("%d members after two runs", n)
	}
	// Imported members are on the change stream and have labels.
	if n := count(t, pool, `SELECT count(DISTINCT member_id) FROM outbox`); n != 4 {
		t.Errorf("%d members on the change stream", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM member_features`); n != 4 {
		t.Errorf("%d members with computed labels", n)
	}
	// No raw PII of the sample in the members rows.
	if n := count(t, pool, `SELECT count(*) FROM members WHERE attributes::text LIKE '%13900010001%' OR attributes::text LIKE '%wang.wei%'`); n != 0 {
		t.Errorf("%d members hold a raw PII attribute", n)
	}

	// A difference made since is found, named and counted.
	if _, err := pool.Exec(c, `UPDATE members SET attributes = attributes || '{"city": "Beijing"}'
		WHERE member_id = (SELECT member_id FROM legacy_members WHERE legacy_id = 'L0002')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(c, `DELETE FROM member_identifiers WHERE masked = 'C*****01' OR (id_type = 6 AND member_id = (SELECT member_id FROM legacy_members WHERE legacy_id = 'L0001'))`); err != nil {
		t.Fatal(err)
	}
	v, err = im.Verify(c, open(t, "testdata/sample-jsonl"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var whats []string
	for _, m := range v.Mismatches {
		whats = append(whats, m.String())
	}
	if v.OK() || v.Agreeing != 2 || v.Fields["attributes"] != 3 || v.Fields["identifiers"] != 3 ||
		!strings.Contains(strings.Join(whats, "\n"), "members.jsonl:2: L0002: attributes[city] differs") ||
		!strings.Contains(strings.Join(whats, "\n"), "members.jsonl:1: L0001: member_card") {
		t.Errorf("verify after changes: %d agree, fields %v, %v", v.Agreeing, v.Fields, whats)
	}

	other := newImporter(t, pool, "second-crm")
	dup, err := other.Run(c, open(t, "testdata/sample-csv"), migration.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if dup.Imported != 0 || dup.Conflicts != 4 || len(dup.Refused) != 4 {
		t.Fatalf("the same people again: %+v", dup)
	}
	for _, r := range dup.Refused {
		if !strings.Contains(r.Reason, "belongs to member") || r.File != "members.csv" {
			t.Errorf("conflict reported as %s", r)
		}
	}
}

// A corpus of bad records: each is refused alone, at its line, and nothing
// of a refused member is kept; verify reports the source does not agree.
func TestBadRecordsRefusedLineByLine(t *testing.T) {
	c := ctxT(t)
	pool := pgtest.NewPool(t, nil)
	im := newImporter(t, pool, "crm")
	rep, err := im.Run(c, open(t, "testdata/bad-jsonl"), migration.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{
		2: "not a member record", 3: "legacy_id is required", 4: "unknown field", 5: `"fax"`,
		6: "remaining", 7: "platinum", 8: "attributes[favourite_colour]", 9: "legacy_id also on line 1",
		10: "phone 139****0001 also belongs to legacy member L0101", 11: "NOPE", 12: "created_at",
		13: "attributes[mobile]", 15: "more after the record",
		// Times no member of a loyalty programme has (year 0 was stored
		// and broke every read of its member) or has not yet.
		16: "created_at: 0000-01-01T00:00:00Z is before 1970-01-01", 17: "created_at: 2030-01-01T00:00:00+08:00 is after the import time", 18: "tier_since",
		19: "lots[0].earned_at", 20: `lots[0].expires_at 9999-12-31T08:00:00+08:00 is the platform's "never"`,
	}
	expectRefusals(t, rep.Refused, want)
	if rep.Imported != 2 || len(rep.Refused) != len(want) || rep.Read != 20 {
		t.Errorf("imported %d, refused %d of %d read: %v", rep.Imported, len(rep.Refused), rep.Read, rep.Refused)
	}
	// Nothing of a refused member: two members, their phone/e-mail and CRM id.
	if n := count(t, pool, `SELECT count(*) FROM members`); n != 2 {
		t.Errorf("%d members kept", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM member_identifiers`); n != 4 {
		t.Errorf("%d identifiers kept", n)
	}
	v, err := im.Verify(c, open(t, "testdata/bad-jsonl"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.OK() || v.Agreeing != 2 {
		t.Errorf("verify of the bad corpus: %d of %d agree, OK %v", v.Agreeing, v.Members, v.OK())
	}
}

// A run stopped half-way (a kill between members) and run again ends as
// one clean run.
func TestImportResumesAfterAStop(t *testing.T) {
	c := ctxT(t)
	pool := pgtest.NewPool(t, nil)
	im := newImporter(t, pool, "crm")
	stopped, cancel := context.WithCancel(c)
	_, err := im.Run(stopped, open(t, "testdata/sample-csv"), migration.Options{Workers: 1, Batch: 1, Progress: func(read int) {
		if read == 2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped run: %v", err)
	}
	done := count(t, pool, `SELECT count(*) FROM legacy_members`)
	if done == 0 || done == 4 {
		t.Fatalf("%d members imported before the stop", done)
	}
	rep, err := im.Run(c, open(t, "testdata/sample-csv"), migration.Options{})
	if err != nil || rep.Imported+rep.Already != 4 || rep.Already != done {
		t.Fatalf("resumed: %+v %v", rep, err)
	}
	if v, err := im.Verify(c, open(t, "testdata/sample-csv"), nil); err != nil || !v.OK() {
		t.Fatalf("verify after resuming: %v %v", err, v.Mismatches)
	}
	if n := count(t, pool, `SELECT count(*) FROM members`); n != 4 {
		t.Errorf("%d members", n)
	}
}

// The order history goes to ClickHouse's facts once, however often it is
// imported, earns nothing, and the members' labels are rebuilt from it; bad
// orders are refused at their line.
func TestOrderHistory(t *testing.T) {
	c, pool, conn, im := begin(t)
	dryMembers, err := im.Run(c, open(t, "testdata/sample-csv"), migration.Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry, err := im.ImportOrders(c, open(t, "testdata/sample-csv"), conn, true, dryMembers.Accepted, nil); err != nil || dry.Read != 5 || len(dry.Refused) != 0 {
		t.Fatalf("dry run of the orders before the members: %+v %v", dry, err)
	}
	if _, err := im.Run(c, open(t, "testdata/sample-csv"), migration.Options{}); err != nil {
		t.Fatal(err)
	}
	ledger := count(t, pool, `SELECT count(*) FROM ledger_entries`)
	labelled := count(t, pool, `SELECT coalesce(sum(cardinality(labels)), 0) FROM member_label_sets`)
	src := open(t, "testdata/sample-csv")
	dry, err := im.ImportOrders(c, src, conn, true, nil, nil)
	if err != nil || dry.Read != 5 || dry.Written != 0 || len(dry.Refused) != 0 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	for range 2 {
		rep, err := im.ImportOrders(c, src, conn, false, nil, nil)
		if err != nil || rep.Written != 5 || rep.Amount != 296000 || rep.Lines != 3 || rep.Rebuilt != 3 || len(rep.Refused) != 0 {
			t.Fatalf("orders: %+v %v", rep, err)
		}
	}
	// The CSV's orders against the JSON Lines export of the same history.
	want := migration.OrderTotals{Orders: 5, Amount: 296000, Lines: 3}
	source, stored, err := im.VerifyOrders(c, open(t, "testdata/sample-jsonl"), conn)
	if err != nil || source != want || stored != want {
		t.Fatalf("verify orders: source %s, ClickHouse %s, want %s: %v", source, stored, want, err)
	}
	// The basket lines reach the labels that read categories: without
	// them no member would hold an affinity label.
	for legacy, label := range map[string]string{"L0001": "affinity_coffee", "L0002": "affinity_tea"} {
		var got string
		if err := pool.QueryRow(c, `SELECT 'true' FROM member_label_sets ml JOIN legacy_members l USING (member_id)
			WHERE l.legacy_id = $1 AND $2 = ANY (ml.labels)`, legacy, label).Scan(&got); err != nil || got != "true" {
			t.Errorf("%s: %s = %q (%v), want true from its orders' lines", legacy, label, got, err)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM ledger_entries`); n != ledger {
		t.Errorf("orders wrote %d ledger entries: they must earn nothing", n-ledger)
	}
	if n := count(t, pool, `SELECT coalesce(sum(cardinality(labels)), 0) FROM member_label_sets`); n <= labelled {
		t.Errorf("labels after the order history: %d, before %d", n, labelled)
	}

	bad := newImporter(t, pool, "bad")
	if _, err := bad.Run(c, open(t, "testdata/bad-jsonl"), migration.Options{}); err != nil {
		t.Fatal(err)
	}
	rep, err := bad.ImportOrders(c, open(t, "testdata/bad-jsonl"), conn, false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	refusals := map[int]string{2: "no imported member", 3: "order_id also on line 1", 4: "at:", 5: "not negative", 6: `channel "fax"`, 7: "not an order record",
		8: "items[0].quantity 0 is not from 1", 9: "items[0]: contains control", 10: "items[0].sku is required", 11: "items[0].amount is not negative", 12: "not an order record",
		13: "is after the import time", 14: "is before 1970-01-01",
		// What a channel's purchase could not be either.
		15: `currency "USD": the programme runs in CNY`, 16: "not negative", 17: "total 99999999999 is above the programme's maximum"}
	expectRefusals(t, rep.Refused, refusals)
	if rep.Written != 1 || len(rep.Refused) != len(refusals) {
		t.Errorf("bad orders: %+v", rep)
	}
	// Verify reads the same file: the refused lines count on neither side.
	want = migration.OrderTotals{Orders: 1, Amount: 1000}
	if source, stored, err = bad.VerifyOrders(c, open(t, "testdata/bad-jsonl"), conn); err != nil || source != want || stored != want {
		t.Errorf("verify of the bad orders: source %s, ClickHouse %s, want %s: %v", source, stored, want, err)
	}
}

// A member erased at their request after the import is not brought back
// by an import run again, and verify counts it as agreeing.
func TestErasedMembersStayErased(t *testing.T) {
	c, pool, conn, im := begin(t)
	if _, err := im.Run(c, open(t, "testdata/sample-jsonl"), migration.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := im.ImportOrders(c, open(t, "testdata/sample-jsonl"), conn, false, nil, nil); err != nil {
		t.Fatal(err)
	}
	var member string
	if err := pool.QueryRow(c, `SELECT member_id::text FROM legacy_members WHERE legacy_id = 'L0002'`).Scan(&member); err != nil {
		t.Fatal(err)
	}
	if _, err := im.Profile.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: member, Reason: "DSR-1", IdempotencyKey: "e1"},
		mcv1.Channel_CHANNEL_BACKOFFICE, "backoffice/privacy"); err != nil {
		t.Fatal(err)
	}
	rep, err := im.Run(c, open(t, "testdata/sample-jsonl"), migration.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Imported != 0 || rep.Already != 3 || rep.Erased != 1 || len(rep.Refused) != 0 {
		t.Fatalf("import after an erasure: %+v %v", rep, rep.Refused)
	}
	// Nothing of the legacy id is left readable, and nothing links the
	// record to the (pseudonymous) member id.
	if n := count(t, pool, `SELECT count(*) FROM legacy_members WHERE legacy_id = 'L0002' OR member_id = '`+member+`'`); n != 0 {
		t.Errorf("%d legacy records still name L0002 or its member", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM members WHERE status = 'active'`); n != 3 {
		t.Errorf("%d active members", n)
	}
	v, err := im.Verify(c, open(t, "testdata/sample-jsonl"), nil)
	if err != nil || !v.OK() || v.Erased != 1 {
		t.Fatalf("verify after an erasure: %+v %v", v, err)
	}
	// The erased member's order (L0002's one) stays in ClickHouse under
	// the pseudonym: the order history still agrees, and a re-run skips it.
	ord, err := im.ImportOrders(c, open(t, "testdata/sample-jsonl"), conn, false, nil, nil)
	if err != nil || ord.OfErased != 1 || len(ord.Refused) != 0 || ord.Written != 4 {
		t.Fatalf("orders after an erasure: %+v %v", ord, err)
	}
	if source, stored, err := im.VerifyOrders(c, open(t, "testdata/sample-jsonl"), conn); err != nil || source != stored || source.Orders != 5 {
		t.Fatalf("verify orders after an erasure: source %s, ClickHouse %s, %v", source, stored, err)
	}
}

// A member merged into another since the import (an operator resolving a
// duplicate) does not make verify fail, and its later orders go to the
// member it lives on in, attributed to it.
func TestVerifyAfterAMerge(t *testing.T) {
	c, pool, conn, im := begin(t)
	if _, err := im.Run(c, open(t, "testdata/sample-jsonl"), migration.Options{}); err != nil {
		t.Fatal(err)
	}
	var source, target string
	if err := pool.QueryRow(c, `SELECT (SELECT member_id::text FROM legacy_members WHERE legacy_id = 'L0003'),
		(SELECT member_id::text FROM legacy_members WHERE legacy_id = 'L0002')`).Scan(&source, &target); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.NewServer(im.Identity).Merge(c, &mcv1.MergeRequest{SourceMemberId: source, TargetMemberId: target,
		Reason: "same person", IdempotencyKey: "m1"}); err != nil {
		t.Fatal(err)
	}
	v, err := im.Verify(c, open(t, "testdata/sample-jsonl"), nil)
	if err != nil || !v.OK() || v.Merged != 1 || v.Absorbing != 1 {
		t.Fatalf("verify after a merge: %+v %v", v, err)
	}
	if _, err := im.ImportOrders(c, open(t, "testdata/sample-jsonl"), conn, false, nil, nil); err != nil {
		t.Fatal(err)
	}
	var owner, origin string
	if err := conn.QueryRow(c, `SELECT member_id, origin_member_id FROM member_events FINAL WHERE event_id = ?`,
		migration.OrderEventID("crm", "O-9202")).Scan(&owner, &origin); err != nil {
		t.Fatal(err)
	}
	if owner != target || origin != source {
		t.Errorf("L0003's order stored under %s (origin %s), want %s (origin %s)", owner, origin, target, source)
	}
}

// With LabelsByOrders the import leaves labels to the order history,
// which computes every member's once — rebuilt from its orders, or without
// for a member that has none — to the labels an import that computes them
// first and rebuilds them after ends with.
func TestLabelsByOrders(t *testing.T) {
	labels := func(pool *pgxpool.Pool) string {
		t.Helper()
		rows, err := pool.Query(context.Background(), `SELECT l.legacy_id || ':' || x || '=true' FROM member_label_sets ml
			JOIN legacy_members l ON l.member_id = ml.member_id, unnest(ml.labels) x ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		return strings.Join(out, "\n")
	}
	c, first, conn, im := begin(t)
	if _, err := im.Run(c, open(t, "testdata/sample-csv"), migration.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := im.ImportOrders(c, open(t, "testdata/sample-csv"), conn, false, nil, nil); err != nil {
		t.Fatal(err)
	}

	c, pool, conn, im := begin(t)
	rep, err := im.Run(c, open(t, "testdata/sample-csv"), migration.Options{LabelsByOrders: true})
	if err != nil || rep.Imported != 4 {
		t.Fatalf("import: %+v %v", rep, err)
	}
	if n := count(t, pool, `SELECT count(*) FROM member_features`); n != 0 {
		t.Errorf("%d members with labels before the order history", n)
	}
	ord, err := im.ImportOrders(c, open(t, "testdata/sample-csv"), conn, false, nil, nil)
	if err != nil || ord.Rebuilt != 3 || ord.Labelled != 1 {
		t.Fatalf("orders: %+v %v", ord, err)
	}
	if n := count(t, pool, `SELECT count(*) FROM member_features`); n != 4 {
		t.Errorf("%d of 4 members with labels after the order history", n)
	}
	if got, want := labels(pool), labels(first); got != want || got == "" {
		t.Errorf("labels:\n%s\nwant (computed at import, rebuilt after):\n%s", got, want)
	}
	again, err := im.ImportOrders(c, open(t, "testdata/sample-csv"), conn, false, nil, nil)
	if err != nil || again.Labelled != 0 {
		t.Errorf("orders again: %+v %v", again, err)
	}
	if v, err := im.Verify(c, open(t, "testdata/sample-csv"), nil); err != nil || !v.OK() {
		t.Errorf("verify: %+v %v", v, err)
	}
}
