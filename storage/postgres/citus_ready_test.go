package postgres_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// The schema's layout on a Citus cluster, table by table
// (docs/scaling-postgres.md, which this list mirrors: the doc's script is
// checked against it). Citus is not installed here, so what is checked is
// the schema against Citus's rules, on the real PostgreSQL:
//
//   - a distributed table's distribution column exists and is NOT NULL
//     (Citus refuses a NULL distribution value), and for a per-member table
//     has the type of members.member_id (co-location needs the same type);
//   - every primary key, unique constraint and unique index of a
//     distributed table contains its distribution column (Citus enforces
//     uniqueness only within a shard);
//   - a foreign key from a distributed table points at a reference table,
//     or at a distributed table of the same co-location group with the
//     distribution columns paired; a reference or coordinator table refers
//     only to reference (or coordinator) tables;
//   - a trigger on a distributed table is row-level (Citus refuses
//     statement-level ones) and was looked at (listed in triggers);
//   - every table of the schema is classified, every classified table
//     exists (planned ones do not yet).
//
// What a table does not meet yet is listed in its gaps, with the reason; the
// test fails on a violation not listed and on a listed one no longer found,
// so the list, the doc and the schema move together.
type citusLayout int

const (
	// byMember: distributed by a member id column, co-located with members.
	byMember citusLayout = iota
	// byKey: distributed by another column, in its own co-location group
	// (or the group named by colocate).
	byKey
	// reference: one shard replicated to every node.
	reference
	// coordinator: a plain table on the coordinator only.
	coordinator
)

type citusTable struct {
	name   string
	layout citusLayout
	// column is the distribution column (byMember, byKey).
	column string
	// colocate names the table whose group a byKey table joins; empty: its own.
	colocate string
	// planned: a table the target layout adds; it must not exist yet.
	planned bool
	// triggers looked at and fine on a distributed table, with why.
	triggers map[string]string
	// gaps: violations the schema still has, keyed as the check reports
	// them, each with what has to change.
	gaps map[string]string
}

