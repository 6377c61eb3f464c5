package dlq_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

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
	letter := dlq.Record("dlq.v1", "ingest", src, errors.New("bad bytes"), at)
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
	again := dlq.Record("dlq.v1", "ingest", orig, errors.New("still bad"), at)
	if n := len(again.Headers); n != 7 {
		t.Fatalf("re-dead-lettered record has %d headers, want 7", n)
	}
}
