// Package sink copies member events and member changes from Kafka into
// ClickHouse facts in batches, committing offsets only after the batch is
// stored. A redelivered batch is harmless: the fact tables collapse
// duplicates by key.
package sink

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Stage is the sink's name in groups, logs and dead letters.
const Stage = "clickhouse-sink"

// Event is a member event with the trace it travelled in.
type Event struct {
	Msg     *mcv1.MemberEvent
	TraceID string
}

// Change is a member change with the trace it travelled in.
type Change struct {
	Msg     *mcv1.MemberChange
	TraceID string
}

// Facts stores facts; each call is one batch insert.
type Facts interface {
	WriteEvents(ctx context.Context, events []Event) error
	WriteChanges(ctx context.Context, changes []Change) error
}

// Sink runs the stage.
type Sink struct {
	c      *consumer.Consumer
	topics kafka.Topics
	facts  Facts
}

// New joins the sink's consumer group.
func New(kcfg kafka.Config, tel kafka.Telemetry, facts Facts) (*Sink, error) {
	c, err := consumer.New(kcfg, tel, consumer.Config{
		Stage:          Stage,
		Group:          kcfg.Group(Stage),
		Topics:         []string{kcfg.Topics.MemberEvents, kcfg.Topics.MemberChanges},
		DLQTopic:       kcfg.Topics.DLQ,
		MaxPollRecords: 5000,
		// A few large inserts a second rather than one per poll: every
		// insert is a part ClickHouse must merge.
		Linger: 500 * time.Millisecond,
	})
	if err != nil {
		return nil, err
	}
	return &Sink{c: c, topics: kcfg.Topics, facts: facts}, nil
}

// Close leaves the group.
func (s *Sink) Close() { s.c.Close() }

// Run copies until ctx ends.
func (s *Sink) Run(ctx context.Context) error { return s.c.RunBatches(ctx, s.write) }

func (s *Sink) write(ctx context.Context, rs []*kgo.Record) (map[*kgo.Record]error, error) {
	rejected := map[*kgo.Record]error{}
	var events []Event
	var changes []Change
	for _, r := range rs {
		traceID := ""
		if sc := trace.SpanContextFromContext(r.Context); sc.HasTraceID() {
			traceID = sc.TraceID().String()
		}
		switch r.Topic {
		case s.topics.MemberEvents:
			m := &mcv1.MemberEvent{}
			if err := proto.Unmarshal(r.Value, m); err != nil {
				rejected[r] = fmt.Errorf("record value is not a MemberEvent: %w", err)
				continue
			}
			events = append(events, Event{Msg: m, TraceID: traceID})
		case s.topics.MemberChanges:
			m := &mcv1.MemberChange{}
			if err := proto.Unmarshal(r.Value, m); err != nil {
				rejected[r] = fmt.Errorf("record value is not a MemberChange: %w", err)
				continue
			}
			changes = append(changes, Change{Msg: m, TraceID: traceID})
		}
	}
	if err := s.facts.WriteEvents(ctx, events); err != nil {
		return nil, err
	}
	if err := s.facts.WriteChanges(ctx, changes); err != nil {
		return nil, err
	}
	return rejected, nil
}
