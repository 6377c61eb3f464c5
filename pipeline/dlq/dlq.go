// Package dlq routes records a stage cannot process to the dead-letter topic,
// with the reason and the original bytes, so they never block a partition and
// are never silently dropped; and replays them once fixed.
package dlq

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
)

// Header keys of a dead letter. The original record's headers (trace context
// included) are kept after these.
const (
	HeaderReason    = "mc-dlq-reason"
	HeaderStage     = "mc-dlq-stage"
	HeaderTopic     = "mc-dlq-topic"
	HeaderPartition = "mc-dlq-partition"
	HeaderOffset    = "mc-dlq-offset"
	HeaderAt        = "mc-dlq-at"
	// A letter whose original was too large to send whole keeps a
	// reference to it instead: the original's place (the headers above),
	// its size and SHA-256, and a prefix of its key and value.
	HeaderTruncated    = "mc-dlq-truncated"
	HeaderOriginalSize = "mc-dlq-original-size"
	HeaderOriginalHash = "mc-dlq-original-sha256"
	// A sealed letter's key and value are one AES-GCM ciphertext (the
	// value; the key is empty) under the PII key this header names: a
	// refused channel event holds raw identifiers, which the dead-letter
	// topic then never does. Letter.Open reads it back.
	HeaderSealed = "mc-dlq-sealed"
	// A sealed letter's full reason is sealed too (a refusal can quote
	// what it refused: a phone number in a field of the wrong type);
	// HeaderReason then holds it with digit runs and e-mail addresses
	// hidden (Redact), and this header says the envelope holds the reason.
	HeaderSealedReason = "mc-dlq-sealed-reason"
)

var (
	longDigits = regexp.MustCompile(`\d{5,}`)
	emailLike  = regexp.MustCompile(`[^\s"'<>(),;:]+@[^\s"'<>(),;:]+`)
)

// LoggedReason is a refusal's reason as a stage logs it beside the letter
// it writes with seal: redacted when the letter is sealed (the full reason
// is sealed in it), whole otherwise.
func LoggedReason(reason error, seal Sealer) string {
	if seal != nil {
		return Redact(reason.Error())
	}
	return reason.Error()
}

// Redact hides in a refusal's reason what could be personal data: runs of
// five or more digits and e-mail addresses.
func Redact(reason string) string {
	reason = emailLike.ReplaceAllString(reason, "…@…")
	return longDigits.ReplaceAllStringFunc(reason, func(d string) string { return fmt.Sprintf("…(%d digits)", len(d)) })
}

// Sealer encrypts and decrypts with the platform's PII keys
// (contract.Sealer).
type Sealer = contract.Sealer

// SealerFor is the sealer of a letter of src: its member's when seal is a
// contract.MemberSealer and src is keyed by a member, seal otherwise.
func SealerFor(ctx context.Context, seal Sealer, src *kgo.Record) Sealer {
	if ms, ok := seal.(contract.MemberSealer); ok {
		if s := ms.ForRecordKey(ctx, src.Key); s != nil {
			return s
		}
	}
	return seal
}

// ErrSealed is returned for a sealed letter read without the keys.
var ErrSealed = errors.New("the dead letter is sealed: reading it needs the PII keys (MC_PII_*)")

// Size limits of a letter. Kafka refuses records over ~1 MiB by default
// (message.max.bytes, and franz-go's ProducerBatchMaxBytes); a letter stays
// well under that.
const (
	// MaxOriginalBytes is the largest original (key, value and headers)
	// a letter carries whole.
	MaxOriginalBytes = 512 << 10
	// PrefixBytes of a too-large original's value (and at most a quarter
	// of that of its key) are kept.
	PrefixBytes = 4 << 10
	// MaxReasonBytes bounds the reason header (a validation error can
	// quote what it refused).
	MaxReasonBytes = 4 << 10
)

// Reject marks err as a data error of the record being processed (see
// fault.Permanent): the stage sends the record to the dead-letter topic with
// err as the reason and moves on.
func Reject(err error) error { return fault.Permanent(err) }

// Rejected reports whether err is a data error: marked by Reject, or one
// fault.Classify recognises (PostgreSQL class 22, say).
func Rejected(err error) bool { return fault.IsData(err) }

