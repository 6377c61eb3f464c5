// Package chtest gives each test its own migrated database on the real
// ClickHouse server scripts/deps.sh starts (MC_CLICKHOUSE_ADDR), dropped when
// the test ends, and, for the tests of sharding, a two-shard cluster of
// clickhouse-server processes of the test's own (StartCluster).
package chtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	chproto "github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/membercenter/membercenter/storage/clickhouse"
)

// Config returns the settings of a new, not yet created test database.
func Config() clickhouse.Config {
	cfg := clickhouse.Config{Addr: "127.0.0.1:59000", User: "default"}
	if a := os.Getenv("MC_CLICKHOUSE_ADDR"); a != "" {
		cfg.Addr = a
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	cfg.Database = "mc_test_" + hex.EncodeToString(b)
	return cfg
}

// NewDB creates and migrates a database for t and returns a connection to it
// and its config.
func NewDB(t testing.TB) (driver.Conn, clickhouse.Config) {
	t.Helper()
	cfg := Config()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The migration runs on a pool of its own, closed before the test's is
	// opened: a test's first statement once failed on a pooled connection
	// that had served the migration ("use of closed network connection",
	// clickhouse-go v2.50), so the test's pool starts fresh.
	mig, err := clickhouse.Open(ctx, cfg) // creates the database
	if err != nil {
		t.Fatalf("chtest: open %s (is scripts/deps.sh running?): %v", cfg.Addr, err)
	}
	t.Cleanup(func() { drop(t, cfg) })
	_, err = clickhouse.Migrate(ctx, mig)
	mig.Close()
	if err != nil {
		t.Fatalf("chtest: migrate: %v", err)
	}
	conn, err := clickhouse.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("chtest: open %s: %v", cfg.Addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, cfg
}

// drop drops the test's database, on a connection of its own.
func drop(t testing.TB, cfg clickhouse.Config) {
	// A busy server (merges, mutations of other tests) can take long to
	// drop a database: 30 s was not always enough on 2 loaded cores.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := clickhouse.Open(ctx, cfg)
	if err != nil {
		t.Errorf("chtest: drop %s: %v", cfg.Database, err)
		return
	}
	defer conn.Close()
	// A DDL statement a stopped test process sent may still be running on
	// the server (ClickHouse finishes it after the client left); the server
	// then asks to drop again (code 219) or finds files of the table being
	// created (code 1000).
	for attempt := 0; attempt < 20; attempt++ {
		var ex *chproto.Exception
		if err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+cfg.Database); !errors.As(err, &ex) || (ex.Code != 219 && ex.Code != 1000) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("chtest: drop %s: %v", cfg.Database, err)
	}
}

// NewProfilesDB is NewDB with member_profiles and its views made for cols
// (clickhouse.EnsureProfiles).
func NewProfilesDB(t testing.TB, cols []clickhouse.ProfileColumn) driver.Conn {
	t.Helper()
	conn, _ := NewDB(t)
	if err := clickhouse.EnsureProfiles(context.Background(), conn, cols); err != nil {
		t.Fatalf("chtest: ensure profiles: %v", err)
	}
	return conn
}
