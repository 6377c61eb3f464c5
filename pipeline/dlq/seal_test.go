package dlq_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/dlq"
)

// gcm is an AES-256-GCM sealer like the platform's PII keys.
type gcm struct {
	id   string
	aead cipher.AEAD
}

func newGCM(t *testing.T, id string) gcm {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(key)
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return gcm{id: id, aead: aead}
}

func (g gcm) Encrypt(value string, ad []byte) ([]byte, string, error) {
	nonce := make([]byte, g.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, "", err
	}
	return g.aead.Seal(nonce, nonce, []byte(value), ad), g.id, nil
}

func (g gcm) Decrypt(ct []byte, keyID string, ad []byte) (string, error) {
	if keyID != g.id {
		return "", fmt.Errorf("unknown key %q", keyID)
	}
	n := g.aead.NonceSize()
	if len(ct) < n {
		return "", errors.New("short")
	}
	p, err := g.aead.Open(nil, ct[:n], ct[n:], ad)
	return string(p), err
}

// A sealed letter holds neither the original key nor its value; opened with
// the keys it is the original again, replayable as before.
func TestSealedLetters(t *testing.T) {
	keys := newGCM(t, "k1")
	phone := []byte("13712349876")
	src := &kgo.Record{Topic: "channel.events.v1", Partition: 3, Offset: 41, Key: phone,
		Value:   append([]byte(`{"identifiers":[{"value":"`), append(phone, `"}]}`...)...),
		Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte("00-abc-def-01")}}}
	letter := dlq.Record("dlq.v1", "ingest", src, errors.New("invalid value for string field value: 13712349876 (wei@example.com)"), clocktest.Start(), keys)
	if len(letter.Key) != 0 || bytes.Contains(letter.Value, phone) {
		t.Fatalf("sealed letter key %q, value holds the phone: %v", letter.Key, bytes.Contains(letter.Value, phone))
	}
	l := dlq.Parse(letter)
	if !l.Sealed || l.SealedKeyID != "k1" || l.Reason != "invalid value for string field value: …(11 digits) (…@…)" || l.Offset != 41 {
		t.Fatalf("parsed %+v", l)
	}
	for _, h := range letter.Headers {
		if bytes.Contains(h.Value, phone) || bytes.Contains(h.Value, []byte("wei@example.com")) {
			t.Errorf("header %s holds PII: %q", h.Key, h.Value)
		}
	}
	if err := l.Open(nil); !errors.Is(err, dlq.ErrSealed) {
		t.Fatalf("Open without keys: %v", err)
	}
	if err := l.Open(newGCM(t, "k1")); err == nil {
		t.Fatal("opened with another key")
	}
	if err := l.Open(keys); err != nil {
		t.Fatal(err)
	}
	if l.Reason != "invalid value for string field value: 13712349876 (wei@example.com)" {
		t.Errorf("opened reason %q", l.Reason)
	}
	orig := l.Original()
	if orig.Topic != src.Topic || !bytes.Equal(orig.Key, src.Key) || !bytes.Equal(orig.Value, src.Value) ||
		len(orig.Headers) != 1 || orig.Headers[0].Key != "traceparent" {
		t.Fatalf("original after Open = %+v", orig)
	}
	if len(letter.Key) != 0 {
		t.Fatal("Open changed the record it read")
	}

	// The ciphertext is bound to the original's place: moved, it does not open.
	moved := dlq.Parse(letter)
	for i, h := range letter.Headers {
		if h.Key == dlq.HeaderOffset {
			hs := append([]kgo.RecordHeader(nil), letter.Headers...)
			hs[i].Value = []byte(strconv.Itoa(42))
			moved = dlq.Parse(&kgo.Record{Value: letter.Value, Headers: hs})
		}
	}
	if err := moved.Open(keys); err == nil {
		t.Fatal("a letter claiming another offset opened")
	}

	// A letter too large to send whole keeps a sealed prefix.
	huge := &kgo.Record{Topic: "channel.events.v1", Key: phone, Value: bytes.Repeat(phone, dlq.MaxOriginalBytes/len(phone)+1)}
	big := dlq.Parse(dlq.Record("dlq.v1", "ingest", huge, errors.New("too large"), clocktest.Start(), keys))
	if !big.Truncated || !big.Sealed || bytes.Contains(big.Record.Value, phone) {
		t.Fatalf("truncated letter: truncated %v sealed %v", big.Truncated, big.Sealed)
	}
	if err := big.Open(keys); err != nil || !bytes.Equal(big.Record.Value, huge.Value[:dlq.PrefixBytes]) || !bytes.Equal(big.Record.Key, phone) {
		t.Fatalf("truncated letter opens to %d bytes, key %q: %v", len(big.Record.Value), big.Record.Key, err)
	}
}

// A letter the broker refused whole goes out as a reference, marked so:
// never replayed as an empty record, never carrying a seal it lost.
func TestReferenceOnlyLetters(t *testing.T) {
	src := &kgo.Record{Topic: "channel.events.v1", Partition: 1, Offset: 7, Key: []byte("k"), Value: []byte("the original")}
	for _, keys := range []dlq.Sealer{nil, newGCM(t, "k1")} {
		letter := dlq.Record("dlq.v1", "ingest", src, errors.New("bad"), clocktest.Start(), keys)
		l := dlq.Parse(dlq.ReferenceOnly(letter, src))
		if !l.Truncated || l.Sealed || l.OriginalSize != len("k")+len("the original") || len(l.OriginalHash) != 64 ||
			len(l.Record.Key)+len(l.Record.Value) != 0 || l.Offset != 7 || l.Reason == "" {
			t.Errorf("reference of a letter (sealed %v): %+v", keys != nil, l)
		}
	}
}
