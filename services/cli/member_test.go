package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/storage/postgres"
)

// TestMemberExportWritesTheDocument: `member export ID --out FILE` writes
// the member's export document to a file only its owner can read; a
// malformed id is a usage error, an unknown one an error naming it.
func TestMemberExportWritesTheDocument(t *testing.T) {
	ctx := onPlatform(t, 2*time.Minute)
	pool := platformPool(t, ctx)
	member := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(ctx, pool, member, clocktest.Start()); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "export.json")
	if err := os.WriteFile(file, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, log bytes.Buffer
	if err := Execute(ctx, []string{"member", "export", member.String(), "--out", file, "--operator", "alice"}, &out, &log); err != nil {
		t.Fatalf("member export: %v\n%s", err, log.String())
	}
	if !strings.Contains(log.String(), "member "+member.String()+" exported to "+file) {
		t.Errorf("member export said %q", log.String())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Format   string                      `json:"format"`
		MemberID string                      `json:"member_id"`
		Postgres map[string][]map[string]any `json:"postgres"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s is not JSON: %v", file, err)
	}
	if doc.Format != "membercenter.member-data.v1" || doc.MemberID != member.String() || len(doc.Postgres["members"]) != 1 {
		t.Errorf("document %s", b)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("export file mode %v (%v); want 0600", fi.Mode().Perm(), err)
	}

	// The export is in the operator audit under the operator's name.
	var actor string
	if err := pool.QueryRow(ctx, `SELECT actor FROM operator_audit WHERE member_id = $1 AND action = 'member.exported'`, member).Scan(&actor); err != nil || actor != "cli/alice" {
		t.Errorf("export audited as %q (%v); want cli/alice", actor, err)
	}

	var u *UsageError
	if err := Execute(ctx, []string{"member", "export", "not-a-uuid", "--operator", "alice"}, &out, &log); !errors.As(err, &u) {
		t.Errorf("malformed id: %v; want a usage error", err)
	}
	if err := Execute(ctx, []string{"member", "export", member.String()}, &out, &log); !errors.As(err, &u) || !strings.Contains(err.Error(), "operator") {
		t.Errorf("no --operator: %v; want a usage error naming it", err)
	}
	unknown := uuid.NewString()
	if err := Execute(ctx, []string{"member", "export", unknown, "--operator", "alice"}, &out, &log); !errors.Is(err, postgres.ErrNotFound) || !strings.Contains(err.Error(), unknown) {
		t.Errorf("unknown member: %v", err)
	}
}
