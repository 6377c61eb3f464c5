// Package chbench holds the ClickHouse queries of the benchmarks and the
// demo workload (mc-bench): synthetic member profiles, the reads that time
// and check a run, the same-run floors, and the queries an analyst runs in
// the demo. It is tooling: nothing in the membercenter binary imports it.
package chbench

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/membercenter/membercenter/storage/clickhouse"
)

// ServerVersion is the server's version.
func ServerVersion(ctx context.Context, conn driver.Conn) (string, error) {
	var v string
	err := conn.QueryRow(ctx, `SELECT version()`).Scan(&v)
	return v, err
}

// CountEvents counts the facts of the events with ids LIKE like, collapsed
// by key (FINAL) when final is set.
func CountEvents(ctx context.Context, conn driver.Conn, like string, final bool) (uint64, error) {
	q := "SELECT count() FROM member_events WHERE event_id LIKE ?"
	if final {
		q = "SELECT count() FROM member_events FINAL WHERE event_id LIKE ?"
	}
	var n uint64
	err := conn.QueryRow(ctx, q, like).Scan(&n)
	return n, err
}

// ---- member profiles ----

// The profile counts the tag benchmark times, as its report names them.
const (
	CountProfilesSQL      = "SELECT count() FROM " + clickhouse.ProfilesTable
	CountFinalProfilesSQL = "SELECT count() FROM " + clickhouse.ProfilesTable + " FINAL"
	// FinalVersionsSQL is FinalVersions' statement as a report shows it.
	FinalVersionsSQL = "SELECT member_id, version FROM " + clickhouse.ProfilesTable + " FINAL WHERE member_id IN " + pendingTable + " (the pending members, sent as an external table)"
)

// CountProfiles counts member_profiles' rows, collapsed by member (FINAL)
// when final is set.
func CountProfiles(ctx context.Context, conn driver.Conn, final bool) (uint64, error) {
	q := CountProfilesSQL
	if final {
		q = CountFinalProfilesSQL
	}
	var n uint64
	err := conn.QueryRow(ctx, q).Scan(&n)
	return n, err
}

// CountProfilesWhere counts the current profiles that meet where, a
// condition the segment compiler made.
func CountProfilesWhere(ctx context.Context, conn driver.Conn, where string) (uint64, error) {
	var n uint64
	err := conn.QueryRow(ctx, CountFinalProfilesSQL+" WHERE "+where).Scan(&n)
	return n, err
}

// ProfileParts counts member_profiles' active parts and the rows in them.
func ProfileParts(ctx context.Context, conn driver.Conn) (parts, rows uint64, err error) {
	err = conn.QueryRow(ctx, `SELECT count(), sum(rows) FROM system.parts WHERE database = currentDatabase() AND table = '`+
		clickhouse.ProfilesTable+`' AND active`).Scan(&parts, &rows)
	return parts, rows, err
}

// FinalVersions reads the current profile version of each member that has
// a profile.
func FinalVersions(ctx context.Context, conn driver.Conn, members []string) (map[string]uint64, error) {
	return versions(ctx, conn, members, "SELECT member_id, version FROM "+clickhouse.ProfilesTable+" FINAL WHERE member_id IN "+pendingTable)
}

// LatestVersions reads the newest profile version written for each member
// among its rows whose labels were computed at or after since (updated_at,
// whole seconds), without merging rows first. Older rows are left out: a
// bench's PostgreSQL database is a fresh copy of one template every run,
// so its members' ids and version numbers repeat from run to run, and a
// ClickHouse database that outlives a run (one the pipeline bench did not
// make anew) holds earlier runs' rows under them.
func LatestVersions(ctx context.Context, conn driver.Conn, members []string, since time.Time) (map[string]uint64, error) {
	return versions(ctx, conn, members, fmt.Sprintf("SELECT member_id, max(version) FROM %s WHERE member_id IN %s AND updated_at >= toDateTime(%d) GROUP BY member_id",
		clickhouse.ProfilesTable, pendingTable, since.Unix()))
}

// pendingTable names the members a versions query asks for. They go to the
// server as an external table (data beside the query), not as a list of
// literals in its text: the freshness checkers ask for thousands of members
// every few milliseconds, and 18.16 took 44 ms for a query with an IN list
// of 6,000 ids, most of it parsing the text, against 9 ms for the same ids
// sent as data.
const pendingTable = "_pending"

