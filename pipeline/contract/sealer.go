package contract

import "context"

// Sealer encrypts and decrypts with the platform's PII keys
// (identity.PII): ciphertexts are bound to ad and name their key. The
// dead-letter topic's letters are sealed with it (pipeline/dlq).
type Sealer interface {
	Encrypt(value string, ad []byte) (ciphertext []byte, keyID string, err error)
	Decrypt(ciphertext []byte, keyID string, ad []byte) (string, error)
}

// MemberSealer is a Sealer that can also seal under the data key of the
// member a record is keyed by (identity.PII): the letter of a member's
// record then becomes unreadable when the member is erased and the key
// shredded (crypto-shredding). ForRecordKey answers nil for a key that
// names no member (a channel event keyed by a phone, a legacy id).
type MemberSealer interface {
	Sealer
	ForRecordKey(ctx context.Context, key []byte) Sealer
}
