// Package floor runs the pipeline benchmark's exactly-once floors: a plain
// consumer of a topic that does a stage's durable, exactly-once work the
// best way Kafka and PostgreSQL allow, in batches and without the
// platform's logic, so that the pipeline is compared with what its servers
// can really do exactly-once.
//
// Every record is an event of the member its key names (MemberOf), with a
// 2 KB state per member. ExactlyOnce runs one PostgreSQL transaction per
// polled partition batch (processed ids claimed in bulk, states loaded and
// locked once, one multi-row upsert, a ledger and an outbox row per event)
// and commits the Kafka offsets after it. InMemory owns the states of its
// partitions' members and writes the changed ones behind every
// FlushEvery, with the partition's offset in the same transaction.
package floor

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/membercenter/membercenter/storage/postgres/pgbench"
)

// Config says what a floor consumes and where it writes. A floor drains
// the topic to the end offsets it finds at its start, counting the
// records it receives: the topic's producers must not be transactional
// (a transaction's commit marker takes an offset no record has).
type Config struct {
	Brokers []string
	// Dial, when set, opens the broker connections.
	Dial         func(ctx context.Context, network, host string) (net.Conn, error)
	Topic, Group string
	// Pool writes the floor's tables; give it a connection per partition.
	Pool *pgxpool.Pool
	// InMemory writes a partition's changed states behind every FlushEvery
	// (0: 100 ms) or FlushRecords records (0: 10,000), whichever comes
	// first, and when the partition is caught up.
	FlushEvery   time.Duration
	FlushRecords int
	// MaxPollRecords bounds the records of one poll (0: what the client
	// has fetched).
	MaxPollRecords int
	// AfterBatch, when set, is called after each partition batch, with the
	// records the run has applied so far: ExactlyOnce calls it after the
	// batch's transaction committed and before its Kafka offsets are,
	// InMemory after the batch is applied in memory and before it is
	// written behind. Tests stop a run there.
	AfterBatch func(applied int)
}

func (c Config) flushEvery() time.Duration {
	if c.FlushEvery > 0 {
		return c.FlushEvery
	}
	return 100 * time.Millisecond
}

func (c Config) flushRecords() int {
	if c.FlushRecords > 0 {
		return c.FlushRecords
	}
	return 10_000
}

// Result is what one run of a floor did.
type Result struct {
	// Records consumed, and the events applied: ExactlyOnce applies those
	// whose id no earlier batch recorded (the others are Duplicates),
	// InMemory every record after the partition's stored offset.
	Records, Applied, Duplicates int
	// Transactions: one per partition batch (ExactlyOnce) or per write
	// behind (InMemory).
	Transactions int
	// From the first record received to the last effect durable: the
	// group's join is left out.
	Elapsed time.Duration
}

// Rate is the records consumed per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Records) / r.Elapsed.Seconds()
}

// StateSize is the size of a member's state.
const StateSize = 2048

// A state is the member's total amount, then a ring of the last events
// (id and amount), as a member's state keeps its recent history.
const (
	slotSize  = 32
	ringStart = 16
	ringSlots = (StateSize - ringStart) / slotSize
)

// HistoryState is the state a member starts with: a ring full of earlier
// events, as an existing member's. Its bytes are as varied as a binary
// encoding's: PostgreSQL's compression leaves them about 2 KB.
func HistoryState(member uuid.UUID) []byte {
	st := make([]byte, StateSize)
	rng := rand.New(rand.NewPCG(binary.BigEndian.Uint64(member[:8]), binary.BigEndian.Uint64(member[8:])))
	for i := ringStart; i+8 <= StateSize; i += 8 {
		binary.BigEndian.PutUint64(st[i:], rng.Uint64())
	}
	return st
}

// Amount is the total amount a state holds.
func Amount(state []byte) int64 { return int64(binary.BigEndian.Uint64(state[0:8])) }

// memberSpace names the members MemberOf derives from record keys.
var memberSpace = uuid.MustParse("6f6f6c66-0000-5000-8000-6d656d626572")

// MemberOf is the member a record key names.
func MemberOf(key []byte) uuid.UUID { return uuid.NewSHA1(memberSpace, key) }

// event is what a floor takes from a record.
type event struct {
	id     string
	member uuid.UUID
	amount int64
}

// eventOf reads a record: its event id is field 1 of the value (a
// ChannelEvent's event_id), or the record's position when the value has
// none; its amount is the value's size.
func eventOf(r *kgo.Record) event {
	id := eventID(r.Value)
	if id == "" {
		id = r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10)
	}
	return event{id: id, member: MemberOf(r.Key), amount: int64(len(r.Value))}
}

