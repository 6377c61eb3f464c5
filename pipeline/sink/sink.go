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
	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

// Stage is the sink's name in groups, logs and dead letters.
const Stage = "clickhouse-sink"

// The sink's contract with the fact store (package contract).
type (
	Event  = contract.FactEvent
	Change = contract.FactChange
	Facts  = contract.Facts
)

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
		MaxPollRecords: 50000,
		// About one large insert a second (or 50,000 rows) rather than one
		// per poll: every insert is a part ClickHouse must merge.
		Linger: time.Second,
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
			if err := contract.CheckMemberEvent(m); err != nil {
				rejected[r] = err
				continue
			}
			events = append(events, Event{Msg: m, TraceID: traceID})
		case s.topics.MemberChanges:
			m := &mcv1.MemberChange{}
			if err := proto.Unmarshal(r.Value, m); err != nil {
				rejected[r] = fmt.Errorf("record value is not a MemberChange: %w", err)
				continue
			}
			if err := contract.CheckMemberChange(m); err != nil {
				rejected[r] = err
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
