package clickhouse

import (
	"regexp"
	"strings"
	"testing"
)

func TestSummarizeNamesOperationAndTable(t *testing.T) {
	for _, tc := range []struct{ query, op, table string }{
		{"INSERT INTO member_events (\n\t\tevent_id, member_id, items.sku)", "INSERT", "member_events"},
		{"insert into membercenter.member_changes (a, b) VALUES", "INSERT", "membercenter.member_changes"},
		{"INSERT INTO TABLE `label changes` (a)", "INSERT", "label changes"},
		{"SELECT count(), sum(amount_minor) FROM member_events FINAL WHERE member_id = 'm1'", "SELECT", "member_events"},
		{"  -- segment\n/* count */ SELECT uniqExact(member_id) FROM current_profiles WHERE `tier` = 'gold'", "SELECT", "current_profiles"},
		{"SELECT toYear(occurred_at) AS y, extract(day FROM occurred_at) FROM member_events", "SELECT", "member_events"},
		{"SELECT x FROM (SELECT member_id AS x FROM member_profiles) AS sub", "SELECT", ""},
		{"WITH (SELECT max(version) FROM schema_migrations) AS v SELECT v FROM system.one", "SELECT", "system.one"},
		{"SELECT 1", "SELECT", ""},
		{"ALTER TABLE member_profiles DELETE WHERE member_id IN ('a', 'b')", "ALTER", "member_profiles"},
		{"ALTER TABLE member_profiles ADD COLUMN IF NOT EXISTS l_new UInt8", "ALTER", "member_profiles"},
		{"CREATE TABLE IF NOT EXISTS member_events (event_id String) ENGINE = ReplacingMergeTree", "CREATE", "member_events"},
		{"CREATE MATERIALIZED VIEW IF NOT EXISTS daily_kpis_mv TO daily_kpis AS SELECT 1 FROM member_events", "CREATE", "daily_kpis_mv"},
		{"CREATE DATABASE IF NOT EXISTS mc_test_0a1b", "CREATE", ""},
		{"DROP DATABASE IF EXISTS mc_test_0a1b", "DROP", ""},
		{"DROP TABLE IF EXISTS tmp_profiles", "DROP", "tmp_profiles"},
		{"OPTIMIZE TABLE member_profiles FINAL", "OPTIMIZE", "member_profiles"},
		{"SHOW TABLES", "SHOW", ""},
		{"", "", ""},
		{"   ", "", ""},
		{"'13812345678'", "", ""},
		{"`weird` FROM t", "", ""},
		{"(SELECT 1)", "", ""},
		{"SELEC7 * FROM t", "", ""},
	} {
		op, table := summarize(tc.query)
		if op != tc.op || table != tc.table {
			t.Errorf("summarize(%q) = %q, %q; want %q, %q", tc.query, op, table, tc.op, tc.table)
		}
	}
}

// TestSummarizeNeverNamesAValue: values in a statement (literals, text that
// only looks like SQL) never become the table.
func TestSummarizeNeverNamesAValue(t *testing.T) {
	for _, q := range []string{
		"SELECT 'x FROM phone13812345678' FROM member_events",
		"SELECT * FROM member_events WHERE store_id = 'a'' FROM phone13812345678'",
		`SELECT * FROM member_events WHERE store_id = 'it\' FROM phone13812345678'`,
		"SELECT * FROM member_events -- FROM phone13812345678\n",
		"SELECT arrayMap(x -> x, ['FROM phone13812345678']) FROM member_events",
	} {
		if _, table := summarize(q); table != "member_events" {
			t.Errorf("summarize(%q) names table %q", q, table)
		}
	}
}

var identifierOrEmpty = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*)?$`)

// FuzzSummarize: any text gives an operation of capital letters (or none)
// and never a string literal's content as the table.
func FuzzSummarize(f *testing.F) {
	for _, s := range []string{"INSERT INTO t (a)", "SELECT a FROM t WHERE b = 'c'", "WITH 1 AS x SELECT x FROM y",
		"/* c */ ALTER TABLE `t` DELETE WHERE 1", "SELECT \"a b\" FROM \"c d\"", "--\n#\n'"} {
		f.Add(s, "secret value")
	}
	f.Fuzz(func(t *testing.T, query, value string) {
		op, table := summarize(query)
		if strings.IndexFunc(op, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 || len(op) > 32 || len(table) > 128 {
			t.Fatalf("summarize(%q) = %q, %q", query, op, table)
		}
		quoted := strings.ContainsAny(query, "`\"")
		if !quoted && !identifierOrEmpty.MatchString(table) {
			t.Fatalf("summarize(%q) names table %q", query, table)
		}
		// A value in a literal is never read, whatever it holds.
		lit := "'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(value) + "'"
		if _, got := summarize("SELECT " + lit + " FROM member_events WHERE a = " + lit); got != "member_events" {
			t.Fatalf("a literal %s changed the table to %q", lit, got)
		}
	})
}
