package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/tags"
)

// TestLoadsAreAuditedWithTheirOperator: 'program load' and 'tags load'
// record, with the version they store, who loaded it (cli/NAME), the
// SHA-256 of the file and the machine's own account of the OS user, host
// and file; a load refused (a version loaded before) records nothing.
func TestLoadsAreAuditedWithTheirOperator(t *testing.T) {
	ctx := onPlatform(t, 2*time.Minute)
	if err := Execute(ctx, []string{"migrate"}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	pool := platformPool(t, ctx)

	dir := t.TempDir()
	prog := strings.Replace(string(benefits.DefaultProgramSource()), "version: ", "version: audited-", 1)
	cat := strings.Replace(string(tags.DefaultCatalog()), "version: ", "version: audited-", 1)
	progFile, catFile := filepath.Join(dir, "program.yaml"), filepath.Join(dir, "catalog.yaml")
	for f, src := range map[string]string{progFile: prog, catFile: cat} {
		if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out, log bytes.Buffer
	if err := Execute(ctx, []string{"program", "load", progFile, "--operator", "alice"}, &out, &log); err != nil {
		t.Fatalf("program load: %v\n%s", err, log.String())
	}
	if err := Execute(ctx, []string{"tags", "load", "--operator=bob.li", catFile}, &out, &log); err != nil {
		t.Fatalf("tags load: %v\n%s", err, log.String())
	}
	// Loaded again: refused, and not recorded.
	if err := Execute(ctx, []string{"program", "load", progFile, "--operator", "carol"}, &out, &log); err == nil ||
		!strings.Contains(err.Error(), "loaded before") {
		t.Errorf("the same version again: %v", err)
	}

	rows, err := postgres.PendingConfigAudit(ctx, pool, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("config audit %+v; want 2 records", rows)
	}
	hash := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }
	for i, want := range []struct {
		actor, action, sha, file string
		doc                      postgres.DocumentKind
	}{
		{"cli/alice", "program.loaded", hash(prog), progFile, postgres.Programme},
		{"cli/bob.li", "catalog.loaded", hash(cat), catFile, postgres.Catalogue},
	} {
		r := rows[i]
		var detail map[string]string
		if err := json.Unmarshal(r.Detail, &detail); err != nil {
			t.Fatal(err)
		}
		if r.Actor != want.actor || r.Action != want.action || r.Document != want.doc || !strings.HasPrefix(r.Version, "audited-") ||
			r.SHA256 != want.sha || detail["file"] != want.file || detail["os_user"] == "" || detail["host"] == "" {
			t.Errorf("record %d: %+v, detail %v; want %+v", i, r, detail, want)
		}
		var stored string
		if err := pool.QueryRow(ctx, `SELECT source FROM `+string(r.Document)+` WHERE version = $1`, r.Version).Scan(&stored); err != nil ||
			hash(stored) != r.SHA256 {
			t.Errorf("record %d: the stored source does not hash to the recorded SHA-256 (%v)", i, err)
		}
	}
}

// TestLoadWithoutOperatorIsAUsageError: a load that does not say who makes
// it, or names no one recognisably, is refused before anything connects.
func TestLoadWithoutOperatorIsAUsageError(t *testing.T) {
	for _, args := range [][]string{
		{"program", "load", "program.yaml"},
		{"tags", "load", "catalog.yaml"},
		{"program", "load", "program.yaml", "--operator="},
		{"tags", "load", "catalog.yaml", "--operator", "alice smith"},
	} {
		err := Execute(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{})
		var u *UsageError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), "operator") {
			t.Errorf("%v: %v; want a usage error naming --operator", args, err)
		}
	}
}
