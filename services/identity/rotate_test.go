package identity_test

import (
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
)

func key(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32)))
}

// Rotating the encryption key: write under k1, make k2 active with k1 still
// listed, re-encrypt, then run with k2 alone. Lookups (keyed hashes) and
// member codes keep working throughout.
func TestReencryptRetiresOldKey(t *testing.T) {
	ctx := ctxT(t)
	pool := pgtest.NewPool(t, nil)
	newSvc := func(keys identity.KeyConfig) *identity.Service {
		t.Helper()
		svc, err := identity.New(identity.Config{Keys: keys}, pool, changes.Writer{}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	hmacKey := key('h')
	old := newSvc(identity.KeyConfig{HMACKey: hmacKey, EncKeys: "k1:" + key('1'), EncKeyID: "k1"})
	var members []string
	for i, ids := range [][]*mcv1.Identifier{
		{phone("13611110001"), email("one@example.cn")},
		{phone("13611110002")},
		{email("three@example.cn"), card("C-3")},
	} {
		resp, err := old.Resolve(ctx, resolveReq(string(rune('a'+i)), true, ids...))
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, resp.GetMemberId())
	}
	if _, err := old.IssueMemberCode(ctx, uuid.MustParse(members[0])); err != nil {
		t.Fatal(err)
	}

	// The key file form, with both keys and k2 active.
	file := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(file, []byte("hmac_key: "+hmacKey+"\nactive_key_id: k2\nencryption_keys:\n  k1: "+key('1')+"\n  k2: "+key('2')+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	both := newSvc(identity.KeyConfig{File: file})
	var calls []int64
	n, err := both.Reencrypt(ctx, 2, func(done, total int64) {
		calls = append(calls, done)
		if total != 5 {
			t.Errorf("total = %d, want 5 (4 PII identifiers, 1 code secret)", total)
		}
	})
	if err != nil || n != 5 {
		t.Fatalf("re-encrypted %d (err %v), want 5", n, err)
	}
	if len(calls) < 3 || calls[len(calls)-1] != 5 {
		t.Fatalf("progress calls %v", calls)
	}
	if left, err := postgres.CountSealedNotUnder(ctx, pool, "k2"); err != nil || left != 0 {
		t.Fatalf("%d ciphertexts left under other keys (err %v)", left, err)
	}
	if again, err := both.Reencrypt(ctx, 2, nil); err != nil || again != 0 {
		t.Fatalf("second run re-encrypted %d (err %v), want 0", again, err)
	}

	// k1 is gone: everything still reads.
	only := newSvc(identity.KeyConfig{HMACKey: hmacKey, EncKeys: "k2:" + key('2'), EncKeyID: "k2"})
	found, err := only.FindByIdentifier(ctx, phone("13611110001"))
	if err != nil || found.GetMemberId() != members[0] {
		t.Fatalf("lookup after rotation: %v, %v", found.GetMemberId(), err)
	}
	code, err := only.IssueMemberCode(ctx, uuid.MustParse(members[0]))
	if err != nil {
		t.Fatalf("issuing a code with the rotated secret: %v", err)
	}
	if got, err := only.VerifyMemberCode(ctx, code.Code, identity.CodeUse{}); err != nil || got.String() != members[0] {
		t.Fatalf("verify after rotation: %v, %v", got, err)
	}
}

func TestKeyFileAndVariablesAreExclusive(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(file, []byte("hmac_key: "+key('h')+"\nactive_key_id: k1\nencryption_keys: {k1: "+key('1')+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := (identity.KeyConfig{File: file}).Validate(); err != nil {
		t.Fatalf("valid key file: %v", err)
	}
	if err := (identity.KeyConfig{File: file, HMACKey: key('h')}).Validate(); err == nil || !strings.Contains(err.Error(), "MC_PII_KEYS_FILE") {
		t.Fatalf("file and variables together: %v", err)
	}
	if err := (identity.KeyConfig{File: file + ".missing"}).Validate(); err == nil {
		t.Fatal("missing key file accepted")
	}
}
