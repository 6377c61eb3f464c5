package attributes

import (
	"context"
	"time"

	"bytes"
	"encoding/base64"
	"fmt"
	"maps"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Hasher is the platform's keyed hash (identity.PII).
type Hasher interface {
	Hash(typ int16, scope, value string) []byte
}

// Sealer is what sealing needs: the platform's keyed hash and an AES-GCM
// encryption bound to it, under one member's data key
// (identity.PII.SealerFor).
type Sealer interface {
	Hasher
	Encrypt(value string, hash []byte) (ciphertext []byte, keyID string, err error)
}

// Opener reads a sealed value back (identity.PII): for a data-subject
// export and for key rotation, never for display.
type Opener interface {
	Reveal(ctx context.Context, ciphertext []byte, keyID string, hash []byte) (string, error)
}

// Keyring is the platform's PII keys as the profile uses them
// (identity.PII): the keyed hash, a sealer under each member's data key,
// reading back, and shredding an erased member's keys (crypto-shredding).
type Keyring interface {
	Hasher
	Opener
	SealerFor(ctx context.Context, member uuid.UUID) (Sealer, error)
	IsMemberKey(keyID string) bool
	Shred(ctx context.Context, members []uuid.UUID, at time.Time) (int64, error)
	LiveKeys(ctx context.Context, members []uuid.UUID) (int64, error)
}

// A sealed value as it is stored in the members row's attributes:
//
//	pii:v1:<key id>:<base64url hash>:<base64url nonce‖ciphertext>:<masked>
//
// The hash is HMAC-SHA256 over the attribute's name and normalised value
// (scope "attr:<name>", so it never equals an identifier's hash); the
// ciphertext is bound to it as additional data, so it cannot be moved to
// another attribute. The masked form is what the API and the change stream
// show. A merge moves sealed values between members as they are.
const sealedPrefix = "pii:v1:"

var b64 = base64.RawURLEncoding

// hashType is the type number the keyed hash of an attribute uses
// (identifiers use their IdentifierType, which is never 0 once stored).
const hashType = 0

// Sealed reports whether a stored value is sealed.
func Sealed(stored string) bool { return strings.HasPrefix(stored, sealedPrefix) }

// Seal turns a normalised value of a PII attribute into its stored form.
func Seal(s Sealer, a Attr, value string) (string, error) {
	h := s.Hash(hashType, "attr:"+a.Name, value)
	ct, kid, err := s.Encrypt(value, h)
	if err != nil {
		return "", fmt.Errorf("seal attributes[%s]: %w", a.Name, err)
	}
	return sealedPrefix + kid + ":" + b64.EncodeToString(h) + ":" + b64.EncodeToString(ct) + ":" + Mask(a.Type, value), nil
}

// parts splits a sealed value.
func parts(stored string) (kid string, hash, ct []byte, masked string, ok bool) {
	f := strings.SplitN(strings.TrimPrefix(stored, sealedPrefix), ":", 4)
	if len(f) != 4 {
		return "", nil, nil, "", false
	}
	var err1, err2 error
	hash, err1 = b64.DecodeString(f[1])
	ct, err2 = b64.DecodeString(f[2])
	return f[0], hash, ct, f[3], err1 == nil && err2 == nil
}

// Same reports whether stored (sealed or not) holds the normalised value v
// of a, without decrypting: a sealed value is compared by its keyed hash.
func Same(s Hasher, a Attr, stored, v string) bool {
	if !Sealed(stored) {
		return stored == v
	}
	if s == nil {
		return false
	}
	_, h, _, _, ok := parts(stored)
	return ok && bytes.Equal(h, s.Hash(hashType, "attr:"+a.Name, v))
}

// Open returns the raw value of a stored attribute value.
func Open(ctx context.Context, o Opener, stored string) (string, error) {
	if !Sealed(stored) {
		return stored, nil
	}
	kid, h, ct, _, ok := parts(stored)
	if !ok {
		return "", fmt.Errorf("open attribute: malformed sealed value")
	}
	return o.Reveal(ctx, ct, kid, h)
}

// KeyID is the id of the key a sealed value is under ("" for another value).
func KeyID(stored string) string {
	if kid, _, _, _, ok := parts(stored); ok && Sealed(stored) {
		return kid
	}
	return ""
}

// Reseal re-encrypts a sealed value with to, keeping its hash and masked
// form.
func Reseal(ctx context.Context, o Opener, to Sealer, stored string) (string, error) {
	kid, h, ct, masked, ok := parts(stored)
	if !ok {
		return "", fmt.Errorf("re-seal attribute: malformed sealed value")
	}
	plain, err := o.Reveal(ctx, ct, kid, h)
	if err != nil {
		return "", fmt.Errorf("re-seal attribute: %w (is key %q still listed in MC_PII_ENC_KEYS?)", err, kid)
	}
	nct, nkid, err := to.Encrypt(plain, h)
	if err != nil {
		return "", err
	}
	return sealedPrefix + nkid + ":" + b64.EncodeToString(h) + ":" + b64.EncodeToString(nct) + ":" + masked, nil
}

// Display is what a member's stored attributes show through the API and
// the change stream: sealed values masked, the others as stored.
func Display(stored map[string]string) map[string]string {
	if stored == nil {
		return nil
	}
	out := maps.Clone(stored)
	for k, v := range out {
		out[k] = Shown(v)
	}
	return out
}

// Shown is what one stored attribute value shows: a sealed value masked,
// another as stored.
func Shown(stored string) string {
	if !Sealed(stored) {
		return stored
	}
	if _, _, _, masked, ok := parts(stored); ok {
		return masked
	}
	return "***"
}

// Mask shows a value of type t without revealing it: a phone's first five
// characters and last two ("+8613*******78"), an e-mail's
// first character and domain ("w***@example.com"), text's first character.
func Mask(t Type, v string) string {
	switch t {
	case Phone:
		if len(v) > 7 {
			return v[:5] + strings.Repeat("*", len(v)-7) + v[len(v)-2:]
		}
		return strings.Repeat("*", len(v))
	case Email:
		local, domain, _ := strings.Cut(v, "@")
		r, _ := utf8.DecodeRuneInString(local)
		return string(r) + "***@" + domain
	}
	r, _ := utf8.DecodeRuneInString(v)
	return string(r) + "***"
}

// ErasedLegacyID is what a legacy system's id of an erased member is kept
// as (legacy_members, so that an import does not bring the person back): a
// keyed hash, which finds the record again from the legacy id but cannot be
// read back to it.
func ErasedLegacyID(s Hasher, source, legacyID string) string {
	return "erased:" + b64.EncodeToString(s.Hash(hashType, "legacy:"+source, legacyID))
}

// LegacyRowKey is what a catch-up keeps a legacy row's key as (the last
// change applied to it, legacy_changes): a keyed hash of the source, the
// table and the key (a legacy id, an identifier's value), which finds the
// row again but cannot be read back to a person.
func LegacyRowKey(s Sealer, source, table, key string) []byte {
	return s.Hash(hashType, "legacy-row:"+source, table+"\x00"+key)
}
