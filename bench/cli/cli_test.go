package cli

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/services/platform/platformtest"
)

// TestDemoRunsTheWorkloadAndShowsWhatHappened: `mc-bench demo` (what `make
// demo` runs) starts the platform, publishes its workload, and prints the
// change stream, the members, the dead letters and the analyst's queries.
func TestDemoRunsTheWorkloadAndShowsWhatHappened(t *testing.T) {
	platformtest.Setenv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, stderr bytes.Buffer
	if err := Execute(ctx, []string{"demo", "--shoppers", "4", "--seed", "7"}, &out, &stderr); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), stderr.String())
	}
	for _, want := range []string{
		"platform running: gRPC 127.0.0.1:", "== Change stream", "every purchase credited", "== Members and points",
		"== Dead letters", "reason: ", "-- Sales by channel", "-- Top members by spend, with points",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestLoadgenPublishesWhatItSays: `mc-bench loadgen` publishes the records
// it reports to the configured channel topic.
func TestLoadgenPublishesWhatItSays(t *testing.T) {
	platformtest.Setenv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, stderr bytes.Buffer
	if err := Execute(ctx, []string{"loadgen", "--events", "300", "--members", "50", "--seed", "3"}, &out, &stderr); err != nil {
		t.Fatalf("loadgen: %v\n%s", err, stderr.String())
	}
	topic := os.Getenv("MC_TOPIC_CHANNEL_EVENTS")
	if !strings.Contains(out.String(), "published 300 records to "+topic) {
		t.Errorf("loadgen said %q", out.String())
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(os.Getenv("MC_KAFKA_BROKERS"), ",")...),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := 0
	for got < 300 && ctx.Err() == nil {
		got += cl.PollFetches(ctx).NumRecords()
	}
	if got != 300 {
		t.Errorf("%d records on %s, want 300", got, topic)
	}
}
