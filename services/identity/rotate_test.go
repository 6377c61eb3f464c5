package identity_test

import (
	"encoding/base64"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
)

func key(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32)))
}

// Rotating the key-encryption key: members' data keys are wrapped under k1,
// and one identifier is still sealed under the platform key k1 (written
// before members had data keys); with k2 active and k1 still listed,
// Reencrypt moves that ciphertext under its member's data key and Rewrap
// wraps every data key under k2; then the platform runs with k2 alone.
// Lookups (keyed hashes), display values and member codes keep working
// throughout.
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
	k1 := identity.KeyConfig{HMACKey: hmacKey, EncKeys: "k1:" + key('1'), EncKeyID: "k1"}
	old := newSvc(k1)
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
	// The second member's phone as a platform that sealed under k1 wrote it.
	platformKey, err := identity.NewPII(k1)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	var hash []byte
	if err := pool.QueryRow(ctx, `SELECT identifier_id, value_hash FROM member_identifiers WHERE member_id = $1`, members[1]).Scan(&id, &hash); err != nil {
		t.Fatal(err)
	}
	ct, kid, err := platformKey.Encrypt("+8613611110002", hash)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return postgres.UpdateIdentifierCipher(ctx, tx, id, ct, kid) }); err != nil {
		t.Fatal(err)
	}
	display := func(svc *identity.Service) map[string]string {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT member_id::text, value_hash, value_cipher, key_id FROM member_identifiers WHERE value_cipher IS NOT NULL ORDER BY identifier_id`)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for rows.Next() {
			var m, kid string
			var h, c []byte
			if err := rows.Scan(&m, &h, &c, &kid); err != nil {
				t.Fatal(err)
			}
			v, err := svc.PII().Reveal(ctx, c, kid, h)
			if err != nil {
				t.Fatalf("identifier of %s under %s: %v", m, kid, err)
			}
			out[v] = m
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := display(old)
	if len(want) != 4 {
		t.Fatalf("display values %v, want the 4 PII identifiers", want)
	}

	// The key file form, with both keys and k2 active.
	file := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(file, []byte("hmac_key: "+hmacKey+"\nactive_key_id: k2\nencryption_keys:\n  k1: "+key('1')+"\n  k2: "+key('2')+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	both := newSvc(identity.KeyConfig{File: file})
	n, err := both.Reencrypt(ctx, 2, func(done, total int64) {
		if total != 1 {
			t.Errorf("total = %d, want 1 (the identifier under the platform key)", total)
		}
	})
	if err != nil || n != 1 {
		t.Fatalf("re-encrypted %d (err %v), want 1", n, err)
	}
	var calls []int64
	w, err := both.PII().Rewrap(ctx, 2, func(done, total int64) {
		calls = append(calls, done)
		if total != 3 {
			t.Errorf("total = %d, want 3 (a data key per member)", total)
		}
	})
	if err != nil || w != 3 {
		t.Fatalf("re-wrapped %d (err %v), want 3", w, err)
	}
	if len(calls) != 2 || calls[1] != 3 {
		t.Fatalf("progress calls %v", calls)
	}
	if left, err := postgres.CountPlatformSealed(ctx, pool); err != nil || left != 0 {
		t.Fatalf("%d ciphertexts left under platform keys (err %v)", left, err)
	}
	if left, err := postgres.CountMemberKeysNotUnder(ctx, pool, "k2"); err != nil || left != 0 {
		t.Fatalf("%d member keys left under other keys (err %v)", left, err)
	}
	if again, err := both.Reencrypt(ctx, 2, nil); err != nil || again != 0 {
		t.Fatalf("second run re-encrypted %d (err %v), want 0", again, err)
	}
	if again, err := both.PII().Rewrap(ctx, 2, nil); err != nil || again != 0 {
		t.Fatalf("second run re-wrapped %d (err %v), want 0", again, err)
	}

	// k1 is gone: everything still reads.
	only := newSvc(identity.KeyConfig{HMACKey: hmacKey, EncKeys: "k2:" + key('2'), EncKeyID: "k2"})
	if got := display(only); !maps.Equal(got, want) {
		t.Fatalf("display values with k2 alone %v, want %v", got, want)
	}
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

// A ciphertext under a platform key of a member merged into another moves
// under the merged member's data key (its identifiers go back to it on
// unmerge), not the survivor's.
func TestReencryptSealsUnderTheIdentifiersOrigin(t *testing.T) {
	f, ctx := beginService(t)
	a := f.resolve(t, "a", phone("13922240001")).GetMemberId()
	b := f.resolve(t, "b", phone("13922240002")).GetMemberId()
	var id int64
	var hash []byte
	if err := f.pool.QueryRow(ctx, `SELECT identifier_id, value_hash FROM member_identifiers WHERE member_id = $1`, a).Scan(&id, &hash); err != nil {
		t.Fatal(err)
	}
	platformKey, err := identity.NewPII(identity.DevKeys)
	if err != nil {
		t.Fatal(err)
	}
	ct, kid, err := platformKey.Encrypt("+8613922240001", hash)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return postgres.UpdateIdentifierCipher(ctx, tx, id, ct, kid) }); err != nil {
		t.Fatal(err)
	}
	f.merge(t, a, b, "r", "m")
	if n, err := f.svc.Reencrypt(ctx, 10, nil); err != nil || n != 1 {
		t.Fatalf("re-encrypted %d (err %v), want 1", n, err)
	}
	if err := f.pool.QueryRow(ctx, `SELECT key_id FROM member_identifiers WHERE identifier_id = $1`, id).Scan(&kid); err != nil {
		t.Fatal(err)
	}
	if kid != identity.MemberKeyID(uuid.MustParse(a)) {
		t.Errorf("a's phone, held by b, re-sealed under %s; want a's key %s", kid, identity.MemberKeyID(uuid.MustParse(a)))
	}
}
