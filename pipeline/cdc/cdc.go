// Package cdc is the stage of `membercenter import cdc`: it reads a legacy
// system's change-data-capture topics (Debezium JSON) with
// pipeline/consumer and hands each partition's records, in order, to the
// domain (contract.LegacyChanges), which applies each change once. A
// record the domain refuses is dead-lettered with its reason (dlq.v1, as
// every stage does) and the partition moves on; offsets are committed only
// after the effects are stored. With UntilCaughtUp the stage stops once
// its group has committed, on every partition, the end offsets the topics
// had when it started, or an offset followed by nothing but transaction
// markers up to them (a topic written in Kafka transactions ends in one):
// a runbook's "catch up until the lag is zero".
package cdc

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Stage names the stage in logs, metrics and dead letters.
const Stage = "import-cdc"

// Config is what the stage reads and how long it runs.
type Config struct {
	Topics []string
	// Group is the consumer group (its committed offsets are where a run
	// starts); a new group starts at the topics' beginning.
	Group    string
	DLQTopic string
	// UntilCaughtUp stops the stage once the end offsets the topics had at
	// its start are committed; otherwise it runs until ctx ends.
	UntilCaughtUp bool
	// Poll is how often being caught up is checked (0: 200ms).
	Poll time.Duration
}

// Run consumes the topics into apply until ctx ends or, with
// UntilCaughtUp, the topics are caught up.
func Run(ctx context.Context, kcfg kafka.Config, tel kafka.Telemetry, cfg Config, apply contract.LegacyChanges) error {
	c, err := consumer.New(kcfg, tel, consumer.Config{Stage: Stage, Group: cfg.Group, Topics: cfg.Topics, DLQTopic: cfg.DLQTopic})
	if err != nil {
		return err
	}
	defer c.Close()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	if cfg.UntilCaughtUp {
		starts, ends, err := offsetRange(ctx, c.Client().Client, cfg.Topics)
		if err != nil {
			return err
		}
		poll := cfg.Poll
		if poll <= 0 {
			poll = 200 * time.Millisecond
		}
		m := &markers{kcfg: kcfg, tel: tel, checked: map[string]map[int32]int64{}, prev: map[string]map[int32]int64{}}
		go func() {
			t := time.NewTicker(poll)
			defer t.Stop()
			for !m.caughtUp(runCtx, c.Client().CommittedOffsets(), starts, ends) {
				select {
				case <-runCtx.Done():
					return
				case <-t.C:
				}
			}
			stop()
		}()
	}
	err = c.RunPartitionBatches(runCtx, func(ctx context.Context, rs []*kgo.Record) (map[*kgo.Record]error, error) {
		recs := make([]contract.LegacyRecord, len(rs))
		for i, r := range rs {
			recs[i] = contract.LegacyRecord{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Key: r.Key, Value: r.Value}
		}
		rejected, err := apply.ApplyLegacyChanges(ctx, recs)
		if err != nil {
			return nil, err
		}
		out := make(map[*kgo.Record]error, len(rejected))
		for i, reason := range rejected {
			out[rs[i]] = reason
		}
		return out, nil
	})
	if err == nil {
		err = ctx.Err()
	}
	return err
}

// offsetRange is where each partition of the topics starts and the offset
// its group has to reach for the stage to have caught up (its end when the
// stage started); an empty partition (its end at its start) needs nothing.
func offsetRange(ctx context.Context, cl *kgo.Client, topics []string) (starts, ends map[string]map[int32]int64, err error) {
	adm := kadm.NewClient(cl)
	listedStarts, err := adm.ListStartOffsets(ctx, topics...)
	if err == nil {
		err = listedStarts.Error()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cdc: start offsets of %v: %w", topics, err)
	}
	listedEnds, err := adm.ListEndOffsets(ctx, topics...)
	if err == nil {
		err = listedEnds.Error()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cdc: end offsets of %v: %w", topics, err)
	}
	starts, ends = map[string]map[int32]int64{}, map[string]map[int32]int64{}
	listedEnds.Each(func(end kadm.ListedOffset) {
		start, _ := listedStarts.Lookup(end.Topic, end.Partition)
		if start.Offset >= end.Offset {
			return
		}
		if ends[end.Topic] == nil {
			starts[end.Topic], ends[end.Topic] = map[int32]int64{}, map[int32]int64{}
		}
		starts[end.Topic][end.Partition], ends[end.Topic][end.Partition] = start.Offset, end.Offset
	})
	return starts, ends, nil
}

// markers finds out whether what lies between a partition's committed
// offset and its end is only control records — a topic written in Kafka
// transactions (Debezium with exactly-once delivery) ends in a commit
// marker, which no record reaches, so its group's committed offset stops
// short of the end — or aborted records, which read-committed consumers
// never get.
type markers struct {
	kcfg    kafka.Config
	tel     kafka.Telemetry
	checked map[string]map[int32]int64 // committed offsets found followed by markers only
	prev    map[string]map[int32]int64 // the offsets of the last check: a partition is read only once its group stopped moving
}

// caughtUp reports whether every partition's committed offset reached its
// end, or is followed by nothing but control records up to it.
func (m *markers) caughtUp(ctx context.Context, committed map[string]map[int32]kgo.EpochOffset, starts, ends map[string]map[int32]int64) bool {
	for topic, parts := range ends {
		for part, end := range parts {
			from := starts[topic][part]
			if c, ok := committed[topic][part]; ok {
				from = c.Offset
			}
			if from >= end {
				continue
			}
			if done, ok := m.checked[topic][part]; ok && done == from {
				continue
			}
			prev, ok := m.prev[topic][part]
			if m.prev[topic] == nil {
				m.prev[topic] = map[int32]int64{}
			}
			m.prev[topic][part] = from
			if !ok || prev != from {
				return false // still moving: records are coming
			}
			only, err := m.onlyMarkers(ctx, topic, part, from, end)
			if err != nil || !only {
				return false
			}
			if m.checked[topic] == nil {
				m.checked[topic] = map[int32]int64{}
			}
			m.checked[topic][part] = from
		}
	}
	return true
}

// onlyMarkers reads the partition from from to end, read-committed with
// control records kept, and says whether every record there is a control
// record. It answers false when the broker does not answer in time.
func (m *markers) onlyMarkers(ctx context.Context, topic string, part int32, from, end int64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cl, err := kafka.NewClient(m.kcfg, m.tel, "",
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {part: kgo.NewOffset().At(from)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords(), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return false, err
	}
	defer cl.Close()
	for ctx.Err() == nil {
		fetches := cl.PollFetches(ctx)
		if err := fetches.Err0(); err != nil && ctx.Err() == nil {
			return false, err
		}
		only, seenEnd := true, false
		fetches.EachRecord(func(r *kgo.Record) {
			if r.Offset >= end {
				seenEnd = true
				return
			}
			if !r.Attrs.IsControl() {
				only = false
			}
			if r.Offset == end-1 {
				seenEnd = true
			}
		})
		if !only {
			return false, nil
		}
		if seenEnd {
			return true, nil
		}
	}
	return false, ctx.Err()
}
