package dlq_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/dlq"
)

func TestRejectedSurvivesWrapping(t *testing.T) {
	base := errors.New("no identifiers")
	err := fmt.Errorf("ingest: %w", dlq.Reject(base))
	if !dlq.Rejected(err) {
		t.Fatal("wrapped rejection not recognised")
	}
	if !errors.Is(err, base) {
		t.Fatal("rejection hides its cause")
	}
	if dlq.Rejected(base) {
		t.Fatal("plain error treated as rejection")
	}
	if dlq.Reject(nil) != nil {
		t.Fatal("Reject(nil) != nil")
	}
}

func TestRecordRoundTrip(t *testing.T) {
	src := &kgo.Record{
		Topic: "channel.events.v1", Partition: 4, Offset: 99,
		Key: []byte("k"), Value: []byte{0xff, 0x00},
		Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte("00-abc-def-01")}},
	}
	at := time.Date(2026, 11, 23, 1, 2, 3, 0, time.UTC)
	letter := dlq.Record("dlq.v1", "ingest", src, errors.New("bad bytes"), at, nil)
	if letter.Topic != "dlq.v1" || string(letter.Key) != "k" || string(letter.Value) != string(src.Value) {
		t.Fatalf("letter = %+v", letter)
	}
	got := dlq.Parse(letter)
	if got.Reason != "bad bytes" || got.Stage != "ingest" || got.Topic != src.Topic || got.Partition != 4 || got.Offset != 99 || !got.At.Equal(at) {
		t.Fatalf("parsed = %+v", got)
	}
	orig := got.Original()
	if orig.Topic != src.Topic || len(orig.Headers) != 1 || orig.Headers[0].Key != "traceparent" {
		t.Fatalf("original = %+v", orig)
	}
	// A letter that fails again is not wrapped twice.
	again := dlq.Record("dlq.v1", "ingest", orig, errors.New("still bad"), at, nil)
	if n := len(again.Headers); n != 7 {
		t.Fatalf("re-dead-lettered record has %d headers, want 7", n)
	}
}

// A record too large to dead-letter whole (a compressible 10 MB value) is
// kept by reference: where it is, its size and hash, and a prefix.
func TestRecordKeepsTooLargeOriginalByReference(t *testing.T) {
	value := bytes.Repeat([]byte("a"), 10<<20)
	src := &kgo.Record{Topic: "channel.events.v1", Partition: 2, Offset: 7, Key: []byte("k"), Value: value,
		Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte("00-abc-def-01")}}}
	reason := errors.New(strings.Repeat("too big; ", 2000))
	letter := dlq.Record("dlq.v1", "ingest", src, reason, clocktest.Start(), nil)
	size := len(letter.Key) + len(letter.Value)
	for _, h := range letter.Headers {
		size += len(h.Key) + len(h.Value)
	}
	if size > 64<<10 {
		t.Fatalf("letter of a 10 MB original is %d bytes", size)
	}
	l := dlq.Parse(letter)
	sum := sha256.Sum256(append([]byte("k"), value...))
	if !l.Truncated || l.OriginalSize != len(value)+1+len("traceparent")+len("00-abc-def-01") || l.OriginalHash != hex.EncodeToString(sum[:]) {
		t.Fatalf("letter = truncated %v, size %d, hash %s", l.Truncated, l.OriginalSize, l.OriginalHash)
	}
	if l.Topic != src.Topic || l.Partition != 2 || l.Offset != 7 {
		t.Fatalf("letter origin = %s/%d@%d", l.Topic, l.Partition, l.Offset)
	}
	if !bytes.Equal(l.Record.Value, value[:dlq.PrefixBytes]) {
		t.Fatalf("letter value is %d bytes, want the %d-byte prefix", len(l.Record.Value), dlq.PrefixBytes)
	}
	if len(l.Reason) > dlq.MaxReasonBytes || !strings.HasPrefix(l.Reason, "too big; ") {
		t.Fatalf("reason of %d bytes: %.40q", len(l.Reason), l.Reason)
	}
	// A small original is carried whole, unmarked.
	small := dlq.Parse(dlq.Record("dlq.v1", "ingest", &kgo.Record{Value: []byte("x")}, errors.New("bad"), clocktest.Start(), nil))
	if small.Truncated || string(small.Record.Value) != "x" {
		t.Fatalf("small letter = %+v", small)
	}
}
