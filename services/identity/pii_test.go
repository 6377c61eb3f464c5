package identity_test

import (
	"bytes"
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	"github.com/membercenter/membercenter/services/identity"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// Keys of exactly the right sizes, distinct from DevKeys.
var (
	hmacKey32 = b64("0123456789abcdef0123456789abcdef")
	aesKey1   = b64("k1-aes-key-k1-aes-key-k1-aes-key")
	aesKey2   = b64("k2-aes-key-k2-aes-key-k2-aes-key")
)

func newPII(t *testing.T, c identity.KeyConfig) *identity.PII {
	t.Helper()
	p, err := identity.NewPII(c)
	if err != nil {
		t.Fatalf("NewPII: %v", err)
	}
	return p
}

func TestNewPIIDevKeys(t *testing.T) {
	if err := identity.DevKeys.Validate(); err != nil {
		t.Fatalf("DevKeys.Validate: %v", err)
	}
	dev := newPII(t, identity.DevKeys)
	// An empty config means the development keys: same hashes, and each can
	// read the other's ciphertexts.
	empty := newPII(t, identity.KeyConfig{})
	if !(identity.KeyConfig{}).IsDev() || identity.DevKeys.IsDev() {
		t.Fatal("IsDev: want true for the empty config only")
	}
	if !bytes.Equal(dev.Hash(1, "", "+8613812345678"), empty.Hash(1, "", "+8613812345678")) {
		t.Fatal("empty config hashes differently from DevKeys")
	}
	h := dev.Hash(1, "", "+8613812345678")
	ct, keyID, err := empty.Encrypt("+8613812345678", h)
	if err != nil {
		t.Fatal(err)
	}
	if keyID != identity.DevKeys.EncKeyID {
		t.Fatalf("key id = %q, want %q", keyID, identity.DevKeys.EncKeyID)
	}
	if got, err := dev.Decrypt(ct, keyID, h); err != nil || got != "+8613812345678" {
		t.Fatalf("Decrypt = %q, %v", got, err)
	}
}

func TestHash(t *testing.T) {
	p := newPII(t, identity.DevKeys)
	base := p.Hash(1, "", "+8613812345678")
	if len(base) != 32 {
		t.Fatalf("hash has %d bytes, want 32 (HMAC-SHA256)", len(base))
	}
	if !bytes.Equal(base, p.Hash(1, "", "+8613812345678")) {
		t.Fatal("Hash is not deterministic")
	}
	other := newPII(t, identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k1:" + aesKey1, EncKeyID: "k1"})
	tests := []struct {
		name string
		hash []byte
	}{
		{"other type", p.Hash(2, "", "+8613812345678")},
		{"other scope", p.Hash(1, "wx1", "+8613812345678")},
		{"other value", p.Hash(1, "", "+8613812345679")},
		{"scope and value boundary moved", p.Hash(1, "+86", "13812345678")},
		{"other HMAC key", other.Hash(1, "", "+8613812345678")},
	}
	for _, tt := range tests {
		if bytes.Equal(tt.hash, base) {
			t.Errorf("%s: same hash as the base identifier", tt.name)
		}
	}
}

func TestEncryptDecrypt(t *testing.T) {
	p := newPII(t, identity.DevKeys)
	const value = "alice@example.com"
	h := p.Hash(2, "", value)
	ct, keyID, err := p.Encrypt(value, h)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, []byte(value)) || bytes.Contains(ct, []byte("alice")) {
		t.Fatal("ciphertext contains the plain value")
	}
	got, err := p.Decrypt(ct, keyID, h)
	if err != nil || got != value {
		t.Fatalf("Decrypt = %q, %v; want %q", got, err, value)
	}
	// A fresh nonce per encryption: equal values do not give equal ciphertexts.
	ct2, _, err := p.Encrypt(value, h)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ct, ct2) {
		t.Fatal("two encryptions of one value are identical")
	}

	tampered := bytes.Clone(ct)
	tampered[len(tampered)-1] ^= 1
	failures := []struct {
		name  string
		ct    []byte
		keyID string
		hash  []byte
	}{
		{"ciphertext moved to another identifier (AAD)", ct, keyID, p.Hash(2, "", "bob@example.com")},
		{"no AAD", ct, keyID, nil},
		{"tampered ciphertext", tampered, keyID, h},
		{"unknown key id", ct, "nope", h},
		{"truncated", ct[:5], keyID, h},
		{"empty", nil, keyID, h},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := p.Decrypt(tt.ct, tt.keyID, tt.hash); err == nil {
				t.Fatalf("Decrypt succeeded with %q", got)
			}
		})
	}
}

