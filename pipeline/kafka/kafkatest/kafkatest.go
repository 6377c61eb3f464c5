// Package kafkatest gives each test its own topics and consumer groups on the
// real broker scripts/deps.sh starts (MC_KAFKA_BROKERS), deleted when the
// test ends, so tests run in parallel without seeing each other's records.
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Brokers returns the test broker addresses.
func Brokers() []string {
	if b := os.Getenv("MC_KAFKA_BROKERS"); b != "" {
		return strings.Split(b, ",")
	}
	return []string{"127.0.0.1:59092"}
}

// Config returns a config whose topics exist only for t.
func Config(t testing.TB) kafka.Config {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := "t" + hex.EncodeToString(b)
	cfg := kafka.Config{
		Brokers:     Brokers(),
		InstanceID:  id,
		GroupPrefix: id,
		Topics: kafka.Topics{
			ChannelEvents: id + ".channel.events.v1",
			MemberEvents:  id + ".member.events.v1",
			MemberChanges: id + ".member.changes.v1",
			DLQ:           id + ".dlq.v1",
		},
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		t.Fatalf("kafkatest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafka.EnsureTopics(ctx, cl, cfg.Topics); err != nil {
		cl.Close()
		t.Fatalf("kafkatest: create topics on %v (is scripts/deps.sh running?): %v", cfg.Brokers, err)
	}
	t.Cleanup(func() {
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var names []string
		for n := range cfg.Topics.All() {
			names = append(names, n)
		}
		if _, err := kadm.NewClient(cl).DeleteTopics(ctx, names...); err != nil {
			t.Logf("kafkatest: delete topics: %v", err)
		}
	})
	return cfg
}