// Record builds the dead letter of src for topic: same key and value, the
// reason and origin in headers. An original too large to send whole is kept
// by reference (see HeaderTruncated). With seal, the letter's key and value
// are sealed (see HeaderSealed); seal nil keeps them as they are.
func Record(topic, stage string, src *kgo.Record, reason error, at time.Time, seal Sealer) *kgo.Record {
	headers := []kgo.RecordHeader{
		{Key: HeaderReason, Value: []byte(truncate(reason.Error(), MaxReasonBytes))},
		{Key: HeaderStage, Value: []byte(stage)},
		{Key: HeaderTopic, Value: []byte(src.Topic)},
		{Key: HeaderPartition, Value: []byte(strconv.FormatInt(int64(src.Partition), 10))},
		{Key: HeaderOffset, Value: []byte(strconv.FormatInt(src.Offset, 10))},
		{Key: HeaderAt, Value: []byte(at.UTC().Format(time.RFC3339Nano))},
	}
	size := len(src.Key) + len(src.Value)
	var kept []kgo.RecordHeader
	for _, h := range src.Headers {
		if !isDLQHeader(h.Key) {
			kept = append(kept, h)
			size += len(h.Key) + len(h.Value)
		}
	}
	key, value := src.Key, src.Value
	if size > MaxOriginalBytes {
		sum := sha256.New()
		sum.Write(src.Key)
		sum.Write(src.Value)
		headers = append(headers,
			kgo.RecordHeader{Key: HeaderTruncated, Value: []byte("true")},
			kgo.RecordHeader{Key: HeaderOriginalSize, Value: []byte(strconv.Itoa(size))},
			kgo.RecordHeader{Key: HeaderOriginalHash, Value: []byte(hex.EncodeToString(sum.Sum(nil)))},
		)
		key, value = prefix(src.Key, PrefixBytes/4), prefix(src.Value, PrefixBytes)
		// The original's headers stay only if they are small themselves.
		small := kept[:0:0]
		budget := PrefixBytes
		for _, h := range kept {
			if n := len(h.Key) + len(h.Value); n <= budget {
				small = append(small, h)
				budget -= n
			}
		}
		kept = small
	}
	if seal != nil {
		full := headers[0].Value
		ct, kid, err := seal.Encrypt(string(envelope(key, full, value)), sealAD(src.Topic, src.Partition, src.Offset))
		if err != nil {
			// The keys are loaded at start and encryption only fails
			// without randomness: keep the letter rather than lose it.
			headers = append(headers, kgo.RecordHeader{Key: HeaderSealError, Value: []byte(err.Error())})
		} else {
			key, value = nil, ct
			headers[0].Value = []byte(Redact(string(full)))
			headers = append(headers, kgo.RecordHeader{Key: HeaderSealed, Value: []byte(kid)},
				kgo.RecordHeader{Key: HeaderSealedReason, Value: []byte("1")})
		}
	}
	return &kgo.Record{
		Topic:   topic,
		Key:     key,
		Value:   value,
		Headers: append(headers, kept...),
		Context: src.Context,
	}
}

// ReferenceOnly is letter without the original's key and value (a broker
// refused it whole): the original is kept by reference (HeaderTruncated,
// its size and SHA-256), as for an original too large to send.
func ReferenceOnly(letter, src *kgo.Record) *kgo.Record {
	sum := sha256.New()
	sum.Write(src.Key)
	sum.Write(src.Value)
	var hs []kgo.RecordHeader
	for _, h := range letter.Headers {
		switch h.Key {
		case HeaderTruncated, HeaderOriginalSize, HeaderOriginalHash, HeaderSealed, HeaderSealedReason:
		default:
			hs = append(hs, h)
		}
	}
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderTruncated, Value: []byte("true")},
		kgo.RecordHeader{Key: HeaderOriginalSize, Value: []byte(strconv.Itoa(len(src.Key) + len(src.Value)))},
		kgo.RecordHeader{Key: HeaderOriginalHash, Value: []byte(hex.EncodeToString(sum.Sum(nil)))})
	out := *letter
	out.Key, out.Value, out.Headers = nil, nil, hs
	return &out
}

// HeaderSealError says why a letter that should be sealed is not.
const HeaderSealError = HeaderSealed + "-error"

// envelope packs a key, a reason and a value into one byte string: the
// key's length (uvarint), the key, the reason's length, the reason, the
// value.
func envelope(key, reason, value []byte) []byte {
	b := binary.AppendUvarint(make([]byte, 0, len(key)+len(reason)+len(value)+2*binary.MaxVarintLen64), uint64(len(key)))
	b = binary.AppendUvarint(append(b, key...), uint64(len(reason)))
	return append(append(b, reason...), value...)
}

