package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Scan reads the dead letters written to topic from since until the end of
// the topic as it is when Scan starts, and calls fn for each, in offset order
// per partition. It keeps no consumer-group state: scanning twice sees the
// same letters. cl should read committed records only (letters of aborted
// transactions were written again when their batch was retried).
func Scan(ctx context.Context, cl *kgo.Client, topic string, since time.Time, fn func(Letter) error) error {
	adm := kadm.NewClient(cl)
	starts, err := adm.ListOffsetsAfterMilli(ctx, since.UnixMilli(), topic)
	if err != nil {
		return fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	if err := starts.Error(); err != nil {
		return fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	consume := map[string]map[int32]kgo.Offset{topic: {}}
	remaining := map[int32]int64{}
	starts.Each(func(o kadm.ListedOffset) {
		end, _ := ends.Lookup(topic, o.Partition)
		if o.Offset < end.Offset {
			consume[topic][o.Partition] = kgo.NewOffset().At(o.Offset)
			remaining[o.Partition] = end.Offset
		}
	})
	if len(remaining) == 0 {
		return nil
	}
	cl.AddConsumePartitions(consume)
	defer cl.RemoveConsumePartitions(map[string][]int32{topic: keys(remaining)})
	for len(remaining) > 0 {
		// Every letter below the listed end is already in the log, so the
		// broker answers at once; a quiet second means the rest of the range
		// holds only transaction markers (dead letters of the ingest stage
		// are written in Kafka transactions) and the scan is complete.
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fetches := cl.PollFetches(pctx)
		idle := pctx.Err() != nil && fetches.NumRecords() == 0
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		if idle {
			return nil
		}
		var ferr error
		fetches.EachError(func(_ string, _ int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				ferr = err
			}
		})
		if ferr != nil {
			return fmt.Errorf("fetch %s: %w", topic, ferr)
		}
		var cbErr error
		fetches.EachRecord(func(r *kgo.Record) {
			end, ok := remaining[r.Partition]
			if !ok || cbErr != nil || r.Offset >= end {
				return
			}
			cbErr = fn(Parse(r))
			if r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
		})
		if cbErr != nil {
			return cbErr
		}
	}
	return nil
}

func keys(m map[int32]int64) []int32 {
	out := make([]int32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Replay re-publishes each dead letter accepted by keep to the topic it came
// from, with its original key, value and headers. Stages deduplicate by event
// id, so replaying a letter twice changes nothing; a letter that fails again
// returns to the dead-letter topic with its new reason.
func Replay(ctx context.Context, cl *kgo.Client, topic string, since time.Time, keep func(Letter) bool) (int, error) {
	n := 0
	err := Scan(ctx, cl, topic, since, func(l Letter) error {
		if !keep(l) {
			return nil
		}
		if l.Topic == "" {
			return fmt.Errorf("dead letter %d/%d has no %s header", l.Record.Partition, l.Record.Offset, HeaderTopic)
		}
		if err := cl.ProduceSync(ctx, l.Original()).FirstErr(); err != nil {
			return fmt.Errorf("replay %s/%d@%d: %w", l.Topic, l.Partition, l.Offset, err)
		}
		n++
		return nil
	})
	return n, err
}
