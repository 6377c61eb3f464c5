// Package cdc is the stage of `membercenter import cdc`: it reads a legacy
// system's change-data-capture topics (Debezium JSON) with
// pipeline/consumer and hands each partition's records, in order, to the
// domain (contract.LegacyChanges), which applies each change once. A
// record the domain refuses is dead-lettered with its reason (dlq.v1, as
// every stage does) and the partition moves on; offsets are committed only
// after the effects are stored. With UntilCaughtUp the stage stops once
// its group has committed, on every partition, the end offsets the topics
// had when it started: a runbook's "catch up until the lag is zero".
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
		ends, err := endOffsets(ctx, c.Client().Client, cfg.Topics)
		if err != nil {
			return err
		}
		poll := cfg.Poll
		if poll <= 0 {
			poll = 200 * time.Millisecond
		}
		go func() {
			t := time.NewTicker(poll)
			defer t.Stop()
			for !caughtUp(c.Client().CommittedOffsets(), ends) {
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

// endOffsets are the offsets each partition of the topics has to be
// committed to for the stage to have caught up; an empty partition (its
// end at its start) needs nothing.
func endOffsets(ctx context.Context, cl *kgo.Client, topics []string) (map[string]map[int32]int64, error) {
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("cdc: start offsets of %v: %w", topics, err)
	}
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("cdc: end offsets of %v: %w", topics, err)
	}
	out := map[string]map[int32]int64{}
	ends.Each(func(end kadm.ListedOffset) {
		if start, ok := starts.Lookup(end.Topic, end.Partition); ok && start.Offset >= end.Offset {
			return
		}
		if out[end.Topic] == nil {
			out[end.Topic] = map[int32]int64{}
		}
		out[end.Topic][end.Partition] = end.Offset
	})
	return out, nil
}

// caughtUp reports whether every partition's committed offset reached its
// end.
func caughtUp(committed map[string]map[int32]kgo.EpochOffset, ends map[string]map[int32]int64) bool {
	for topic, parts := range ends {
		for p, end := range parts {
			if c, ok := committed[topic][p]; !ok || c.Offset < end {
				return false
			}
		}
	}
	return true
}