var citusTables = []citusTable{
	// Per-member tables, distributed by member and co-located with members.
	{name: "members", layout: byMember, column: "member_id", gaps: map[string]string{
		"unique members_member_no_key (member_no)":                                "member numbers are global: they move to member_numbers, distributed by member_no",
		"foreign key members_merged_into_fkey (merged_into) → members(member_id)": "the survivor may live on another shard: drop, the merge code keeps it right",
	}},
	{name: "points_accounts", layout: byMember, column: "member_id"},
	{name: "loyalty_state", layout: byMember, column: "member_id"},
	{name: "member_activity", layout: byMember, column: "member_id", gaps: map[string]string{
		"foreign key member_activity_origin_member_id_fkey (origin_member_id) → members(member_id)": "an origin member is another member, on another shard: drop",
	}},
	{name: "campaign_usage", layout: byMember, column: "member_id"},
	{name: "benefit_grants", layout: byMember, column: "member_id"},
	{name: "benefit_history", layout: byMember, column: "member_id"},
	{name: "benefit_label_checks", layout: byMember, column: "member_id"},
	{name: "tier_history", layout: byMember, column: "member_id"},
	{name: "member_features", layout: byMember, column: "member_id"},
	{name: "member_label_sets", layout: byMember, column: "member_id"},
	{name: "member_consents", layout: byMember, column: "member_id"},
	{name: "member_code_secrets", layout: byMember, column: "member_id"},
	{name: "member_keys", layout: byMember, column: "member_id"},
	{name: "member_code_uses", layout: byMember, column: "member_id"},
	{name: "device_members", layout: byMember, column: "member_id"},
	{name: "profile_exports", layout: byMember, column: "member_id"},
	{name: "outbox", layout: byMember, column: "member_id", gaps: map[string]string{
		"trigger outbox_pending_insert": "writes outbox_pending by its name, a distributed query from inside a shard: it must write the co-located shard of the one it fires on (TG_TABLE_NAME's shard id)",
	}},
	{name: "outbox_pending", layout: byMember, column: "member_id"},
	{name: "member_key_shreds", layout: byMember, column: "member_id"},
	{name: "identity_audit", layout: byMember, column: "member_id", triggers: map[string]string{
		"identity_audit_append_only": "row-level, raises, touches no other table: safe with citus.enable_unsafe_triggers",
	}},
	{name: "operator_audit", layout: byMember, column: "member_id", triggers: map[string]string{
		"operator_audit_append_only": "row-level, raises, touches no other table: safe with citus.enable_unsafe_triggers",
	}},
	{name: "operator_audit_exports", layout: byMember, column: "member_id"},
	{name: "merges", layout: byMember, column: "target_member_id", gaps: map[string]string{
		"foreign key merges_source_member_id_fkey (source_member_id) → members(member_id)": "the absorbed member lives on another shard: drop",
	}},
	{name: "member_identifiers", layout: byMember, column: "member_id", gaps: map[string]string{
		"primary key member_identifiers_pkey (identifier_id)":                                          "becomes (member_id, identifier_id)",
		"unique member_identifiers_unique_value (id_type, scope, value_hash)":                          "global uniqueness of an identifier: moves to identifier_owners, distributed by value_hash",
		"foreign key member_identifiers_origin_member_id_fkey (origin_member_id) → members(member_id)": "an origin member is another member, on another shard: drop",
	}},
	{name: "processed_events", layout: byMember, column: "member_id", gaps: map[string]string{
		"column member_id: missing":                              "the workers record the event's own member id with the mark, so it sits on the member's shard",
		"primary key processed_events_pkey (consumer, event_id)": "becomes (member_id, consumer, event_id)",
	}},
	{name: "ledger_transactions", layout: byMember, column: "member_id", gaps: map[string]string{
		"primary key ledger_transactions_pkey (transaction_id)":                                         "becomes (member_id, transaction_id); entries refer to it with their txn_member_id",
		"unique ledger_transactions_cause_id_kind_key (cause_id, kind)":                                 "global guard: becomes (member_id, cause_id, kind), processed_events and idempotency_keys stay the global guards",
		"foreign key ledger_transactions_origin_member_id_fkey (origin_member_id) → members(member_id)": "an origin member is another member, on another shard: drop",
	}},
	{name: "ledger_entries", layout: byMember, column: "txn_member_id", gaps: map[string]string{
		"column txn_member_id: missing":                                                                         "member_id is NULL on programme-account entries: a new NOT NULL column holds the transaction's member",
		"primary key ledger_entries_pkey (entry_id)":                                                            "becomes (txn_member_id, entry_id)",
		"foreign key ledger_entries_member_id_fkey (member_id) → members(member_id)":                            "a merge transfer's entry of the absorbed member sits on the survivor's shard: drop",
		"foreign key ledger_entries_transaction_id_fkey (transaction_id) → ledger_transactions(transaction_id)": "becomes (txn_member_id, transaction_id) → ledger_transactions (member_id, transaction_id)",
		"trigger ledger_entries_balanced":                                                                       "reads ledger_entries by its name, a distributed query from inside a shard: it must sum the shard it fires on (TG_TABLE_NAME)",
	}},
	{name: "point_lots", layout: byMember, column: "member_id", gaps: map[string]string{
		"primary key point_lots_pkey (lot_id)": "becomes (member_id, lot_id); orders refer to it with their member_id",
		"foreign key point_lots_transaction_id_fkey (transaction_id) → ledger_transactions(transaction_id)": "a merge moves lots, not the transactions that earned them: drop",
		"foreign key point_lots_origin_member_id_fkey (origin_member_id) → members(member_id)":              "an origin member is another member, on another shard: drop",
	}},
	{name: "orders", layout: byMember, column: "member_id", gaps: map[string]string{
		"primary key orders_pkey (order_id)":                                               "becomes (member_id, order_id): an order id is then unique per member only",
		"foreign key orders_lot_id_fkey (lot_id) → point_lots(lot_id)":                     "becomes (member_id, lot_id) → point_lots (member_id, lot_id); a merge moves both",
		"foreign key orders_origin_member_id_fkey (origin_member_id) → members(member_id)": "an origin member is another member, on another shard: drop",
	}},
	{name: "coupons", layout: byMember, column: "member_id", gaps: map[string]string{
		"primary key coupons_pkey (code)": "becomes (member_id, code): codes must be generated unique, a code found by its member",
		"foreign key coupons_origin_member_id_fkey (origin_member_id) → members(member_id)": "an origin member is another member, on another shard: drop",
	}},

	// Keyed by something other than a member.
	{name: "identifier_owners", layout: byKey, column: "value_hash", planned: true},
	{name: "member_numbers", layout: byKey, column: "member_no", planned: true},
	{name: "member_code_failures", layout: byKey, column: "member_no", colocate: "member_numbers"},
	{name: "ingested_events", layout: byKey, column: "event_id", gaps: map[string]string{
		"foreign key ingested_events_member_id_fkey (member_id) → members(member_id)": "found by event id before the member is known: drop",
	}},
	{name: "idempotency_keys", layout: byKey, column: "key"},
	{name: "legacy_members", layout: byKey, column: "legacy_id"},
	{name: "legacy_changes", layout: byKey, column: "row_key"},
	{name: "identity_conflicts", layout: byKey, column: "conflict_id"},
	{name: "campaign_budgets", layout: byKey, column: "campaign_id"},
	{name: "coupon_template_counts", layout: byKey, column: "template_id"},
	{name: "assertion_nonces", layout: byKey, column: "terminal_id"},
	{name: "adjustment_approvals", layout: byKey, column: "approval_id", triggers: map[string]string{
		"adjustment_approvals_decide_once": "row-level, raises or passes, touches no other table: safe with citus.enable_unsafe_triggers",
	}},

	// Small, read everywhere, written rarely.
	{name: "program_versions", layout: reference},
	{name: "label_catalogs", layout: reference},
	{name: "terminals", layout: reference},
	// The configuration audit and its queue to ClickHouse: an operator's
	// rare writes beside the versions they record (a reference table's
	// trigger is not checked: Citus runs it on every replica).
	{name: "config_audit", layout: reference},
	{name: "config_audit_exports", layout: reference},

	// Operational state of one process at a time.
	{name: "goose_db_version", layout: coordinator},
	{name: "relay_leaders", layout: coordinator},
	{name: "relay_batches", layout: coordinator},
	{name: "dlq_replays", layout: coordinator},
	{name: "tag_backfills", layout: coordinator},
}