// unpack reads an envelope (withReason: a reason between key and value).
func unpack(b []byte, withReason bool) (key, reason, value []byte, ok bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return nil, nil, nil, false
	}
	key, b = b[w:w+int(n)], b[w+int(n):]
	if withReason {
		n, w = binary.Uvarint(b)
		if w <= 0 || uint64(len(b)-w) < n {
			return nil, nil, nil, false
		}
		reason, b = b[w:w+int(n)], b[w+int(n):]
	}
	return key, reason, b, true
}

// sealAD binds a sealed letter to the place of its original.
func sealAD(topic string, partition int32, offset int64) []byte {
	return []byte("mc-dlq\x00" + topic + "\x00" + strconv.FormatInt(int64(partition), 10) + "\x00" + strconv.FormatInt(offset, 10))
}

func prefix(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return b[:n]
}

// truncate cuts s to at most n bytes on a rune boundary, saying so.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const more = "… (truncated)"
	cut := n - len(more)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + more
}

func isDLQHeader(k string) bool {
	switch k {
	case HeaderReason, HeaderStage, HeaderTopic, HeaderPartition, HeaderOffset, HeaderAt,
		HeaderTruncated, HeaderOriginalSize, HeaderOriginalHash, HeaderSealed, HeaderSealedReason, HeaderSealError:
		return true
	}
	return false
}

// Letter is a dead letter as read back from the topic.
type Letter struct {
	Reason    string
	Stage     string
	Topic     string
	Partition int32
	Offset    int64
	At        time.Time
	Record    *kgo.Record
	// Truncated letters keep a reference to an original too large to
	// send whole: its size, SHA-256 and a prefix. They cannot be replayed
	// from the letter; the original is at Topic/Partition/Offset while
	// the topic's retention keeps it.
	Truncated    bool
	OriginalSize int
	OriginalHash string
	// Sealed letters hold their key and value encrypted under the PII key
	// SealedKeyID names until Open.
	Sealed       bool
	SealedKeyID  string
	sealedReason bool
}

// Parse reads the dead-letter headers of r.
func Parse(r *kgo.Record) Letter {
	l := Letter{Record: r}
	for _, h := range r.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderReason:
			l.Reason = v
		case HeaderStage:
			l.Stage = v
		case HeaderTopic:
			l.Topic = v
		case HeaderPartition:
			p, _ := strconv.ParseInt(v, 10, 32)
			l.Partition = int32(p)
		case HeaderOffset:
			l.Offset, _ = strconv.ParseInt(v, 10, 64)
		case HeaderAt:
			l.At, _ = time.Parse(time.RFC3339Nano, v)
		case HeaderTruncated:
			l.Truncated = v == "true"
		case HeaderOriginalSize:
			l.OriginalSize, _ = strconv.Atoi(v)
		case HeaderOriginalHash:
			l.OriginalHash = v
		case HeaderSealed:
			l.Sealed, l.SealedKeyID = true, v
		case HeaderSealedReason:
			l.sealedReason = v == "1"
		}
	}
	return l
}

// Open reads a sealed letter's key and value back into l.Record (a copy:
// the record read is left alone); a letter that is not sealed is left as
// it is. Without s, a sealed letter is ErrSealed.
func (l *Letter) Open(s Sealer) error {
	if !l.Sealed {
		return nil
	}
	if s == nil {
		return ErrSealed
	}
	plain, err := s.Decrypt(l.Record.Value, l.SealedKeyID, sealAD(l.Topic, l.Partition, l.Offset))
	if err != nil {
		return fmt.Errorf("open dead letter %s/%d@%d: %w", l.Topic, l.Partition, l.Offset, err)
	}
	key, reason, value, ok := unpack([]byte(plain), l.sealedReason)
	if !ok {
		return fmt.Errorf("open dead letter %s/%d@%d: malformed envelope", l.Topic, l.Partition, l.Offset)
	}
	r := *l.Record
	r.Key, r.Value = key, value
	l.Record, l.Sealed = &r, false
	if l.sealedReason {
		l.Reason = string(reason)
	}
	return nil
}

// Original returns the record to re-publish for a replay: the original topic,
// key, value and headers, without the dead-letter headers.
func (l Letter) Original() *kgo.Record {
	var headers []kgo.RecordHeader
	for _, h := range l.Record.Headers {
		if !isDLQHeader(h.Key) {
			headers = append(headers, h)
		}
	}
	return &kgo.Record{Topic: l.Topic, Key: l.Record.Key, Value: l.Record.Value, Headers: headers}
}