func eventID(v []byte) string {
	for len(v) > 0 {
		num, typ, n := protowire.ConsumeTag(v)
		if n < 0 {
			return ""
		}
		v = v[n:]
		if num == 1 && typ == protowire.BytesType {
			b, n := protowire.ConsumeBytes(v)
			if n < 0 || len(b) == 0 || len(b) > 128 || !utf8.Valid(b) {
				return ""
			}
			return string(b)
		}
		if n = protowire.ConsumeFieldValue(num, typ, v); n < 0 {
			return ""
		}
		v = v[n:]
	}
	return ""
}

// apply folds ev into st: one more version, the amount added, the event
// in the ring.
func apply(st *pgbench.MemberState, ev event) {
	if len(st.State) != StateSize {
		st.State = append(make([]byte, 0, StateSize), st.State...)[:StateSize]
	}
	st.Version++
	binary.BigEndian.PutUint64(st.State[0:8], uint64(Amount(st.State)+ev.amount))
	slot := st.State[ringStart+int((st.Version-1)%ringSlots)*slotSize:]
	clear(slot[:24])
	copy(slot[:24], ev.id)
	binary.BigEndian.PutUint64(slot[24:32], uint64(ev.amount))
}

// change is an event's outbox payload: member, version, amount, total.
func change(member uuid.UUID, st *pgbench.MemberState, ev event) []byte {
	p := make([]byte, 0, 40)
	p = append(p, member[:]...)
	p = binary.BigEndian.AppendUint64(p, uint64(st.Version))
	p = binary.BigEndian.AppendUint64(p, uint64(ev.amount))
	return binary.BigEndian.AppendUint64(p, uint64(Amount(st.State)))
}

func (c Config) client(opts ...kgo.Opt) (*kgo.Client, error) {
	base := []kgo.Opt{kgo.SeedBrokers(c.Brokers...), kgo.ConsumerGroup(c.Group), kgo.ConsumeTopics(c.Topic),
		kgo.DisableAutoCommit(), kgo.BlockRebalanceOnPoll(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}
	if c.Dial != nil {
		base = append(base, kgo.Dialer(c.Dial))
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	return cl, nil
}

// bounds are each partition's start and end offsets.
func bounds(ctx context.Context, adm *kadm.Client, topic string) (start, end map[int32]int64, err error) {
	start, end = map[int32]int64{}, map[int32]int64{}
	for _, o := range []struct {
		list func(context.Context, ...string) (kadm.ListedOffsets, error)
		into map[int32]int64
	}{{adm.ListStartOffsets, start}, {adm.ListEndOffsets, end}} {
		listed, err := o.list(ctx, topic)
		if err == nil {
			err = listed.Error()
		}
		if err != nil {
			return nil, nil, fmt.Errorf("list offsets of %s: %w", topic, err)
		}
		listed.Each(func(l kadm.ListedOffset) { o.into[l.Partition] = l.Offset })
	}
	return start, end, nil
}

func caughtUp(at, end map[int32]int64) bool {
	for p, e := range end {
		if at[p] < e {
			return false
		}
	}
	return true
}

// fetchErr is the first error of a poll, leaving out an ended poll
// context when the run's own context is alive.
func fetchErr(ctx context.Context, fs kgo.Fetches) error {
	for _, e := range fs.Errors() {
		if ctx.Err() == nil && (errors.Is(e.Err, context.DeadlineExceeded) || errors.Is(e.Err, context.Canceled)) {
			continue
		}
		return fmt.Errorf("fetch %s/%d: %w", e.Topic, e.Partition, e.Err)
	}
	return nil
}

// progress counts a run's records across its partitions' goroutines.
type progress struct {
	mu    sync.Mutex
	res   Result
	after func(int)
}

func (p *progress) add(records, applied, transactions int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.res.Records += records
	p.res.Applied += applied
	p.res.Duplicates += records - applied
	p.res.Transactions += transactions
	if p.after != nil && records > 0 {
		p.after(p.res.Applied)
	}
}

func (p *progress) result() Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.res
}

// ExactlyOnce drains the topic from the group's committed offsets to the
// end offsets it finds at its start. Each poll's partition batches run
// concurrently, each as one transaction (EOFloor.Batch); the poll's
// offsets are committed to Kafka after all of them, so a batch redelivered
// after a crash finds its ids recorded and changes nothing.
func ExactlyOnce(ctx context.Context, cfg Config, f *pgbench.EOFloor) (Result, error) {
	cl, err := cfg.client()
	if err != nil {
		return Result{}, err
	}
	defer cl.CloseAllowingRebalance()
	adm := kadm.NewClient(cl)
	at, end, err := bounds(ctx, adm, cfg.Topic)
	if err != nil {
		return Result{}, err
	}
	committed, err := adm.FetchOffsets(ctx, cfg.Group)
	if err != nil {
		return Result{}, fmt.Errorf("fetch offsets of %s: %w", cfg.Group, err)
	}
	committed.Each(func(o kadm.OffsetResponse) {
		if o.Topic == cfg.Topic && o.Err == nil && o.At >= 0 {
			at[o.Partition] = o.At
		}
	})
	pr := &progress{after: cfg.AfterBatch}
	var start time.Time
	for !caughtUp(at, end) {
		fs := cl.PollRecords(ctx, cfg.MaxPollRecords)
		if err := ctx.Err(); err != nil {
			return pr.result(), err
		}
		if err := fetchErr(ctx, fs); err != nil {
			return pr.result(), err
		}
		if start.IsZero() && fs.NumRecords() > 0 {
			start = time.Now()
		}
		g, gctx := errgroup.WithContext(ctx)
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) > 0 {
				g.Go(func() error { return eoBatch(gctx, f, p.Records, pr) })
			}
		})
		if err := g.Wait(); err != nil {
			return pr.result(), err
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			return pr.result(), fmt.Errorf("commit offsets: %w", err)
		}
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			if n := len(p.Records); n > 0 {
				at[p.Partition] = p.Records[n-1].Offset + 1
			}
		})
		cl.AllowRebalance()
	}
	res := pr.result()
	if !start.IsZero() {
		res.Elapsed = time.Since(start)
	}
	return res, nil
}

