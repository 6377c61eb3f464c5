package clickhouse

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// MemberRows returns the rows about members of every table of the current
// database that names members: a String column member_id or *_member_id.
// Views are left out (they read the tables), and so are the local tables
// behind a Distributed one (it reads them all). Rows are objects of column
// → value: strings, numbers, bools, arrays, nil, and times as RFC 3339 in
// UTC. A table whose engine replaces or collapses rows is read FINAL, as
// its readers see it.
func MemberRows(ctx context.Context, conn driver.Conn, members []string) (map[string][]map[string]any, error) {
	tables, err := memberTables(ctx, conn)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]map[string]any, len(tables))
	if len(members) == 0 {
		return out, nil
	}
	marks := strings.TrimSuffix(strings.Repeat("?,", len(members)), ",")
	args := make([]any, len(members))
	for i, m := range members {
		args[i] = m
	}
	for _, t := range tables {
		conds := make([]string, len(t.columns))
		for i, c := range t.columns {
			conds[i] = quote(c) + " IN (" + marks + ")"
		}
		final := ""
		if t.final {
			final = " FINAL"
		}
		// Each column condition takes the member list once.
		var targs []any
		for range t.columns {
			targs = append(targs, args...)
		}
		rows, err := readRows(ctx, conn, "SELECT * FROM "+quote(t.name)+final+" WHERE "+strings.Join(conds, " OR "), targs...)
		if err != nil {
			return nil, fmt.Errorf("member rows of %s: %w", t.name, err)
		}
		out[t.name] = rows
	}
	return out, nil
}

// memberTable is a table with member columns.
type memberTable struct {
	name    string
	columns []string
	final   bool
}

func memberTables(ctx context.Context, conn driver.Conn) ([]memberTable, error) {
	engines := map[string]string{}
	rows, err := conn.Query(ctx, `SELECT name, engine FROM system.tables WHERE database = currentDatabase()`)
	if err != nil {
		return nil, fmt.Errorf("member tables: %w", err)
	}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			rows.Close()
			return nil, fmt.Errorf("member tables: %w", err)
		}
		engines[name] = engine
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("member tables: %w", err)
	}
	rows, err = conn.Query(ctx, `
		SELECT table, name FROM system.columns
		 WHERE database = currentDatabase()
		   AND type IN ('String', 'Nullable(String)', 'LowCardinality(String)')
		   AND (name = 'member_id' OR endsWith(name, '_member_id'))
		 ORDER BY table, name`)
	if err != nil {
		return nil, fmt.Errorf("member tables: %w", err)
	}
	defer rows.Close()
	var out []memberTable
	for rows.Next() {
		var table, column string
		if err := rows.Scan(&table, &column); err != nil {
			return nil, fmt.Errorf("member tables: %w", err)
		}
		engine := engines[table]
		if strings.HasSuffix(engine, "View") || engines[strings.TrimSuffix(table, LocalSuffix)] == "Distributed" && strings.HasSuffix(table, LocalSuffix) {
			continue
		}
		if n := len(out); n > 0 && out[n-1].name == table {
			out[n-1].columns = append(out[n-1].columns, column)
			continue
		}
		final := engine != "Distributed" && (strings.Contains(engine, "Replacing") || strings.Contains(engine, "Collapsing") ||
			strings.Contains(engine, "Summing") || strings.Contains(engine, "Aggregating"))
		out = append(out, memberTable{name: table, columns: []string{column}, final: final})
	}
	return out, rows.Err()
}

// readRows runs query and returns its rows as column → value.
func readRows(ctx context.Context, conn driver.Conn, query string, args ...any) ([]map[string]any, error) {
	rows, err := conn.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	out := []map[string]any{}
	for rows.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		row := make(map[string]any, len(types))
		for i, ct := range types {
			row[ct.Name()] = plain(reflect.ValueOf(dest[i]).Elem())
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

// plain is a scanned value as JSON shows it: pointers (Nullable) followed,
// times as RFC 3339 in UTC, arrays element by element.
func plain(v reflect.Value) any {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if t, ok := v.Interface().(time.Time); ok {
		return t.UTC().Format(time.RFC3339)
	}
	switch v.Kind() {
	case reflect.Slice, reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = plain(v.Index(i))
		}
		return out
	}
	return v.Interface()
}

// quote is a ClickHouse identifier in back quotes, escaped: the names come
// from system tables, not from code.
func quote(name string) string {
	return "`" + strings.NewReplacer(`\`, `\\`, "`", "\\`").Replace(name) + "`"
}
