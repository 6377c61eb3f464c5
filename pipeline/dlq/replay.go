package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// Header of replays.
const (
	// HeaderReplayOf names, on a replayed record, the dead letter it
	// replays (LetterID). A stage that dead-letters the replayed record
	// again keeps it (a letter keeps the original's headers), so the new
	// letter is known as a replay's own letter, not a new one.
	HeaderReplayOf = "mc-dlq-replay-of"
)

// LetterID is a dead letter's place in the dead-letter topic.
type LetterID struct {
	Topic     string
	Partition int32
	Offset    int64
}

// String renders id as topic/partition@offset.
func (id LetterID) String() string { return fmt.Sprintf("%s/%d@%d", id.Topic, id.Partition, id.Offset) }

// ParseLetterID reverses String.
func ParseLetterID(s string) (LetterID, error) {
	at := strings.LastIndexByte(s, '@')
	slash := strings.LastIndexByte(s, '/')
	if at < 0 || slash < 0 || slash > at {
		return LetterID{}, fmt.Errorf("letter id %q: want topic/partition@offset", s)
	}
	p, err1 := strconv.ParseInt(s[slash+1:at], 10, 32)
	o, err2 := strconv.ParseInt(s[at+1:], 10, 64)
	if err := errors.Join(err1, err2); err != nil || s[:slash] == "" {
		return LetterID{}, fmt.Errorf("letter id %q: want topic/partition@offset", s)
	}
	return LetterID{Topic: s[:slash], Partition: int32(p), Offset: o}, nil
}

// Replays records durably which letters were replayed.
type Replays interface {
	// Replayed reports whether the letter id was replayed before.
	Replayed(ctx context.Context, id LetterID) (bool, error)
	// Record records that letter id was replayed as the record to
	// (produced: its topic, partition and offset are set).
	Record(ctx context.Context, id LetterID, to *kgo.Record) error
}

// ReplayOptions select what a replay re-publishes.
type ReplayOptions struct {
	// Since is the start of the window of letters scanned.
	Since time.Time
	// Keep selects letters (a filter on stage, topic, …); nil keeps all.
	Keep func(Letter) bool
	// Force replays letters replayed before, too (once per run still).
	Force bool
	// Replays records replayed letters; required.
	Replays Replays
	// Sealer opens sealed letters (HeaderSealed); without it they cannot
	// be replayed.
	Sealer Sealer
}

// ReplayResult says what a replay did.
type ReplayResult struct {
	Replayed        int // re-published
	AlreadyReplayed int // skipped: replayed before (or their original was, in this run or before)
	NotMatching     int // skipped: not selected by the filter
	Unreplayable    int // skipped: cannot be replayed (Problems says why)
	// Problems names each letter that cannot be replayed, and why.
	Problems []string
}

// String renders the result as the command prints it.
func (r ReplayResult) String() string {
	return fmt.Sprintf("replayed %d, skipped %d already replayed, %d not matching the filter, %d that cannot be replayed",
		r.Replayed, r.AlreadyReplayed, r.NotMatching, r.Unreplayable)
}

// Replay re-publishes each dead letter in the window that o selects to the
// topic it came from, with its original key, value and headers, once: a
// letter replayed before is skipped unless o.Force, and so is a letter
// written when a replayed record failed again (it carries HeaderReplayOf,
// and counts as its original). Each replay is recorded after its produce
// succeeded. Stages deduplicate by event id, so a replay recorded twice
// changes nothing; a letter that fails again returns to the dead-letter
// topic with its new reason. A letter kept by reference only (too large)
// or without its origin cannot be replayed and is counted as such.
func Replay(ctx context.Context, cl *kgo.Client, topic string, o ReplayOptions) (ReplayResult, error) {
	var res ReplayResult
	if o.Replays == nil {
		return res, errors.New("replay: no record of replays")
	}
	thisRun := map[LetterID]bool{}
	err := Scan(ctx, cl, topic, o.Since, func(l Letter) error {
		if o.Keep != nil && !o.Keep(l) {
			res.NotMatching++
			return nil
		}
		self := LetterID{Topic: l.Record.Topic, Partition: l.Record.Partition, Offset: l.Record.Offset}
		id := self
		if v := headerOf(l.Record, HeaderReplayOf); v != "" {
			if orig, err := ParseLetterID(v); err == nil {
				id = orig
			}
		}
		switch {
		case l.Truncated:
			res.Unreplayable++
			res.Problems = append(res.Problems, fmt.Sprintf("%s: the original was too large and is kept by reference only (%s/%d@%d)", self, l.Topic, l.Partition, l.Offset))
			return nil
		case l.Topic == "":
			res.Unreplayable++
			res.Problems = append(res.Problems, fmt.Sprintf("%s: no %s header says where it came from", self, HeaderTopic))
			return nil
		case thisRun[id]:
			res.AlreadyReplayed++
			return nil
		}
		if !o.Force {
			done, err := o.Replays.Replayed(ctx, id)
			if err != nil {
				return err
			}
			if done {
				res.AlreadyReplayed++
				return nil
			}
		}
		if err := l.Open(o.Sealer); err != nil {
			res.Unreplayable++
			res.Problems = append(res.Problems, fmt.Sprintf("%s: %v", self, err))
			return nil
		}
		rec := l.Original()
		rec.Headers = append(withoutHeader(rec.Headers, HeaderReplayOf), kgo.RecordHeader{Key: HeaderReplayOf, Value: []byte(id.String())})
		if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
			return fmt.Errorf("replay %s to %s: %w", self, l.Topic, err)
		}
		if err := o.Replays.Record(ctx, id, rec); err != nil {
			return fmt.Errorf("record the replay of %s (published to %s/%d@%d): %w", id, rec.Topic, rec.Partition, rec.Offset, err)
		}
		thisRun[id] = true
		res.Replayed++
		return nil
	})
	return res, err
}

func headerOf(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func withoutHeader(hs []kgo.RecordHeader, key string) []kgo.RecordHeader {
	out := hs[:0:0]
	for _, h := range hs {
		if h.Key != key {
			out = append(out, h)
		}
	}
	return out
}