// TestCitusReadySchema checks the migrated schema against citusTables.
func TestCitusReadySchema(t *testing.T) {
	pool := pgtest.NewPoolUnchecked(t, nil)
	for _, p := range citusProblems(t, pool, citusTables) {
		t.Error(p)
	}
}

// TestCitusLayoutMatchesDoc: the DBA script of docs/scaling-postgres.md
// distributes, co-locates and replicates exactly the tables citusTables
// says, by the same columns, and names the coordinator's tables.
func TestCitusLayoutMatchesDoc(t *testing.T) {
	doc, err := os.ReadFile("../../docs/scaling-postgres.md")
	if err != nil {
		t.Fatal(err)
	}
	fromDoc := docLayout(string(doc))
	var want []string
	for _, c := range citusTables {
		want = append(want, layoutLine(c))
	}
	sort.Strings(want)
	if !slices.Equal(fromDoc, want) {
		t.Errorf("docs/scaling-postgres.md's script and citusTables disagree:\nonly in the doc: %v\nonly in the test: %v",
			minus(fromDoc, want), minus(want, fromDoc))
	}
}

// TestCitusCheckReportsViolations proves the check fails when it should: a
// table nobody classified, a per-member table whose keys and references
// do not name the member, a statement-level trigger, a stale gap and a
// classified table that is not there.
func TestCitusCheckReportsViolations(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPoolUnchecked(t, nil)
	for _, stmt := range []string{
		`CREATE TABLE probe_unclassified (id int)`,
		`CREATE TABLE probe_member (
		    id bigint PRIMARY KEY,
		    member_id uuid REFERENCES members (member_id),
		    code text UNIQUE,
		    other uuid REFERENCES members (member_id),
		    campaign_id text REFERENCES campaign_budgets (campaign_id))`,
		`CREATE UNIQUE INDEX probe_member_code_open ON probe_member (code, id) WHERE member_id IS NOT NULL`,
		`CREATE FUNCTION probe_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$`,
		`CREATE TRIGGER probe_statement AFTER INSERT ON probe_member FOR EACH STATEMENT EXECUTE FUNCTION probe_noop()`,
		`CREATE TRIGGER probe_row AFTER INSERT ON probe_member FOR EACH ROW EXECUTE FUNCTION probe_noop()`,
		`CREATE TABLE probe_reference (id int PRIMARY KEY, member_id uuid REFERENCES members (member_id))`,
	} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	tables := slices.Clone(citusTables)
	for i := range tables {
		if tables[i].name == "outbox" { // a gap that is not there
			tables[i].gaps = map[string]string{"primary key outbox_pkey (outbox_id)": "fixed by 00017"}
		}
	}
	tables = slices.DeleteFunc(tables, func(c citusTable) bool { return c.name == "tag_backfills" })
	tables = append(tables,
		citusTable{name: "probe_member", layout: byMember, column: "member_id"},
		citusTable{name: "probe_reference", layout: reference},
		citusTable{name: "probe_gone", layout: coordinator},
		citusTable{name: "points_accounts", layout: byMember, column: "member_id", planned: true},
	)
	got := citusProblems(t, pool, tables)
	for _, want := range []string{
		"probe_unclassified: not classified",
		"tag_backfills: not classified",
		"probe_gone: classified but not in the schema",
		"points_accounts: planned but already in the schema",
		"probe_member: column member_id: nullable",
		"probe_member: primary key probe_member_pkey (id)",
		"probe_member: unique probe_member_code_key (code)",
		"probe_member: unique probe_member_code_open (code, id)",
		"probe_member: foreign key probe_member_other_fkey (other) → members(member_id)",
		"probe_member: foreign key probe_member_campaign_id_fkey (campaign_id) → campaign_budgets(campaign_id)",
		"probe_member: trigger probe_statement (statement-level)",
		"probe_member: trigger probe_row",
		"probe_reference: foreign key probe_reference_member_id_fkey (member_id) → members(member_id)",
		"outbox: gap no longer found, remove it: primary key outbox_pkey (outbox_id)",
	} {
		if !slices.ContainsFunc(got, func(p string) bool { return strings.HasPrefix(p, want) }) {
			t.Errorf("not reported: %s", want)
		}
	}
	// probe_member's reference to members by member_id is co-located: fine.
	for _, p := range got {
		if strings.Contains(p, "probe_member_member_id_fkey") {
			t.Errorf("reported a co-located foreign key: %s", p)
		}
	}
	if t.Failed() {
		t.Logf("reported:\n%s", strings.Join(got, "\n"))
	}
}

