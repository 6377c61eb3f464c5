// Package pgtest gives each test its own real, migrated PostgreSQL database:
// a clone of a migrated template, made in milliseconds and dropped when the
// test ends. It uses the server scripts/deps.sh starts (MC_PG_URL).
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/membercenter/membercenter/storage/postgres"
)

// DefaultURL is the database scripts/deps.sh creates.
const DefaultURL = "postgres://membercenter:membercenter@127.0.0.1:55432/membercenter?sslmode=disable"

// AdminURL is the URL tests connect with to create databases.
func AdminURL() string {
	if u := os.Getenv("MC_PG_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// NewDB returns the URL of a fresh migrated database for t.
func NewDB(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("pgtest: connect to %s (is scripts/deps.sh running?): %v", AdminURL(), err)
	}
	defer admin.Close(ctx)

	tmpl, err := ensureTemplate(ctx, admin)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	name := "mc_test_" + randomSuffix()
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tmpl)); err != nil {
		t.Fatalf("pgtest: clone template: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
		}
	})
	return withDatabase(AdminURL(), name)
}

// NewPool returns a pool on a fresh migrated database for t, closed when the
// test ends. Queries are traced with tp (nil for none). When the test ends,
// the database is checked (see CheckStored).
func NewPool(t testing.TB, tp trace.TracerProvider) *pgxpool.Pool {
	t.Helper()
	pool := NewPoolUnchecked(t, tp)
	t.Cleanup(func() {
		if err := CheckStored(context.Background(), pool); err != nil {
			t.Errorf("pgtest: at the end of the test: %v", err)
		}
	})
	return pool
}