// eoBatch is one partition batch's transaction.
func eoBatch(ctx context.Context, f *pgbench.EOFloor, recs []*kgo.Record, pr *progress) error {
	evs := make([]event, len(recs))
	ids := make([]string, len(recs))
	seen := make(map[uuid.UUID]struct{}, len(recs))
	members := make([]uuid.UUID, 0, len(recs))
	for i, r := range recs {
		evs[i] = eventOf(r)
		ids[i] = evs[i].id
		if _, ok := seen[evs[i].member]; !ok {
			seen[evs[i].member] = struct{}{}
			members = append(members, evs[i].member)
		}
	}
	applied := 0
	err := f.Batch(ctx, ids, members, func(fresh []string, states map[uuid.UUID]pgbench.MemberState) (pgbench.Effects, error) {
		isFresh := make(map[string]struct{}, len(fresh))
		for _, id := range fresh {
			isFresh[id] = struct{}{}
		}
		var eff pgbench.Effects
		cur := make(map[uuid.UUID]*pgbench.MemberState, len(members))
		for _, ev := range evs {
			if _, ok := isFresh[ev.id]; !ok {
				continue // recorded by an earlier batch, or earlier in this one
			}
			delete(isFresh, ev.id)
			st := cur[ev.member]
			if st == nil {
				s := states[ev.member]
				st = &s
				cur[ev.member] = st
			}
			apply(st, ev)
			eff.Ledger = append(eff.Ledger, pgbench.LedgerRow{EventID: ev.id, Member: ev.member, Amount: ev.amount})
			eff.Outbox = append(eff.Outbox, pgbench.OutboxRow{Member: ev.member, Sequence: st.Version, EventID: ev.id,
				Payload: change(ev.member, st, ev)})
		}
		eff.States = sortedStates(cur)
		applied = len(eff.Ledger)
		return eff, nil
	})
	if err != nil {
		return fmt.Errorf("exactly-once batch of %d records of %s/%d: %w", len(recs), recs[0].Topic, recs[0].Partition, err)
	}
	pr.add(len(recs), applied, 1)
	return nil
}

// sortedStates are the states in member order, so that transactions
// sharing members write them in one order.
func sortedStates(m map[uuid.UUID]*pgbench.MemberState) []pgbench.StateRow {
	rows := make([]pgbench.StateRow, 0, len(m))
	for id, st := range m {
		rows = append(rows, pgbench.StateRow{Member: id, MemberState: *st})
	}
	slices.SortFunc(rows, func(a, b pgbench.StateRow) int { return bytes.Compare(a.Member[:], b.Member[:]) })
	return rows
}

// owned is a partition's members' states, held by the worker that owns
// the partition.
type owned struct {
	states  map[uuid.UUID]*pgbench.MemberState
	dirty   map[uuid.UUID]*pgbench.MemberState
	next    int64 // the offset after the last record applied
	pending int   // records applied since the last write behind
	flushed time.Time
}

// applyBatch applies a partition batch in memory, loading the members seen
// for the first time in one query.
func (o *owned) applyBatch(ctx context.Context, f *pgbench.StateFloor, recs []*kgo.Record) error {
	evs := make([]event, len(recs))
	var unseen []uuid.UUID
	for i, r := range recs {
		evs[i] = eventOf(r)
		if _, ok := o.states[evs[i].member]; !ok {
			o.states[evs[i].member] = nil
			unseen = append(unseen, evs[i].member)
		}
	}
	if len(unseen) > 0 {
		loaded, err := f.Load(ctx, unseen)
		if err != nil {
			return fmt.Errorf("load %d member states: %w", len(unseen), err)
		}
		for _, m := range unseen {
			st := loaded[m]
			o.states[m] = &st
		}
	}
	for _, ev := range evs {
		st := o.states[ev.member]
		apply(st, ev)
		o.dirty[ev.member] = st
	}
	o.next = recs[len(recs)-1].Offset + 1
	o.pending += len(recs)
	return nil
}