// TestCitusKeysMigrationRollsBack: migration 00017 gives the keys their
// member column and its rollback takes it away again.
func TestCitusKeysMigrationRollsBack(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPoolUnchecked(t, nil)
	p := migrations(t, pool)
	keys := func() string {
		var s string
		err := pool.QueryRow(ctx, `SELECT string_agg(conrelid::regclass || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conrelid::regclass::text)
			  FROM pg_constraint WHERE contype = 'p'
			   AND conrelid::regclass::text IN ('outbox', 'identity_audit', 'merges', 'tier_history', 'benefit_history')`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	const after = "benefit_history PRIMARY KEY (member_id, id); identity_audit PRIMARY KEY (audit_id, member_id); " +
		"merges PRIMARY KEY (merge_id, target_member_id); outbox PRIMARY KEY (outbox_id, member_id); tier_history PRIMARY KEY (member_id, id)"
	if got := keys(); got != after {
		t.Fatalf("keys after 00017:\n got %s\nwant %s", got, after)
	}
	if _, err := p.DownTo(ctx, 16); err != nil {
		t.Fatal(err)
	}
	const before = "benefit_history PRIMARY KEY (id); identity_audit PRIMARY KEY (audit_id); " +
		"merges PRIMARY KEY (merge_id); outbox PRIMARY KEY (outbox_id); tier_history PRIMARY KEY (id)"
	if got := keys(); got != before {
		t.Fatalf("keys after rolling 00017 back:\n got %s\nwant %s", got, before)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := keys(); got != after {
		t.Fatalf("keys after 00017 again:\n got %s\nwant %s", got, after)
	}
}

// citusProblems returns every way the schema q holds differs from tables.
func citusProblems(t *testing.T, q postgres.Querier, tables []citusTable) []string {
	t.Helper()
	ctx := context.Background()
	s := readCatalog(t, ctx, q)
	byName := map[string]citusTable{}
	for _, c := range tables {
		byName[c.name] = c
	}
	var problems []string
	for _, name := range s.tables {
		if _, ok := byName[name]; !ok {
			problems = append(problems, name+": not classified: decide its layout on Citus (citusTables and docs/scaling-postgres.md)")
		}
	}
	memberType := s.columns["members"]["member_id"].typ
	for _, c := range tables {
		if !slices.Contains(s.tables, c.name) {
			if !c.planned {
				problems = append(problems, c.name+": classified but not in the schema")
			}
			continue
		}
		if c.planned {
			problems = append(problems, c.name+": planned but already in the schema: it is not planned any more")
		}
		found := map[string]bool{}
		for _, v := range tableViolations(c, s, byName, memberType) {
			found[v] = true
			if _, ok := c.gaps[v]; !ok {
				problems = append(problems, c.name+": "+v)
			}
		}
		for g := range c.gaps {
			if !found[g] {
				problems = append(problems, c.name+": gap no longer found, remove it: "+g)
			}
		}
	}
	sort.Strings(problems)
	return problems
}

func tableViolations(c citusTable, s catalog, byName map[string]citusTable, memberType string) []string {
	var out []string
	distributed := c.layout == byMember || c.layout == byKey
	if distributed {
		col, ok := s.columns[c.name][c.column]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("column %s: missing", c.column))
		case col.nullable:
			out = append(out, fmt.Sprintf("column %s: nullable", c.column))
		}
		if ok && c.layout == byMember && col.typ != memberType {
			out = append(out, fmt.Sprintf("column %s: type %s, members.member_id is %s", c.column, col.typ, memberType))
		}
		for _, u := range s.uniques[c.name] {
			if !slices.Contains(u.columns, c.column) {
				out = append(out, fmt.Sprintf("%s %s (%s)", u.kind, u.name, strings.Join(u.columns, ", ")))
			}
		}
		for _, tg := range s.triggers[c.name] {
			switch {
			case !tg.rowLevel:
				out = append(out, fmt.Sprintf("trigger %s (statement-level)", tg.name))
			case c.triggers[tg.name] == "":
				out = append(out, "trigger "+tg.name)
			}
		}
	}
	for _, fk := range s.fks[c.name] {
		ref, known := byName[fk.refTable]
		if !known || fkAllowed(c, ref, fk) {
			continue // an unclassified target is reported as such
		}
		out = append(out, fmt.Sprintf("foreign key %s (%s) → %s(%s)", fk.name,
			strings.Join(fk.columns, ", "), fk.refTable, strings.Join(fk.refColumns, ", ")))
	}
	return out
}

func fkAllowed(from, to citusTable, fk foreignKey) bool {
	if to.layout == reference {
		return true
	}
	switch from.layout {
	case reference:
		return false
	case coordinator:
		return to.layout == coordinator
	}
	if to.layout != from.layout || to.layout == coordinator || colocationGroup(from) != colocationGroup(to) {
		return false
	}
	for i, col := range fk.columns {
		if col == from.column && fk.refColumns[i] == to.column {
			return true
		}
	}
	return false
}

func colocationGroup(c citusTable) string {
	switch {
	case c.layout == byMember:
		return "members"
	case c.colocate != "":
		return c.colocate
	}
	return c.name
}

type column struct {
	typ      string
	nullable bool
}

type uniqueIndex struct {
	kind    string // primary key, unique
	name    string
	columns []string
}

type foreignKey struct {
	name                string
	columns, refColumns []string
	refTable            string
}

type trigger struct {
	name     string
	rowLevel bool
}

type catalog struct {
	tables   []string
	columns  map[string]map[string]column
	uniques  map[string][]uniqueIndex
	fks      map[string][]foreignKey
	triggers map[string][]trigger
}

func readCatalog(t *testing.T, ctx context.Context, q postgres.Querier) catalog {
	t.Helper()
	s := catalog{columns: map[string]map[string]column{}, uniques: map[string][]uniqueIndex{},
		fks: map[string][]foreignKey{}, triggers: map[string][]trigger{}}
	query := func(sql string, scan func(pgx.Rows) error) {
		t.Helper()
		rows, err := q.Query(ctx, sql)
		if err != nil {
			t.Fatalf("read the catalog: %v", err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				t.Fatalf("read the catalog: %v", err)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("read the catalog: %v", err)
		}
	}
	query(`SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1`, func(r pgx.Rows) error {
		var name string
		err := r.Scan(&name)
		s.tables = append(s.tables, name)
		return err
	})
	query(`SELECT table_name::text, column_name::text, udt_name::text, is_nullable = 'YES'
		FROM information_schema.columns WHERE table_schema = 'public'`, func(r pgx.Rows) error {
		var table, name string
		var c column
		err := r.Scan(&table, &name, &c.typ, &c.nullable)
		if s.columns[table] == nil {
			s.columns[table] = map[string]column{}
		}
		s.columns[table][name] = c
		return err
	})
	// Every unique index (partial ones included: Citus needs the column
	// there too), named by its constraint when it backs one.
	query(`SELECT t.relname::text, CASE con.contype WHEN 'p' THEN 'primary key' ELSE 'unique' END,
		       coalesce(con.conname, i.relname)::text,
		       ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
		               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum ORDER BY k.ord)
		  FROM pg_index x
		  JOIN pg_class t ON t.oid = x.indrelid
		  JOIN pg_class i ON i.oid = x.indexrelid
		  JOIN pg_namespace n ON n.oid = t.relnamespace
		  LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid AND con.contype IN ('p', 'u', 'x')
		 WHERE n.nspname = 'public' AND x.indisunique`, func(r pgx.Rows) error {
		var table string
		var u uniqueIndex
		err := r.Scan(&table, &u.kind, &u.name, &u.columns)
		s.uniques[table] = append(s.uniques[table], u)
		return err
	})
	query(`SELECT t.relname::text, con.conname::text, r.relname::text,
		       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
		               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord),
		       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
		               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord)
		  FROM pg_constraint con
		  JOIN pg_class t ON t.oid = con.conrelid
		  JOIN pg_class r ON r.oid = con.confrelid
		  JOIN pg_namespace n ON n.oid = t.relnamespace
		 WHERE n.nspname = 'public' AND con.contype = 'f'`, func(r pgx.Rows) error {
		var table string
		var fk foreignKey
		err := r.Scan(&table, &fk.name, &fk.refTable, &fk.columns, &fk.refColumns)
		s.fks[table] = append(s.fks[table], fk)
		return err
	})
	query(`SELECT c.relname::text, tg.tgname::text, (tg.tgtype & 1) = 1
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = 'public' AND NOT tg.tgisinternal`, func(r pgx.Rows) error {
		var table string
		var tg trigger
		err := r.Scan(&table, &tg.name, &tg.rowLevel)
		s.triggers[table] = append(s.triggers[table], tg)
		return err
	})
	return s
}

var (
	docDistributed = regexp.MustCompile(`create_distributed_table\('(\w+)',\s*'(\w+)'(?:,\s*colocate_with\s*=>\s*'(\w+)')?\)`)
	docReference   = regexp.MustCompile(`create_reference_table\('(\w+)'\)`)
	docCoordinator = regexp.MustCompile(`(?m)^-- coordinator only: (.+)$`)
)

// docLayout reads the layout the doc's script gives, one line per table.
func docLayout(doc string) []string {
	var out []string
	for _, m := range docDistributed.FindAllStringSubmatch(doc, -1) {
		out = append(out, fmt.Sprintf("distributed %s by %s with %s", m[1], m[2], m[3]))
	}
	for _, m := range docReference.FindAllStringSubmatch(doc, -1) {
		out = append(out, "reference "+m[1])
	}
	for _, m := range docCoordinator.FindAllStringSubmatch(doc, -1) {
		for _, name := range strings.Split(m[1], ",") {
			out = append(out, "coordinator "+strings.TrimSpace(name))
		}
	}
	sort.Strings(out)
	return out
}

// layoutLine is the line docLayout reads for c: per-member tables are
// co-located with members (which is distributed first, without
// colocate_with), other distributed tables with the table named or none.
func layoutLine(c citusTable) string {
	switch c.layout {
	case byMember:
		with := "members"
		if c.name == "members" {
			with = ""
		}
		return fmt.Sprintf("distributed %s by %s with %s", c.name, c.column, with)
	case byKey:
		with := c.colocate
		if with == "" {
			with = "none"
		}
		return fmt.Sprintf("distributed %s by %s with %s", c.name, c.column, with)
	case reference:
		return "reference " + c.name
	}
	return "coordinator " + c.name
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