// CheckStored is what a test checks of a database once its run is over:
// the ledger invariants (CheckLedger) and the references the schema does
// not enforce (CheckReferences).
func CheckStored(ctx context.Context, pool *pgxpool.Pool) error {
	var errs []error
	if err := CheckLedger(ctx, pool); err != nil {
		errs = append(errs, fmt.Errorf("ledger invariant broken: %w", err))
	}
	if err := CheckReferences(ctx, pool); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckRun is what a test checks of a database a whole platform ran on:
// CheckStored and CheckLabelSets, which a test's hand-written rows need
// not pass (NewPool checks only CheckStored).
func CheckRun(ctx context.Context, pool *pgxpool.Pool) error {
	return errors.Join(CheckStored(ctx, pool), CheckLabelSets(ctx, pool))
}

// Reference is a column whose values name rows of another table, checked by
// tests rather than by a foreign key; Column and RefColumn may each list
// several columns (", " between them), paired in order.
type Reference struct {
	Table, Column, RefTable, RefColumn string
}

// UncheckedReferences are the references the schema does not enforce:
// member_label_sets' member (member_labels' before it, whose foreign key
// 00031 dropped: every writer holds the member's row, and members are
// never deleted, so its check could not fail and was half of each insert).
var UncheckedReferences = []Reference{
	{"member_label_sets", "member_id", "members", "member_id"},
	// A pending change's outbox row: the outbox's trigger writes the
	// pending row with it, and the outbox's pruning and erasure delete
	// only published changes.
	{"outbox_pending", "outbox_id, member_id", "outbox", "outbox_id, member_id"},
}

// CheckReferences verifies that every value of UncheckedReferences names an
// existing row, as a foreign key would.
func CheckReferences(ctx context.Context, q postgres.Querier) error {
	var errs []string
	for _, r := range UncheckedReferences {
		// A reference of several columns pairs them in order.
		cols, refs := strings.Split(r.Column, ", "), strings.Split(r.RefColumn, ", ")
		match := make([]string, len(cols))
		for i := range cols {
			match[i] = fmt.Sprintf("p.%s = c.%s", refs[i], cols[i])
		}
		var n int64
		var example string
		err := q.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), coalesce(min(c.%[2]s::text), '') FROM %[1]s c
			WHERE c.%[2]s IS NOT NULL AND NOT EXISTS (SELECT FROM %[3]s p WHERE %[4]s)`,
			r.Table, cols[0], r.RefTable, strings.Join(match, " AND "))).Scan(&n, &example)
		if err != nil {
			return fmt.Errorf("check %s.%s: %w", r.Table, r.Column, err)
		}
		if n > 0 {
			errs = append(errs, fmt.Sprintf("%s.%s names no %s row in %d rows (%s)", r.Table, r.Column, r.RefTable, n, example))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("references broken: %s", strings.Join(errs, "; "))
	}
	return nil
}

// CheckLedger verifies the double-entry invariants: every transaction
// balances; each member account's ledger sum equals its balance and the sum
// of its lots' remaining points; the programme's counter-accounts —
// liability, and the points migrated from legacy systems — sum to minus
// the sum of all balances.
func CheckLedger(ctx context.Context, pool *pgxpool.Pool) error {
	var unbalanced, accounts int
	var liability, balances int64
	err := pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY transaction_id HAVING sum(delta) <> 0) x),
		(SELECT count(*) FROM (
		    SELECT m.member_id FROM (SELECT member_id FROM points_accounts UNION SELECT member_id FROM ledger_entries WHERE member_id IS NOT NULL
		                             UNION SELECT member_id FROM point_lots) m
		      LEFT JOIN points_accounts a USING (member_id)
		      LEFT JOIN (SELECT member_id, sum(delta) AS s FROM ledger_entries WHERE member_id IS NOT NULL GROUP BY member_id) l USING (member_id)
		      LEFT JOIN (SELECT member_id, sum(remaining) AS r FROM point_lots GROUP BY member_id) p USING (member_id)
		     WHERE coalesce(l.s, 0) <> coalesce(a.balance, 0) OR coalesce(p.r, 0) <> coalesce(a.balance, 0)) y),
		(SELECT coalesce(sum(delta), 0) FROM ledger_entries WHERE account IN ('programme:liability', 'programme:migrated')),
		(SELECT coalesce(sum(balance), 0) FROM points_accounts)`).Scan(&unbalanced, &accounts, &liability, &balances)
	if err != nil {
		return fmt.Errorf("check ledger: %w", err)
	}
	var errs []string
	if unbalanced > 0 {
		errs = append(errs, fmt.Sprintf("%d unbalanced transactions", unbalanced))
	}
	if accounts > 0 {
		errs = append(errs, fmt.Sprintf("%d members whose ledger, balance and lots disagree", accounts))
	}
	if liability != -balances {
		errs = append(errs, fmt.Sprintf("liability and migrated points %d are not minus the sum of balances %d", liability, balances))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// NewPoolUnchecked is NewPool without the ledger check, for tests of the
// storage layer that write partial rows on purpose.
func NewPoolUnchecked(t testing.TB, tp trace.TracerProvider) *pgxpool.Pool {
	t.Helper()
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	pool, err := postgres.Open(context.Background(), postgres.Config{URL: NewDB(t), MaxConns: 20}, tp)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Values runs a statement whose rows are one column each and returns the
// values; an error fails the test.
func Values[T any](t testing.TB, ctx context.Context, q postgres.Querier, sql string, args ...any) []T {
	t.Helper()
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	vs, err := pgx.CollectRows(rows, pgx.RowTo[T])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return vs
}

// ensureTemplate creates, once per set of migrations, a migrated database to
// clone. Its name carries a hash of the migrations, so a changed migration
// gets a new template.
func ensureTemplate(ctx context.Context, admin *pgx.Conn) (string, error) {
	sum, err := migrationsHash()
	if err != nil {
		return "", err
	}
	name := "mc_tmpl_" + sum[:16]
	lockKey := int64(binary.BigEndian.Uint64([]byte(sum[:8])))
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return "", fmt.Errorf("lock template: %w", err)
	}
	defer admin.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", lockKey) //nolint:errcheck

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up template: %w", err)
	}
	if exists {
		return name, nil
	}
	building := name + "_wip"
	if _, err := admin.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", building)); err != nil {
		return "", fmt.Errorf("drop stale template: %w", err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return "", fmt.Errorf("create template: %w", err)
	}
	pool, err := pgxpool.New(ctx, withDatabase(AdminURL(), building))
	if err != nil {
		return "", fmt.Errorf("connect template: %w", err)
	}
	_, err = postgres.Migrate(ctx, pool)
	pool.Close()
	if err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	// Renamed only once complete, so a crash never leaves a half-built template.
	if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s RENAME TO %s", building, name)); err != nil {
		return "", fmt.Errorf("publish template: %w", err)
	}
	return name, nil
}

func migrationsHash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(postgres.Migrations(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(postgres.Migrations(), path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\n%d\n", path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func withDatabase(raw, db string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Path = "/" + db
	return u.String()
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return strings.ToLower(hex.EncodeToString(b))
}