// flush writes the dirty states behind with the partition's offset.
func (o *owned) flush(ctx context.Context, f *pgbench.StateFloor, topic string, partition int32) error {
	if err := f.Flush(ctx, topic, partition, o.next, sortedStates(o.dirty)); err != nil {
		return err
	}
	clear(o.dirty)
	o.pending, o.flushed = 0, time.Now()
	return nil
}

// InMemory drains the topic from the offsets stored beside the states to
// the end offsets it finds at its start. A partition's worker keeps the
// states of the members it has seen, loaded once, applies each record in
// memory and writes the changed states behind in one multi-row upsert,
// together with the partition's next offset; on assignment a partition
// resumes from its stored offset, so what a crash lost in memory is
// applied again from the durable states, and nothing twice.
func InMemory(ctx context.Context, cfg Config, f *pgbench.StateFloor) (Result, error) {
	var mu sync.Mutex // parts: the poll loop and the rebalance callbacks
	parts := map[int32]*owned{}
	cl, err := cfg.client(
		kgo.AdjustFetchOffsetsFn(func(actx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
			stored, err := f.Offsets(actx, cfg.Topic)
			if err != nil {
				return nil, err
			}
			for p := range offsets[cfg.Topic] {
				if next, ok := stored[p]; ok {
					offsets[cfg.Topic][p] = kgo.NewOffset().At(next).WithEpoch(-1)
				}
			}
			return offsets, nil
		}),
		// A revoked partition is written behind before another owner
		// loads it (with the run's context: a stopped run writes nothing);
		// a lost one is dropped.
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
			mu.Lock()
			defer mu.Unlock()
			for _, p := range revoked[cfg.Topic] {
				if o := parts[p]; o != nil && o.pending > 0 && ctx.Err() == nil {
					_ = o.flush(ctx, f, cfg.Topic, p)
				}
				delete(parts, p)
			}
		}),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
			mu.Lock()
			defer mu.Unlock()
			for _, p := range lost[cfg.Topic] {
				delete(parts, p)
			}
		}),
	)
	if err != nil {
		return Result{}, err
	}
	defer cl.CloseAllowingRebalance()
	durable, end, err := bounds(ctx, kadm.NewClient(cl), cfg.Topic)
	if err != nil {
		return Result{}, err
	}
	stored, err := f.Offsets(ctx, cfg.Topic)
	if err != nil {
		return Result{}, err
	}
	for p, next := range stored {
		durable[p] = next
	}
	pr := &progress{after: cfg.AfterBatch}
	every, most := cfg.flushEvery(), cfg.flushRecords()
	var start time.Time
	for !caughtUp(durable, end) {
		// A poll waits at most until the next write behind is due.
		pctx, cancel := context.WithTimeout(ctx, every)
		fs := cl.PollRecords(pctx, cfg.MaxPollRecords)
		cancel()
		if err := ctx.Err(); err != nil {
			return pr.result(), err
		}
		if err := fetchErr(ctx, fs); err != nil {
			return pr.result(), err
		}
		if start.IsZero() && fs.NumRecords() > 0 {
			start = time.Now()
		}
		mu.Lock()
		g, gctx := errgroup.WithContext(ctx)
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			o := parts[p.Partition]
			if o == nil {
				o = &owned{states: map[uuid.UUID]*pgbench.MemberState{}, dirty: map[uuid.UUID]*pgbench.MemberState{}, flushed: time.Now()}
				parts[p.Partition] = o
			}
			g.Go(func() error {
				if err := o.applyBatch(gctx, f, p.Records); err != nil {
					return err
				}
				pr.add(len(p.Records), len(p.Records), 0)
				return nil
			})
		})
		err := g.Wait()
		if err == nil {
			g, gctx = errgroup.WithContext(ctx)
			for p, o := range parts {
				if o.pending > 0 && (o.pending >= most || time.Since(o.flushed) >= every || o.next >= end[p]) {
					g.Go(func() error {
						if err := o.flush(gctx, f, cfg.Topic, p); err != nil {
							return err
						}
						pr.add(0, 0, 1)
						return nil
					})
				}
			}
			err = g.Wait()
			for p, o := range parts {
				if o.pending == 0 {
					durable[p] = max(durable[p], o.next)
				}
			}
		}
		mu.Unlock()
		if err != nil {
			return pr.result(), err
		}
		cl.AllowRebalance()
	}
	res := pr.result()
	if !start.IsZero() {
		res.Elapsed = time.Since(start)
	}
	return res, nil
}
