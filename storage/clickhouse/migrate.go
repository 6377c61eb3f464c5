package clickhouse

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	chproto "github.com/ClickHouse/clickhouse-go/v2/lib/proto"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migration is one versioned DDL file.
type Migration struct {
	Version    uint32
	Name       string
	Statements []string
}

// Migrations returns the embedded migrations in version order. A file is
// named NNNN_name.sql and holds statements separated by ";" at line ends.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil || path.Ext(name) != ".sql" {
			return nil, fmt.Errorf("clickhouse migration %q: want NNNN_name.sql", name)
		}
		body, err := fs.ReadFile(migrations, "migrations/"+name)
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: uint32(v), Name: name, Statements: splitStatements(string(body))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i := 1; i < len(out); i++ {
		if out[i].Version == out[i-1].Version {
			return nil, fmt.Errorf("clickhouse migrations %s and %s share a version", out[i-1].Name, out[i].Name)
		}
	}
	return out, nil
}

func splitStatements(body string) []string {
	var stmts []string
	var cur strings.Builder
	for _, line := range strings.Split(body, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") || trimmed == "" {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			stmts = append(stmts, strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		stmts = append(stmts, s)
	}
	return stmts
}

// Migrate applies the migrations not yet recorded in schema_migrations to
// the database conn is connected to, laid out for one server (Schema
// migrates a cluster). Every statement is itself idempotent (IF NOT
// EXISTS), so a run interrupted before its record is written is simply
// repeated.
func Migrate(ctx context.Context, conn driver.Conn) (applied []string, err error) {
	return migrate(ctx, []driver.Conn{conn}, layout{})
}

// migrate applies, on every node, the migrations that node has not
// recorded; each statement reaches all of those nodes before the next is
// sent. schema_migrations is per node (a node added later catches up).
func migrate(ctx context.Context, nodes []driver.Conn, l layout) (applied []string, err error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	done := make([]map[uint32]bool, len(nodes))
	for i, conn := range nodes {
		if err := checkLayout(ctx, conn, l); err != nil {
			return nil, err
		}
		if done[i], err = recorded(ctx, conn); err != nil {
			return nil, err
		}
	}
	for _, m := range ms {
		var todo []driver.Conn
		for i, conn := range nodes {
			if !done[i][m.Version] {
				todo = append(todo, conn)
			}
		}
		if len(todo) == 0 {
			continue
		}
		for _, stmt := range m.Statements {
			stmts, err := shardStatements(stmt, l)
			if err != nil {
				return applied, fmt.Errorf("clickhouse migration %s: %w", m.Name, err)
			}
			for _, s := range stmts {
				for _, conn := range todo {
					if err := execMigration(ctx, conn, s); err != nil {
						return applied, fmt.Errorf("clickhouse migration %s: %w", m.Name, err)
					}
				}
			}
		}
		for _, conn := range todo {
			if err := record(ctx, conn, m); err != nil {
				return applied, fmt.Errorf("record clickhouse migration %s: %w", m.Name, err)
			}
		}
		applied = append(applied, m.Name)
	}
	return applied, nil
}

// recorded creates schema_migrations if missing and returns the versions
// it holds.
func recorded(ctx context.Context, conn driver.Conn) (map[uint32]bool, error) {
	if err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version UInt32, name String, applied_at DateTime DEFAULT now()
	) ENGINE = ReplacingMergeTree() ORDER BY version`); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	done := map[uint32]bool{}
	rows, err := conn.Query(ctx, "SELECT DISTINCT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		done[v] = true
	}
	return done, rows.Err()
}

func execMigration(ctx context.Context, conn driver.Conn, stmt string) error {
	err := conn.Exec(ctx, stmt)
	// 18.16 has no ADD COLUMN IF NOT EXISTS: a migration whose ALTER ran
	// before a crash (but was not recorded) finds its columns there; that
	// is the state it was going to make.
	var ex *chproto.Exception
	if errors.As(err, &ex) && ex.Code == 44 && strings.Contains(strings.ToUpper(stmt), "ADD COLUMN") {
		return nil
	}
	return err
}

// record writes the migration's row with a batch: a plain INSERT … VALUES
// with bound parameters hangs against 18.16.
func record(ctx context.Context, conn driver.Conn, m Migration) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name)")
	if err != nil {
		return err
	}
	if err := b.Append(m.Version, m.Name); err != nil {
		_ = b.Abort()
		return err
	}
	return b.Send()
}
