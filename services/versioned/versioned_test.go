package versioned_test

import (
	"context"
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

var format = versioned.Format[doc]{Name: "test document", Kind: postgres.Catalogue,
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
	if _, err := format.Store(ctx, pool, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx); err != nil || d.Current().Version != "v1" {
		t.Fatalf("after storing v1: %v, %v", err, d.Current())
	}
	// A version is stored once; an invalid one is refused before it is stored.
	if _, err := format.Store(ctx, pool, []byte("v1")); err == nil || !strings.Contains(err.Error(), "loaded before") {
		t.Errorf("v1 again: %v", err)
	}
	if _, err := format.Store(ctx, pool, []byte("bad-1")); err == nil {
		t.Error("an invalid version was stored")
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
