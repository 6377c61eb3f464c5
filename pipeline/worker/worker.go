// Package worker runs a member-event worker (benefits, tags): it consumes
// member.events.v1 in per-member order and hands each event to an Applier
// whose effects are exactly-once in PostgreSQL.
package worker

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Applier is the worker's contract with the domain (package contract).
type Applier = contract.Applier

// Worker runs one applier over member.events.v1.
type Worker struct {
	c *consumer.Consumer
	a Applier
}

// New joins the consumer group of stage.
func New(kcfg kafka.Config, tel kafka.Telemetry, stage string, a Applier) (*Worker, error) {
	c, err := consumer.New(kcfg, tel, consumer.Config{
		Stage:    stage,
		Group:    kcfg.Group(stage),
		Topics:   []string{kcfg.Topics.MemberEvents},
		DLQTopic: kcfg.Topics.DLQ,
		// A backlog's poll then holds records of many partitions, applied
		// in parallel (each partition in order).
		PartitionFetchBytes: 32 << 10,
	})
	if err != nil {
		return nil, err
	}
	return &Worker{c: c, a: a}, nil
}

// Close leaves the group.
func (w *Worker) Close() { w.c.Close() }

// Run applies events until ctx ends: in batches per partition when the
// applier can (contract.BatchApplier), one at a time otherwise.
func (w *Worker) Run(ctx context.Context) error {
	if b, ok := w.a.(contract.BatchApplier); ok {
		return w.c.RunPartitionBatches(ctx, func(ctx context.Context, rs []*kgo.Record) (map[*kgo.Record]error, error) {
			return w.handleBatch(ctx, b, rs)
		})
	}
	return w.c.RunRecords(ctx, w.handle)
}

func (w *Worker) handleBatch(ctx context.Context, b contract.BatchApplier, rs []*kgo.Record) (map[*kgo.Record]error, error) {
	rejected := map[*kgo.Record]error{}
	evs := make([]*mcv1.MemberEvent, 0, len(rs))
	of := make([]*kgo.Record, 0, len(rs))
	for _, r := range rs {
		ev, err := decode(r)
		if err != nil {
			rejected[r] = err
			continue
		}
		evs, of = append(evs, ev), append(of, r)
	}
	if len(evs) == 0 {
		return rejected, nil
	}
	rcs := make([]context.Context, len(of))
	for i, r := range of {
		rcs[i] = r.Context
	}
	refused, err := b.ApplyBatch(contract.WithRecordContexts(ctx, rcs), evs)
	if err != nil {
		return nil, err
	}
	for i, reason := range refused {
		rejected[of[i]] = reason
	}
	return rejected, nil
}

func decode(r *kgo.Record) (*mcv1.MemberEvent, error) {
	ev := &mcv1.MemberEvent{}
	if err := proto.Unmarshal(r.Value, ev); err != nil {
		return nil, dlq.Reject(fmt.Errorf("record value is not a MemberEvent: %w", err))
	}
	if err := contract.CheckMemberEvent(ev); err != nil {
		return nil, dlq.Reject(err)
	}
	return ev, nil
}

func (w *Worker) handle(ctx context.Context, r *kgo.Record) error {
	ev, err := decode(r)
	if err != nil {
		return err
	}
	return w.a.Apply(ctx, ev)
}
