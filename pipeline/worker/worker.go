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

// Run applies events until ctx ends.
func (w *Worker) Run(ctx context.Context) error { return w.c.RunRecords(ctx, w.handle) }

func (w *Worker) handle(ctx context.Context, r *kgo.Record) error {
	ev := &mcv1.MemberEvent{}
	if err := proto.Unmarshal(r.Value, ev); err != nil {
		return dlq.Reject(fmt.Errorf("record value is not a MemberEvent: %w", err))
	}
	if ev.GetEventId() == "" || ev.GetMemberId() == "" {
		return dlq.Reject(fmt.Errorf("member event without event_id or member_id"))
	}
	return w.a.Apply(ctx, ev)
}
