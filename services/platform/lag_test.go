package platform_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/fault/faulttest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	"github.com/membercenter/membercenter/services/telemetry"
)

// TestConsumerLagMetricRidesOutAKafkaOutage: /metrics answers at once, with
// the process's other metrics, while Kafka does not answer the lag query;
// once Kafka is back the gauge follows it again (a record produced during
// the outage shows in it).
func TestConsumerLagMetricRidesOutAKafkaOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := kafkatest.Config(t)
	var logs syncBuffer // what the lag poller says, shown if the test fails
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "lag-test", LogLevel: "info"}, &logs)
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	// A group with a committed offset, so that it has a lag.
	direct, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	group := cfg.Group("lag-test")
	offs := kadm.Offsets{}
	offs.Add(kadm.Offset{Topic: cfg.Topics.MemberEvents, Partition: 0, At: 0})
	// The commit is answered per partition: a topic just created may not
	// be known to the group coordinator yet (UNKNOWN_TOPIC_OR_PARTITION on
	// a busy broker), and then the group has no offsets and no lag.
	for {
		resp, err := kadm.NewClient(direct).CommitOffsets(ctx, group, offs)
		if err == nil {
			err = resp.Error()
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("commit the group's offset: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // a retry's pace, not a synchronisation
	}
	if err := direct.ProduceSync(ctx, &kgo.Record{Topic: cfg.Topics.MemberEvents, Partition: 0, Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	counter, err := tel.Meters.Meter("lag-test").Int64Counter("lag_test_other")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(ctx, 1)

	proxy := faulttest.NewProxy(t, cfg.Brokers[0])
	viaProxy := cfg
	viaProxy.Dial = proxy.Dial
	cl, err := kafka.NewClient(viaProxy, kafka.Telemetry{Tracers: tel.Tracers, Meters: tel.Meters, Propagator: tel.Propagator, Logger: tel.Logger}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	reg, err := kafka.RegisterLag(tel.Meters, tel.Logger, cl.Client, group)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()

	scrape := func() (string, time.Duration) {
		t.Helper()
		start := time.Now()
		rec := httptest.NewRecorder()
		tel.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 {
			t.Fatalf("/metrics answered %d", rec.Code)
		}
		return rec.Body.String(), time.Since(start)
	}
	const lag = "messaging_kafka_consumer_lag"
	// waitLag waits for the gauge of partition 0 to say want.
	waitLag := func(what string, want string) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			body, _ := scrape()
			for _, line := range strings.Split(body, "\n") {
				if strings.HasPrefix(line, lag+"{") && strings.Contains(line, `messaging_destination_partition_id="0"`) &&
					strings.HasSuffix(line, " "+want) {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no %s of %s within 90s:\n%s\nlogs:\n%s", what, lag, want, body, logs.String())
			}
			time.Sleep(50 * time.Millisecond) // a scrape's pace, not a synchronisation
		}
	}
	waitLag("before the outage", "1")

	proxy.Cut()
	body, took := scrape()
	if took > 4*time.Second {
		t.Errorf("/metrics took %v while Kafka was away", took.Round(time.Millisecond))
	}
	if !strings.Contains(body, "lag_test_other") {
		t.Errorf("/metrics lost the other metrics while Kafka was away:\n%s", body)
	}
	// A record the gauge can only learn of from Kafka once it answers.
	if err := direct.ProduceSync(ctx, &kgo.Record{Topic: cfg.Topics.MemberEvents, Partition: 0, Value: []byte("y")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	proxy.Restore()
	waitLag("after the outage", "2")
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