func versions(ctx context.Context, conn driver.Conn, members []string, q string) (map[string]uint64, error) {
	pending, err := ext.NewTable(pendingTable, ext.Column("member_id", "String"))
	if err != nil {
		return nil, err
	}
	for _, m := range members {
		if err := pending.Append(m); err != nil {
			return nil, err
		}
	}
	rows, err := conn.Query(ch.Context(ctx, ch.WithExternalTable(pending)), q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	got := map[string]uint64{}
	for rows.Next() {
		var id string
		var v uint64
		if err := rows.Scan(&id, &v); err != nil {
			return nil, err
		}
		got[id] = v
	}
	return got, rows.Err()
}

// SyntheticColumn is a label column of synthetic profiles, with the values
// of an enum label.
type SyntheticColumn struct {
	clickhouse.ProfileColumn
	Values []string
}

// CountSynthetic counts the synthetic profiles (member ids starting with
// prefix) in member_profiles, and those of catalogue version.
func CountSynthetic(ctx context.Context, conn driver.Conn, prefix, version string) (all, current uint64, err error) {
	err = conn.QueryRow(ctx, "SELECT count(), countIf(catalog_version = "+quote(version)+") FROM "+clickhouse.ProfilesTable+
		" WHERE member_id LIKE "+quote(prefix+"%")).Scan(&all, &current)
	return all, current, err
}

// DropProfiles removes member_profiles of the connection's database (and
// every row in it).
func DropProfiles(ctx context.Context, conn driver.Conn) error {
	return conn.Exec(ctx, "DROP TABLE IF EXISTS "+clickhouse.ProfilesTable)
}

// LoadSynthetic inserts n synthetic profiles of catalogue version into
// member_profiles, member ids prefix0 … prefix(n-1), with random values per
// column generated by the server in one INSERT … SELECT FROM numbers():
// one label in ten absent, enums among their values, numbers in a range
// their names suggest (scores 1–5, shares and rates 0–1, days 0–365).
func LoadSynthetic(ctx context.Context, conn driver.Conn, prefix, version string, n int, cols []SyntheticColumn) error {
	names := []string{"member_id", "version", "updated_at", "catalog_version", "behavioural_withheld"}
	exprs := []string{"concat(" + quote(prefix) + ", toString(number))", "toUInt64(1)", "now()", quote(version), "toUInt8(0)"}
	for i, col := range cols {
		r1, r2 := strconv.Itoa(2*i+1), strconv.Itoa(2*i+2)
		var v, typ string
		switch col.Type {
		case clickhouse.LabelBool:
			v, typ = "toUInt8(rand("+r2+") % 2)", "Nullable(UInt8)"
		case clickhouse.LabelEnum:
			values := []string{"a", "b", "c"}
			if len(col.Values) > 0 {
				values = col.Values
			}
			quoted := make([]string, len(values))
			for k, s := range values {
				quoted[k] = "'" + strings.ReplaceAll(s, "'", `\'`) + "'"
			}
			v, typ = "arrayElement(["+strings.Join(quoted, ", ")+"], rand("+r2+") % "+strconv.Itoa(len(values))+" + 1)", "Nullable(String)"
		default:
			typ = "Nullable(Float64)"
			switch id := col.Name; {
			case strings.Contains(id, "score"):
				v = "toFloat64(rand(" + r2 + ") % 5 + 1)"
			case strings.Contains(id, "share") || strings.Contains(id, "rate") || strings.Contains(id, "ratio") || strings.Contains(id, "risk"):
				v = "round(rand(" + r2 + ") / 4294967296, 3)"
			case strings.Contains(id, "days"):
				v = "toFloat64(rand(" + r2 + ") % 366)"
			default:
				v = "round(exp(rand(" + r2 + ") / 4294967296 * 8), 2)"
			}
		}
		names = append(names, "`"+col.Name+"`")
		// One label in ten is absent (NULL).
		exprs = append(exprs, "if(rand("+r1+") % 10 = 0, CAST(NULL AS "+typ+"), CAST("+v+" AS "+typ+"))")
	}
	q := "INSERT INTO " + clickhouse.ProfilesTable + " (" + strings.Join(names, ", ") + ") SELECT " + strings.Join(exprs, ", ") +
		" FROM numbers(" + strconv.Itoa(n) + ")"
	// Blocks of 100,000 rows: a million rows of 200+ columns in one block
	// would take gigabytes of server memory.
	ictx := ch.Context(ctx, ch.WithSettings(ch.Settings{"min_insert_block_size_rows": 100_000, "max_block_size": 65_536}))
	return conn.Exec(ictx, q)
}

// quote is s as a ClickHouse string literal.
func quote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `\'`) + "'"
}

// ---- the floor ----

// RecordFloor is a scratch MergeTree table of Kafka records (key, value,
// partition, offset), filled in batches: a copy with no logic.
type RecordFloor struct {
	conn  driver.Conn
	table string
}

