package kafka_test

import (
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

// The member-keyed topics are created with the configured partition count
// (the most instances of a stage that can share its work); the dead-letter
// topic keeps its own.
func TestTopicsPartitions(t *testing.T) {
	topics := kafka.DefaultTopics()
	for name, n := range topics.All() {
		want := int32(kafka.DefaultPartitions)
		if name == topics.DLQ {
			want = 3
		}
		if n != want {
			t.Errorf("default: %s has %d partitions, want %d", name, n, want)
		}
	}
	topics.Partitions = 24
	for _, name := range []string{topics.ChannelEvents, topics.MemberEvents, topics.MemberChanges} {
		if n := topics.All()[name]; n != 24 {
			t.Errorf("MC_TOPIC_PARTITIONS=24: %s has %d partitions", name, n)
		}
	}
	for _, bad := range []int32{-1, 10001} {
		cfg := kafka.Config{Brokers: []string{"127.0.0.1:9092"}, Topics: kafka.DefaultTopics()}
		cfg.Topics.Partitions = bad
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "MC_TOPIC_PARTITIONS") {
			t.Errorf("MC_TOPIC_PARTITIONS=%d: Validate() = %v, want an error naming it", bad, err)
		}
	}
}

// TestIsJSON reads the content-type header as HTTP does: the key and the
// type in any case, parameters (even a malformed one) aside.
func TestIsJSON(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       bool
	}{
		{"content-type", "application/json", true},
		{"Content-Type", "Application/JSON; charset=utf-8", true},
		{"content-type", "application/json; charset", true},
		{"content-type", "application/x-protobuf", false},
		{"content-type", "application/jsonx", false},
		{"x-content-type", "application/json", false},
	} {
		r := &kgo.Record{Headers: []kgo.RecordHeader{{Key: tc.key, Value: []byte(tc.value)}}}
		if got := kafka.IsJSON(r); got != tc.want {
			t.Errorf("%s: %s → %v, want %v", tc.key, tc.value, got, tc.want)
		}
	}
	if kafka.IsJSON(&kgo.Record{}) {
		t.Error("a record without the header is JSON")
	}
}
