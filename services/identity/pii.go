package identity

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// KeyConfig holds the PII keys. Values are base64; the encryption keys are
// listed as id:key pairs so old ciphertexts stay readable after rotation.
type KeyConfig struct {
	// A YAML file holding the keys instead of the variables below:
	//   hmac_key: BASE64
	//   active_key_id: k2
	//   encryption_keys: {k1: BASE64, k2: BASE64}
	File string `env:"MC_PII_KEYS_FILE"`
	// HMAC key for lookups (at least 32 bytes).
	HMACKey string `env:"MC_PII_HMAC_KEY"`
	// AES-256 keys for display ciphertexts: "k1:BASE64,k2:BASE64".
	EncKeys string `env:"MC_PII_ENC_KEYS"`
	// Id of the key new ciphertexts are written with.
	EncKeyID string `env:"MC_PII_ENC_KEY_ID"`
}

// DevKeys is a fixed, public key set for development and tests only. Setup
// logs a warning whenever it is in use.
var DevKeys = KeyConfig{
	HMACKey:  base64.StdEncoding.EncodeToString([]byte("membercenter-dev-hmac-key-not-secret!")),
	EncKeys:  "dev1:" + base64.StdEncoding.EncodeToString([]byte("membercenter-dev-aes-256-key-32b")),
	EncKeyID: "dev1",
}

// IsDev reports whether no keys were configured.
func (c KeyConfig) IsDev() bool { return c.File == "" && c.HMACKey == "" && c.EncKeys == "" }

// keyFile is the YAML shape of MC_PII_KEYS_FILE.
type keyFile struct {
	HMACKey        string            `yaml:"hmac_key"`
	ActiveKeyID    string            `yaml:"active_key_id"`
	EncryptionKeys map[string]string `yaml:"encryption_keys"`
}

// resolve returns the key values, read from the file when one is named.
func (c KeyConfig) resolve() (KeyConfig, error) {
	if c.File == "" {
		return c, nil
	}
	if c.HMACKey != "" || c.EncKeys != "" || c.EncKeyID != "" {
		return c, errors.New("MC_PII_KEYS_FILE: set either the file or MC_PII_HMAC_KEY/MC_PII_ENC_KEYS/MC_PII_ENC_KEY_ID, not both")
	}
	b, err := os.ReadFile(c.File)
	if err != nil {
		return c, fmt.Errorf("MC_PII_KEYS_FILE: %w", err)
	}
	var f keyFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return c, fmt.Errorf("MC_PII_KEYS_FILE %s: %w", c.File, err)
	}
	ids := make([]string, 0, len(f.EncryptionKeys))
	for id := range f.EncryptionKeys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var pairs []string
	for _, id := range ids {
		pairs = append(pairs, id+":"+f.EncryptionKeys[id])
	}
	return KeyConfig{HMACKey: f.HMACKey, EncKeys: strings.Join(pairs, ","), EncKeyID: f.ActiveKeyID}, nil
}

// Validate reports every problem with the keys at once.
func (c KeyConfig) Validate() error {
	if c.IsDev() {
		return nil
	}
	_, err := NewPII(c)
	return err
}

// PII turns raw identifier values into what may be stored: a keyed hash for
// lookup and, for phone and e-mail, an AES-GCM ciphertext for display.
type PII struct {
	hmacKey []byte
	aeads   map[string]cipher.AEAD
	active  string
	keys    *keyStore // members' data keys (memberkeys.go); nil: none
}

// NewPII loads keys; an empty config loads DevKeys.
func NewPII(c KeyConfig) (*PII, error) {
	if c.IsDev() {
		c = DevKeys
	}
	c, err := c.resolve()
	if err != nil {
		return nil, err
	}
	var errs []error
	p := &PII{aeads: map[string]cipher.AEAD{}, active: c.EncKeyID}
	if p.hmacKey, err = base64.StdEncoding.DecodeString(c.HMACKey); err != nil {
		errs = append(errs, fmt.Errorf("MC_PII_HMAC_KEY: not base64: %w", err))
	} else if len(p.hmacKey) < 32 {
		errs = append(errs, fmt.Errorf("MC_PII_HMAC_KEY: %d bytes, need at least 32", len(p.hmacKey)))
	}
	for i, pair := range strings.Split(c.EncKeys, ",") {
		id, b64, ok := strings.Cut(strings.TrimSpace(pair), ":")
		if !ok || id == "" {
			// Never echo the entry: it may be a key without its id.
			errs = append(errs, fmt.Errorf("MC_PII_ENC_KEYS: entry %d is not id:base64key", i+1))
			continue
		}
		key, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(key) != 32 {
			errs = append(errs, fmt.Errorf("MC_PII_ENC_KEYS: key %s must be 32 base64-encoded bytes", id))
			continue
		}
		block, _ := aes.NewCipher(key)
		aead, err := cipher.NewGCM(block)
		if err != nil {
			errs = append(errs, fmt.Errorf("MC_PII_ENC_KEYS: key %s: %w", id, err))
			continue
		}
		p.aeads[id] = aead
	}
	if _, ok := p.aeads[p.active]; !ok {
		errs = append(errs, fmt.Errorf("MC_PII_ENC_KEY_ID %q names no key in MC_PII_ENC_KEYS", p.active))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// Hash is the lookup key of a normalised value: HMAC-SHA256 over type, scope
// and value, so equal values of different types never collide.
func (p *PII) Hash(typ int16, scope, value string) []byte {
	m := hmac.New(sha256.New, p.hmacKey)
	fmt.Fprintf(m, "%d\x00%s\x00%s", typ, scope, value)
	return m.Sum(nil)
}

// Fingerprint is a keyed hash of an event's encoding, apart from the
// identifiers' lookup hashes (its own prefix): it tells a redelivered event
// from another event under the same id, and holds the identifiers the
// event names only as a keyed hash does.
func (p *PII) Fingerprint(encoded []byte) []byte {
	m := hmac.New(sha256.New, p.hmacKey)
	m.Write([]byte("event\x00"))
	m.Write(encoded)
	return m.Sum(nil)
}

// Encrypt seals value with the active key. The identifier's hash is bound as
// additional data, so a ciphertext cannot be moved to another row.
func (p *PII) Encrypt(value string, hash []byte) (ciphertext []byte, keyID string, err error) {
	ct, err := seal(p.aeads[p.active], []byte(value), hash)
	return ct, p.active, err
}

// Decrypt opens a ciphertext written by Encrypt under keyID, or under a
// member's data key (a dead letter of a member's record: see
// ForRecordKey), which it reads from the key store.
func (p *PII) Decrypt(ciphertext []byte, keyID string, hash []byte) (string, error) {
	if IsMemberKey(keyID) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return p.Reveal(ctx, ciphertext, keyID, hash)
	}
	aead, ok := p.aeads[keyID]
	if !ok {
		return "", fmt.Errorf("decrypt: unknown key id %q", keyID)
	}
	plain, err := open(aead, ciphertext, hash)
	return string(plain), err
}

// ActiveKeyID is the id of the key new ciphertexts are written with.
func (p *PII) ActiveKeyID() string { return p.active }
