package identity_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/identity"
)

// Each member's PII is sealed under a data key of its own, kept wrapped in
// the key store; shredding it makes every copy of the member's ciphertexts
// unreadable, for good, while other members' stay readable.
func TestMemberKeysShred(t *testing.T) {
	ctx := ctxT(t)
	pool := pgtest.NewPool(t, nil)
	at := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	newPII := func(cfg identity.KeyConfig) *identity.PII {
		t.Helper()
		p, err := identity.NewPII(cfg)
		if err != nil {
			t.Fatal(err)
		}
		p.UseKeyStore(pool)
		return p
	}
	k1 := identity.KeyConfig{HMACKey: key('h'), EncKeys: "k1:" + key('1'), EncKeyID: "k1"}
	here, there := newPII(k1), newPII(k1) // two processes on one key store
	a, b := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	hash := here.Hash(1, "", "+8613700000001")
	seal := func(p *identity.PII, m uuid.UUID, v string) ([]byte, string) {
		t.Helper()
		s, err := p.SealerFor(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		ct, kid, err := s.Encrypt(v, hash)
		if err != nil {
			t.Fatal(err)
		}
		return ct, kid
	}
	ctA, kidA := seal(here, a, "+8613700000001")
	ctA2, _ := seal(there, a, "+8613700000001") // the same key, found in the store
	ctB, kidB := seal(here, b, "+8613700000001")
	if kidA != identity.MemberKeyID(a) || kidB != identity.MemberKeyID(b) {
		t.Fatalf("key ids %q, %q", kidA, kidB)
	}
	for _, c := range []struct {
		p   *identity.PII
		ct  []byte
		kid string
	}{{here, ctA, kidA}, {there, ctA, kidA}, {here, ctA2, kidA}, {there, ctB, kidB}} {
		if v, err := c.p.Reveal(ctx, c.ct, c.kid, hash); err != nil || v != "+8613700000001" {
			t.Fatalf("Reveal under %s = %q, %v", c.kid, v, err)
		}
	}
	if _, err := here.Reveal(ctx, ctA, kidB, hash); err == nil {
		t.Error("a ciphertext under one member's key opened under another's")
	}
	var stored int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM member_keys WHERE wrapped IS NOT NULL AND kek_id = 'k1'`).Scan(&stored); err != nil || stored != 2 {
		t.Fatalf("%d wrapped keys stored (err %v), want 2", stored, err)
	}
	// Without the key-encryption key the data keys do not open.
	if _, err := newPII(identity.KeyConfig{HMACKey: key('h'), EncKeys: "k2:" + key('2'), EncKeyID: "k2"}).Reveal(ctx, ctA, kidA, hash); err == nil ||
		!strings.Contains(err.Error(), "MC_PII_ENC_KEYS") {
		t.Errorf("Reveal without k1: %v, want an error naming MC_PII_ENC_KEYS", err)
	}

	never := uuid.Must(uuid.NewV7()) // erased before it had a key
	n, err := there.Shred(ctx, []uuid.UUID{a, never}, at)
	if err != nil || n != 1 {
		t.Fatalf("Shred = %d, %v; want 1 key destroyed", n, err)
	}
	if n, err := there.Shred(ctx, []uuid.UUID{a}, at.Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("Shred again = %d, %v; want 0", n, err)
	}
	if _, err := there.Reveal(ctx, ctA, kidA, hash); !errors.Is(err, postgres.ErrKeyShredded) {
		t.Errorf("Reveal after shredding in this process: %v, want ErrKeyShredded", err)
	}
	// Another process that never cached the key cannot open it either.
	if _, err := newPII(k1).Reveal(ctx, ctA2, kidA, hash); !errors.Is(err, postgres.ErrKeyShredded) {
		t.Errorf("Reveal in a fresh process: %v, want ErrKeyShredded", err)
	}
	for _, m := range []uuid.UUID{a, never} {
		if _, err := there.SealerFor(ctx, m); !errors.Is(err, postgres.ErrKeyShredded) {
			t.Errorf("SealerFor an erased member: %v, want ErrKeyShredded (no new key)", err)
		}
	}
	if v, err := there.Reveal(ctx, ctB, kidB, hash); err != nil || v != "+8613700000001" {
		t.Errorf("the other member's value after the shred: %q, %v", v, err)
	}
	var row struct {
		wrapped  []byte
		shredded *time.Time
	}
	if err := pool.QueryRow(ctx, `SELECT wrapped, shredded_at FROM member_keys WHERE member_id = $1`, a).Scan(&row.wrapped, &row.shredded); err != nil {
		t.Fatal(err)
	}
	if row.wrapped != nil || row.shredded == nil || !row.shredded.Equal(at) {
		t.Errorf("shredded key row: wrapped %d bytes, shredded_at %v; want none and %v", len(row.wrapped), row.shredded, at)
	}
}

// What a merged member's identifiers bring in while it is merged (an
// e-mail linked through its phone) goes back to it on unmerge, so it is
// sealed under its data key, not the survivor's: erasing the survivor
// afterwards leaves it readable, and erasing the member shreds it.
func TestIdentifierLinkedThroughAMergedMemberIsSealedUnderItsKey(t *testing.T) {
	f, ctx := beginService(t)
	a := f.resolve(t, "a", phone("13922230001")).GetMemberId()
	b := f.resolve(t, "b", phone("13922230002")).GetMemberId()
	merged := f.merge(t, a, b, "r", "m")
	if r := f.resolve(t, "a-email", phone("13922230001"), email("ann@example.cn")); r.GetMemberId() != b || len(r.GetLinked()) != 1 {
		t.Fatalf("resolve after merge = %v", r)
	}
	f.unmerge(t, merged.GetMergeId(), "r", "u")
	var h, c []byte
	var kid string
	if err := f.pool.QueryRow(ctx, `SELECT value_hash, value_cipher, key_id FROM member_identifiers
		WHERE member_id = $1 AND value_cipher IS NOT NULL AND masked LIKE 'a***%'`, a).Scan(&h, &c, &kid); err != nil {
		t.Fatal(err)
	}
	if kid != identity.MemberKeyID(uuid.MustParse(a)) {
		t.Errorf("a's e-mail is sealed under %s, want a's own key", kid)
	}
	// The survivor is erased: a's e-mail is a's, and still reads.
	if _, err := f.svc.PII().Shred(ctx, []uuid.UUID{uuid.MustParse(b)}, f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if v, err := f.svc.PII().Reveal(ctx, c, kid, h); err != nil || v != "ann@example.cn" {
		t.Fatalf("a's e-mail after b's erasure: %q, %v", v, err)
	}
}
