package kafka_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// The topics that hold raw identifiers are kept to their retention limits:
// the channel topic (a week by default) and the dead letters (thirty days);
// a changed setting applies to topics created before; the member topics
// keep the broker's setting.
func TestRawTopicsKeepTheirRetention(t *testing.T) {
	cfg := kafkatest.Config(t) // creates the topics with the defaults
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	retention := func(topic string) (string, kmsg.ConfigSource) {
		t.Helper()
		// A topic just created may not be known to the broker asked yet:
		// ask until it is.
		var rc kadm.ResourceConfig
		for {
			rcs, err := adm.DescribeTopicConfigs(ctx, topic)
			if err == nil {
				rc, err = rcs.On(topic, nil)
			}
			if err == nil {
				err = rc.Err
			}
			if err == nil {
				break
			}
			if !errors.Is(err, kerr.UnknownTopicOrPartition) || ctx.Err() != nil {
				t.Fatalf("describe %s: %v", topic, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		for _, c := range rc.Configs {
			if c.Key == "retention.ms" {
				return c.MaybeValue(), c.Source
			}
		}
		t.Fatalf("%s has no retention.ms", topic)
		return "", kmsg.ConfigSourceUnknown
	}
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	// check waits until the topics show want (a config change reaches the
	// broker's answers a moment after it is accepted).
	check := func(what string, want map[string]string) {
		t.Helper()
		for topic, w := range want {
			got, _ := retention(topic)
			for got != w && ctx.Err() == nil {
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				got, _ = retention(topic)
			}
			if got != w {
				t.Errorf("%s: %s retention.ms = %s, want %s", what, topic, got, w)
			}
		}
		if _, src := retention(cfg.Topics.MemberChanges); src == kmsg.ConfigSourceDynamicTopicConfig {
			t.Errorf("%s: %s got a retention of its own; the member topics keep the broker's", what, cfg.Topics.MemberChanges)
		}
	}
	check("defaults", map[string]string{cfg.Topics.ChannelEvents: ms(kafka.DefaultRawRetention), cfg.Topics.DLQ: ms(kafka.DefaultDLQRetention)})

	// An operator shortens both: the existing topics follow.
	cfg.Topics.RawRetention, cfg.Topics.DLQRetention = 24*time.Hour, 72*time.Hour
	if err := kafka.EnsureTopics(ctx, cl, cfg.Topics); err != nil {
		t.Fatal(err)
	}
	check("after MC_TOPIC_RAW_RETENTION=24h MC_TOPIC_DLQ_RETENTION=72h", map[string]string{cfg.Topics.ChannelEvents: ms(24 * time.Hour), cfg.Topics.DLQ: ms(72 * time.Hour)})

	// Nonsense is refused before anything is created.
	for _, bad := range []time.Duration{-time.Hour, time.Minute} {
		c := kafka.Config{Brokers: cfg.Brokers, Topics: kafka.DefaultTopics()}
		c.Topics.DLQRetention = bad
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "MC_TOPIC_DLQ_RETENTION") {
			t.Errorf("MC_TOPIC_DLQ_RETENTION=%s: Validate() = %v, want an error naming it", bad, err)
		}
	}
}

// EnsureTopics returns once the broker knows every topic with a leader for
// each partition: a producer that will not wait for an unknown topic can
// write to every partition of every topic at once.
func TestEnsureTopicsReturnsOnceTheTopicsAreUsable(t *testing.T) {
	cfg := kafkatest.Config(t) // creates the topics with EnsureTopics
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.UnknownTopicRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for topic, parts := range cfg.Topics.All() {
		for p := range parts {
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: p, Value: []byte("x")}).FirstErr(); err != nil {
				t.Errorf("produce to %s[%d] right after EnsureTopics: %v", topic, p, err)
			}
		}
	}
}