// NewRecordFloor creates the table name (a plain identifier).
func NewRecordFloor(ctx context.Context, conn driver.Conn, name string) (*RecordFloor, error) {
	if err := conn.Exec(ctx, `CREATE TABLE `+name+` (k String, v String, p Int32, o Int64) ENGINE = MergeTree ORDER BY (p, o)`); err != nil {
		return nil, err
	}
	return &RecordFloor{conn: conn, table: name}, nil
}

// Batch starts a batch insert; Append each record, then Send.
func (f *RecordFloor) Batch(ctx context.Context) (driver.Batch, error) {
	return f.conn.PrepareBatch(ctx, `INSERT INTO `+f.table+` (k, v, p, o)`)
}

// Drop removes the table.
func (f *RecordFloor) Drop() { _ = f.conn.Exec(context.Background(), `DROP TABLE IF EXISTS `+f.table) }

// ---- what an analyst asks ----

// AnalystQuery is a question a marketing analyst asks of one run's events
// (ids LIKE the run's pattern), in the SQL they would write.
type AnalystQuery struct {
	Title, SQL string // SQL has one parameter, ?, the run's LIKE pattern
}

// AnalystQueries are the demo's questions.
var AnalystQueries = []AnalystQuery{
	{"Sales by channel", `SELECT channel, count() AS orders, sum(amount_minor) / 100 AS revenue, round(avg(amount_minor) / 100, 2) AS aov
  FROM member_events FINAL
 WHERE event_type = 'transaction' AND event_id LIKE ?
 GROUP BY channel ORDER BY revenue DESC`},
	{"Omnichannel members (bought in 2+ channels)", `SELECT uniqExact(member_id) AS members
  FROM (SELECT member_id FROM member_events FINAL
         WHERE event_type = 'transaction' AND event_id LIKE ?
         GROUP BY member_id HAVING uniqExact(channel) >= 2)`},
	{"Top categories", `SELECT items.category AS category, sum(items.amount_minor) / 100 AS revenue, count() AS lines
  FROM member_events FINAL ARRAY JOIN items
 WHERE event_id LIKE ?
 GROUP BY category ORDER BY revenue DESC LIMIT 5`},
	{"Identity audit: what OneID did in this run", `SELECT action, channel, count() AS records
  FROM identity_audit FINAL
 WHERE cause_id LIKE ?
 GROUP BY action, channel ORDER BY action, channel`},
	{"Members of this run by lifecycle stage and RFM segment (current profiles)", `SELECT lifecycle_stage, rfm_segment, count() AS members
  FROM current_profiles
 WHERE isNotNull(lifecycle_stage) AND member_id IN (SELECT member_id FROM member_events WHERE event_id LIKE ?)
 GROUP BY lifecycle_stage, rfm_segment ORDER BY members DESC, lifecycle_stage`},
	{"Top members by spend, with points", `SELECT e.member_id, e.spend, c.points
  FROM (SELECT member_id, sum(amount_minor) / 100 AS spend FROM member_events FINAL
         WHERE event_type = 'transaction' AND event_id LIKE ? GROUP BY member_id) AS e
  ANY LEFT JOIN (SELECT member_id, argMax(points_balance, sequence) AS points FROM member_changes FINAL
                  WHERE change_type = 'points_changed' GROUP BY member_id) AS c USING member_id
 ORDER BY e.spend DESC LIMIT 5`},
}

// Text is the query with the run's pattern in place of its parameter.
func (q AnalystQuery) Text(like string) string { return strings.ReplaceAll(q.SQL, "?", quote(like)) }

// Run runs the query for the run's pattern and returns its columns and its
// rows as text (NULL for an absent value).
func (q AnalystQuery) Run(ctx context.Context, conn driver.Conn, like string) (cols []string, rows [][]string, err error) {
	rs, err := conn.Query(ctx, q.SQL, like)
	if err != nil {
		return nil, nil, err
	}
	defer rs.Close()
	cols = rs.Columns()
	types := rs.ColumnTypes()
	for rs.Next() {
		vals := make([]any, len(cols))
		for i := range vals {
			vals[i] = reflect.New(types[i].ScanType()).Interface()
		}
		if err := rs.Scan(vals...); err != nil {
			return nil, nil, err
		}
		cells := make([]string, len(vals))
		for i, v := range vals {
			cells[i] = fmt.Sprint(deref(v))
		}
		rows = append(rows, cells)
	}
	return cols, rows, rs.Err()
}

// deref follows scan targets (and Nullable columns' pointers) to the value.
func deref(v any) any {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return "NULL"
		}
		rv = rv.Elem()
	}
	return rv.Interface()
}

// DropDatabase drops the database conn is connected to, for a benchmark
// that starts from an empty one (clickhouse.Open creates it again).
func DropDatabase(ctx context.Context, conn driver.Conn, db string) error {
	return conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
}
