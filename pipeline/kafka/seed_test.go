package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// TestSeedGroupStartsWhereTheOldGroupsAgree: a new group starts, per
// partition, at the lowest offset the groups whose work it takes over
// committed; a partition one of them never committed is left to the reset
// offset; a group that has commits of its own, or members, is left alone.
func TestSeedGroupStartsWhereTheOldGroupsAgree(t *testing.T) {
	cfg := kafkatest.Config(t)
	topic := cfg.Topics.MemberEvents
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // generous: the machine may be busy
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for p := range int32(3) {
		for range 10 {
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: p, Value: []byte("x")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	adm := kadm.NewClient(cl)
	commit := func(group string, at map[int32]int64) {
		t.Helper()
		o := kadm.Offsets{}
		for p, off := range at {
			o.Add(kadm.Offset{Topic: topic, Partition: p, At: off, LeaderEpoch: -1})
		}
		resp, err := adm.CommitOffsets(ctx, group, o)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	offsets := func(group string) map[int32]int64 {
		t.Helper()
		resp, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			t.Fatal(err)
		}
		out := map[int32]int64{}
		for p, o := range resp.Offsets()[topic] {
			out[p] = o.At
		}
		return out
	}
	same := func(a, b map[int32]int64) bool {
		if len(a) != len(b) {
			return false
		}
		for p, v := range a {
			if w, ok := b[p]; !ok || w != v {
				return false
			}
		}
		return true
	}
	benefits, tags, members := cfg.Group("benefits"), cfg.Group("tags"), cfg.Group("members")
	commit(benefits, map[int32]int64{0: 7, 1: 3, 2: 5})
	commit(tags, map[int32]int64{0: 4, 1: 9})

	seeded, err := kafka.SeedGroup(ctx, cl, members, topic, benefits, tags)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int32]int64{0: 4, 1: 3}
	if got := offsets(members); !same(got, want) || len(seeded[topic]) != 2 {
		t.Fatalf("seeded %v, committed %v; want %v (partition 2: tags never committed it)", seeded, got, want)
	}

	// Seeded once: the group's own commits stand from then on.
	commit(tags, map[int32]int64{0: 9, 1: 9, 2: 9})
	if again, err := kafka.SeedGroup(ctx, cl, members, topic, benefits, tags); err != nil || again != nil {
		t.Fatalf("a group with commits seeded again: %v, %v", again, err)
	}
	if got := offsets(members); !same(got, want) {
		t.Fatalf("a group with commits changed: %v, want %v", got, want)
	}

	// A group with members and no commits yet is its members' to commit.
	busy := cfg.Group("busy")
	consumer, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.ConsumerGroup(busy), kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit())
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		consumer.PollFetches(ctx)
	}()
	for {
		described, err := adm.DescribeGroups(ctx, busy)
		if err != nil {
			t.Fatal(err)
		}
		if d := described[busy]; d.State == "Stable" && len(d.Members) == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %s never became stable: %v", busy, described[busy].State)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if got, err := kafka.SeedGroup(ctx, cl, busy, topic, benefits, tags); err != nil || got != nil {
		t.Fatalf("a group with members seeded: %v, %v", got, err)
	}
	<-polled
	if got := offsets(busy); len(got) != 0 {
		t.Fatalf("a group with members got commits %v", got)
	}
}
