package versioned_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/versioned"
)

type doc struct{ Version string }

var format = versioned.Format[doc]{Name: "test document", Kind: postgres.Catalogue, Action: "catalog.loaded",
	Parse: func(src []byte) (*doc, error) {
		if strings.HasPrefix(string(src), "bad") {
			return nil, errors.New("does not validate")
		}
		return &doc{Version: string(src)}, nil
	},
	Version: func(d *doc) string { return d.Version }}

func TestStoreReloadAndRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	d := versioned.New(format, pool, slog.New(slog.DiscardHandler), &doc{Version: "embedded"})
	if err := d.Reload(ctx); err != nil || d.Current().Version != "embedded" {
		t.Fatalf("nothing stored: %v, %v; want the embedded version in force", err, d.Current())
	}
	alice := versioned.Loader{Actor: "cli/alice", Detail: map[string]string{"os_user": "alice"}}
	if _, err := format.Store(ctx, pool, []byte("v1"), alice); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx); err != nil || d.Current().Version != "v1" {
		t.Fatalf("after storing v1: %v, %v", err, d.Current())
	}
	// A version is stored once; an invalid one is refused before it is stored.
	if _, err := format.Store(ctx, pool, []byte("v1"), alice); err == nil || !strings.Contains(err.Error(), "loaded before") {
		t.Errorf("v1 again: %v", err)
	}
	if _, err := format.Store(ctx, pool, []byte("bad-1"), alice); err == nil {
		t.Error("an invalid version was stored")
	}
	if _, err := format.Store(ctx, pool, []byte("v2"), versioned.Loader{}); err == nil || !strings.Contains(err.Error(), "no actor") {
		t.Errorf("a load without an actor: %v", err)
	}
	// A stored version that no longer validates (the validator changed) is
	// refused as a data error; the one in force stays.
	if err := postgres.StoreDocument(ctx, pool, postgres.Catalogue, "bad-2", "bad-2"); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx); err == nil || !strings.Contains(err.Error(), "keeping v1") || d.Current().Version != "v1" {
		t.Errorf("an invalid stored version: %v, in force %v; want it refused and v1 kept", err, d.Current())
	}
}

// TestStoreIsAudited: a stored version is recorded in the configuration
// audit with who loaded it, the version and the SHA-256 of its source, in
// its own transaction: a refused load (a version stored before, one that
// does not validate) records nothing.
func TestStoreIsAudited(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	by := versioned.Loader{Actor: "cli/alice", Detail: map[string]string{"os_user": "ops", "file": "/etc/mc/v1.yaml"}}
	if _, err := format.Store(ctx, pool, []byte("v1"), by); err != nil {
		t.Fatal(err)
	}
	_, _ = format.Store(ctx, pool, []byte("v1"), versioned.Loader{Actor: "cli/bob"})
	_, _ = format.Store(ctx, pool, []byte("bad-1"), versioned.Loader{Actor: "cli/bob"})
	rows, err := postgres.PendingConfigAudit(ctx, pool, 10)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("v1"))
	if len(rows) != 1 {
		t.Fatalf("config audit %+v; want one record", rows)
	}
	r := rows[0]
	if r.Actor != "cli/alice" || r.Action != "catalog.loaded" || r.Document != postgres.Catalogue || r.Version != "v1" ||
		r.SHA256 != hex.EncodeToString(sum[:]) || string(r.Detail) != `{"file": "/etc/mc/v1.yaml", "os_user": "ops"}` {
		t.Errorf("config audit %+v", r)
	}
}