func TestKeyRotation(t *testing.T) {
	old := newPII(t, identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k1:" + aesKey1, EncKeyID: "k1"})
	rotated := newPII(t, identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k2:" + aesKey2 + ", k1:" + aesKey1, EncKeyID: "k2"})

	const value = "+8613812345678"
	h := old.Hash(1, "", value)
	if !bytes.Equal(h, rotated.Hash(1, "", value)) {
		t.Fatal("rotating the encryption key changed the lookup hash")
	}
	ctOld, idOld, err := old.Encrypt(value, h)
	if err != nil || idOld != "k1" {
		t.Fatalf("Encrypt under k1: key id %q, %v", idOld, err)
	}
	if got, err := rotated.Decrypt(ctOld, idOld, h); err != nil || got != value {
		t.Fatalf("rotated PII reading a k1 ciphertext = %q, %v", got, err)
	}
	ctNew, idNew, err := rotated.Encrypt(value, h)
	if err != nil {
		t.Fatal(err)
	}
	if idNew != "k2" {
		t.Fatalf("new ciphertext key id = %q, want k2", idNew)
	}
	if got, err := rotated.Decrypt(ctNew, idNew, h); err != nil || got != value {
		t.Fatalf("Decrypt k2 ciphertext = %q, %v", got, err)
	}
	// The new ciphertext really is under k2: k1 cannot open it even when told
	// it is a k1 ciphertext.
	if _, err := old.Decrypt(ctNew, "k2", h); err == nil {
		t.Fatal("a PII without k2 decrypted a k2 ciphertext")
	}
	if _, err := rotated.Decrypt(ctNew, "k1", h); err == nil {
		t.Fatal("a k2 ciphertext opened under k1")
	}
}

func TestKeyConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     identity.KeyConfig
		wantEnv []string // env vars the error must name; nil means valid
	}{
		{name: "empty config uses dev keys", cfg: identity.KeyConfig{}},
		{name: "valid", cfg: identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k1:" + aesKey1, EncKeyID: "k1"}},
		{name: "valid with two keys", cfg: identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k1:" + aesKey1 + ",k2:" + aesKey2, EncKeyID: "k2"}},
		{
			name:    "HMAC key too short",
			cfg:     identity.KeyConfig{HMACKey: b64("only-31-bytes-long-hmac-key-123"), EncKeys: "k1:" + aesKey1, EncKeyID: "k1"},
			wantEnv: []string{"MC_PII_HMAC_KEY"},
		},
		{
			name:    "HMAC key missing",
			cfg:     identity.KeyConfig{EncKeys: "k1:" + aesKey1, EncKeyID: "k1"},
			wantEnv: []string{"MC_PII_HMAC_KEY"},
		},
		{
			name:    "HMAC key not base64",
			cfg:     identity.KeyConfig{HMACKey: "not base64!!", EncKeys: "k1:" + aesKey1, EncKeyID: "k1"},
			wantEnv: []string{"MC_PII_HMAC_KEY"},
		},
		// A second, valid key is active in these, so the bad entry is the
		// only problem.
		{
			name:    "enc key not base64",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k2:" + aesKey2 + ",k1:%%%not-base64%%%", EncKeyID: "k2"},
			wantEnv: []string{"MC_PII_ENC_KEYS"},
		},
		{
			name:    "enc key 16 bytes",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k2:" + aesKey2 + ",k1:" + b64("sixteen-byte-key"), EncKeyID: "k2"},
			wantEnv: []string{"MC_PII_ENC_KEYS"},
		},
		{
			name:    "enc key 33 bytes",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k2:" + aesKey2 + ",k1:" + b64("k1-aes-key-k1-aes-key-k1-aes-key!"), EncKeyID: "k2"},
			wantEnv: []string{"MC_PII_ENC_KEYS"},
		},
		{
			name:    "enc key entry without id",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k2:" + aesKey2 + "," + aesKey1, EncKeyID: "k2"},
			wantEnv: []string{"MC_PII_ENC_KEYS"},
		},
		{
			name:    "enc key entry with empty id",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k2:" + aesKey2 + ",:" + aesKey1, EncKeyID: "k2"},
			wantEnv: []string{"MC_PII_ENC_KEYS"},
		},
		{
			name:    "enc keys missing",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeyID: "k1"},
			wantEnv: []string{"MC_PII_ENC_KEYS", "MC_PII_ENC_KEY_ID"},
		},
		{
			name:    "active id names no key",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k1:" + aesKey1, EncKeyID: "k2"},
			wantEnv: []string{"MC_PII_ENC_KEY_ID"},
		},
		{
			name:    "active id missing",
			cfg:     identity.KeyConfig{HMACKey: hmacKey32, EncKeys: "k1:" + aesKey1},
			wantEnv: []string{"MC_PII_ENC_KEY_ID"},
		},
		{
			name:    "every problem reported at once",
			cfg:     identity.KeyConfig{HMACKey: b64("short"), EncKeys: "k1:" + b64("short"), EncKeyID: "k9"},
			wantEnv: []string{"MC_PII_HMAC_KEY", "MC_PII_ENC_KEYS", "MC_PII_ENC_KEY_ID"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantEnv == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if _, err := identity.NewPII(tt.cfg); err != nil {
					t.Fatalf("NewPII: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			for _, env := range tt.wantEnv {
				if !strings.Contains(err.Error(), env) {
					t.Errorf("Validate error does not name %s: %v", env, err)
				}
			}
			if _, err := identity.NewPII(tt.cfg); err == nil {
				t.Error("NewPII accepted a config Validate rejects")
			}
			if !slices.Contains(tt.wantEnv, "MC_PII_ENC_KEY_ID") && strings.Contains(err.Error(), "MC_PII_ENC_KEY_ID") {
				t.Errorf("Validate blames MC_PII_ENC_KEY_ID, whose value is fine here: %v", err)
			}
			// Validate errors are printed at start: they must never carry
			// key material.
			for _, secret := range []string{hmacKey32, aesKey1, aesKey2} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("Validate error reveals a key (%s…): %v", secret[:8], err)
				}
			}
		})
	}
}
