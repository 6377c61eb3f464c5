package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/membercenter/membercenter/services/auth"
)

// TestKeygenAndSign: auth keygen writes a channel's private key and adds
// its public key to the JWKS (twice: a rotation), and never overwrites a
// private key; auth sign's token, signed with either key, verifies against
// that JWKS.
func TestKeygenAndSign(t *testing.T) {
	dir := t.TempDir()
	set := filepath.Join(dir, "partner-mall.jwks.json")
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := Execute(context.Background(), append([]string{"auth"}, args...), &out, &errOut)
		return strings.TrimSpace(out.String()), err
	}
	for _, k := range []struct{ kid, alg string }{{"mall-1", "EdDSA"}, {"mall-2", "ES256"}} {
		if _, err := run("keygen", "--kid", k.kid, "--alg", k.alg, "--private-key", filepath.Join(dir, k.kid+".pem"), "--jwks", set); err != nil {
			t.Fatalf("keygen %s: %v", k.kid, err)
		}
	}
	if _, err := run("keygen", "--kid", "mall-3", "--private-key", filepath.Join(dir, "mall-1.pem"), "--jwks", set); err == nil {
		t.Error("keygen overwrote a private key")
	}
	if _, err := run("keygen", "--kid", "mall-1", "--private-key", filepath.Join(dir, "other.pem"), "--jwks", set); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("keygen with a kid the JWKS holds: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "mall-1.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key file: %v, %v; want mode 0600", fi, err)
	}
	src, err := os.ReadFile(set)
	if err != nil {
		t.Fatal(err)
	}
	var doc jose.JSONWebKeySet
	if err := json.Unmarshal(src, &doc); err != nil || len(doc.Keys) != 2 {
		t.Fatalf("JWKS after two keygens: %d keys, %v", len(doc.Keys), err)
	}
	if bytes.Contains(src, []byte(`"d"`)) {
		t.Fatal("the JWKS holds private key material")
	}
	clients := filepath.Join(dir, "clients.yaml")
	if err := os.WriteFile(clients, []byte("clients:\n  - {id: partner-mall, channel: ecommerce, jwks: partner-mall.jwks.json, scopes: [profile.read]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := auth.Load(clients)
	if err != nil {
		t.Fatal(err)
	}
	for _, kid := range []string{"mall-1", "mall-2"} {
		tok, err := run("sign", "--client", "partner-mall", "--kid", kid, "--private-key", filepath.Join(dir, kid+".pem"), "--ttl", "10m")
		if err != nil {
			t.Fatalf("sign with %s: %v", kid, err)
		}
		p, err := a.Verify(tok)
		if err != nil || p.Client.ID != "partner-mall" {
			t.Errorf("token signed with %s: %v, %v", kid, p, err)
		}
	}
	// Without --jwks the JWKS is printed.
	out, err := run("keygen", "--kid", "solo", "--private-key", filepath.Join(dir, "solo.pem"))
	if err != nil || !strings.Contains(out, `"kid": "solo"`) {
		t.Errorf("keygen to stdout: %q, %v", out, err)
	}
}
