// Package dlq routes records a stage cannot process to the dead-letter topic,
// with the reason and the original bytes, so they never block a partition and
// are never silently dropped; and replays them once fixed.
package dlq

import (
	"errors"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Header keys of a dead letter. The original record's headers (trace context
// included) are kept after these.
const (
	HeaderReason    = "mc-dlq-reason"
	HeaderStage     = "mc-dlq-stage"
	HeaderTopic     = "mc-dlq-topic"
	HeaderPartition = "mc-dlq-partition"
	HeaderOffset    = "mc-dlq-offset"
	HeaderAt        = "mc-dlq-at"
)

// rejection marks an error as permanent: retrying the record cannot help.
type rejection struct{ err error }

func (r rejection) Error() string { return r.err.Error() }
func (r rejection) Unwrap() error { return r.err }

// Reject marks err as a permanent failure of the record being processed: the
// stage sends the record to the dead-letter topic with err as the reason and
// moves on. Errors not marked are retried.
func Reject(err error) error {
	if err == nil {
		return nil
	}
	return rejection{err}
}

// Rejected reports whether err (or an error it wraps) was marked by Reject.
func Rejected(err error) bool {
	var r rejection
	return errors.As(err, &r)
}

// Record builds the dead letter of src for topic: same key and value, the
// reason and origin in headers.
func Record(topic, stage string, src *kgo.Record, reason error, at time.Time) *kgo.Record {
	headers := []kgo.RecordHeader{
		{Key: HeaderReason, Value: []byte(reason.Error())},
		{Key: HeaderStage, Value: []byte(stage)},
		{Key: HeaderTopic, Value: []byte(src.Topic)},
		{Key: HeaderPartition, Value: []byte(strconv.FormatInt(int64(src.Partition), 10))},
		{Key: HeaderOffset, Value: []byte(strconv.FormatInt(src.Offset, 10))},
		{Key: HeaderAt, Value: []byte(at.UTC().Format(time.RFC3339Nano))},
	}
	for _, h := range src.Headers {
		if !isDLQHeader(h.Key) {
			headers = append(headers, h)
		}
	}
	return &kgo.Record{
		Topic:   topic,
		Key:     src.Key,
		Value:   src.Value,
		Headers: headers,
		Context: src.Context,
	}
}

func isDLQHeader(k string) bool {
	switch k {
	case HeaderReason, HeaderStage, HeaderTopic, HeaderPartition, HeaderOffset, HeaderAt:
		return true
	}
	return false
}

// Letter is a dead letter as read back from the topic.
type Letter struct {
	Reason    string
	Stage     string
	Topic     string
	Partition int32
	Offset    int64
	At        time.Time
	Record    *kgo.Record
}

// Parse reads the dead-letter headers of r.
func Parse(r *kgo.Record) Letter {
	l := Letter{Record: r}
	for _, h := range r.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderReason:
			l.Reason = v
		case HeaderStage:
			l.Stage = v
		case HeaderTopic:
			l.Topic = v
		case HeaderPartition:
			p, _ := strconv.ParseInt(v, 10, 32)
			l.Partition = int32(p)
		case HeaderOffset:
			l.Offset, _ = strconv.ParseInt(v, 10, 64)
		case HeaderAt:
			l.At, _ = time.Parse(time.RFC3339Nano, v)
		}
	}
	return l
}

// Original returns the record to re-publish for a replay: the original topic,
// key, value and headers, without the dead-letter headers.
func (l Letter) Original() *kgo.Record {
	var headers []kgo.RecordHeader
	for _, h := range l.Record.Headers {
		if !isDLQHeader(h.Key) {
			headers = append(headers, h)
		}
	}
	return &kgo.Record{Topic: l.Topic, Key: l.Record.Key, Value: l.Record.Value, Headers: headers}
}
