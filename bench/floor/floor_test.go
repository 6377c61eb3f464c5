package floor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

func TestEventID(t *testing.T) {
	v, err := proto.Marshal(&mcv1.ChannelEvent{EventId: "ev-1", StoreId: "s-9"})
	if err != nil {
		t.Fatal(err)
	}
	noID, _ := proto.Marshal(&mcv1.ChannelEvent{StoreId: "s-9"})
	for value, want := range map[string]string{string(v): "ev-1", string(noID): "", "\xff\xfe not protobuf": "", "": ""} {
		if got := eventID([]byte(value)); got != want {
			t.Errorf("eventID(%q) = %q, want %q", value, got, want)
		}
	}
}

// workload is the records a test publishes and what applying each once
// leaves per member.
type workload struct {
	n        int
	versions map[uuid.UUID]int64 // events per member
	amounts  map[uuid.UUID]int64
	amount   int64
}

// publish produces n records keyed by 97 shoppers: ChannelEvents of
// varied sizes, one in 50 of them malformed bytes without an event id.
func publish(t *testing.T, ctx context.Context, brokers []string, topic string, n int) workload {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	w := workload{n: n, versions: map[uuid.UUID]int64{}, amounts: map[uuid.UUID]int64{}}
	for i := range n {
		key := fmt.Sprintf("shopper-%d", (i*7919)%97)
		value := []byte("\xff malformed " + strings.Repeat("x", i%13))
		if i%50 != 0 {
			if value, err = proto.Marshal(&mcv1.ChannelEvent{EventId: fmt.Sprintf("ev-%d", i), StoreId: strings.Repeat("s", i%40)}); err != nil {
				t.Fatal(err)
			}
		}
		m := MemberOf([]byte(key))
		w.versions[m]++
		w.amounts[m] += int64(len(value))
		w.amount += int64(len(value))
		cl.Produce(ctx, &kgo.Record{Key: []byte(key), Value: value}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return w
}

// check compares the states with one application of every record.
func (w workload) check(t *testing.T, states map[uuid.UUID]pgbench.MemberState) {
	t.Helper()
	if len(states) != len(w.versions) {
		t.Errorf("%d member states, want %d", len(states), len(w.versions))
	}
	for m, want := range w.versions {
		st := states[m]
		if st.Version != want || Amount(st.State) != w.amounts[m] {
			t.Errorf("member %s: version %d, amount %d; want %d, %d", m, st.Version, Amount(st.State), want, w.amounts[m])
		}
	}
}

// stopHalfway is a config whose AfterBatch cancels the run once it has
// applied half the records, as a crash would stop it.
func stopHalfway(ctx context.Context, cfg Config, n int) (Config, context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	cfg.AfterBatch = func(applied int) {
		if applied >= n/2 {
			cancel()
		}
	}
	return cfg, ctx, cancel
}

// TestFloorsApplyEveryRecordOnceAcrossACrash: each floor stopped half-way
// through a topic (its context cancelled after a batch, as a crash would
// stop it) and run again applies every record exactly once; a second
// group reading the whole topic again then changes nothing.
func TestFloorsApplyEveryRecordOnceAcrossACrash(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kcfg := kafkatest.Config(t)
	pcfg, err := pgxpool.ParseConfig(pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	const n = 3000
	w := publish(t, ctx, kcfg.Brokers, kcfg.Topics.ChannelEvents, n)
	base := Config{Brokers: kcfg.Brokers, Topic: kcfg.Topics.ChannelEvents, Pool: pool, MaxPollRecords: 250, FlushRecords: 200}

	t.Run("exactly-once batch", func(t *testing.T) {
		f, err := pgbench.NewEOFloor(ctx, pool, "eo")
		if err != nil {
			t.Fatal(err)
		}
		cfg := base
		cfg.Group = kcfg.GroupPrefix + "-eo"
		crashing, cctx, stop := stopHalfway(ctx, cfg, n)
		first, err := ExactlyOnce(cctx, crashing, f)
		stop()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("first run: %v, want it stopped", err)
		}
		mid, err := f.Totals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if mid.Processed == 0 || mid.Processed >= n {
			t.Fatalf("the first run stopped after %d of %d records, want half-way", mid.Processed, n)
		}
		second, err := ExactlyOnce(ctx, cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("first run applied %d (%d durable), second consumed %d, applied %d, %d duplicates",
			first.Applied, mid.Processed, second.Records, second.Applied, second.Duplicates)
		want := pgbench.FloorTotals{Members: int64(len(w.versions)), Events: n, Processed: n, Ledger: n, LedgerAmount: w.amount, Outbox: n}
		checkTotals(t, ctx, f.Totals, want)
		states, err := f.States(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w.check(t, states)

		cfg.Group = kcfg.GroupPrefix + "-eo-again"
		again, err := ExactlyOnce(ctx, cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		if again.Records != n || again.Applied != 0 {
			t.Errorf("a new group read %d records and applied %d, want %d and 0", again.Records, again.Applied, n)
		}
		checkTotals(t, ctx, f.Totals, want)
	})

	t.Run("in-memory state", func(t *testing.T) {
		f, err := pgbench.NewStateFloor(ctx, pool, "mem")
		if err != nil {
			t.Fatal(err)
		}
		cfg := base
		cfg.Group = kcfg.GroupPrefix + "-mem"
		crashing, cctx, stop := stopHalfway(ctx, cfg, n)
		first, err := InMemory(cctx, crashing, f)
		stop()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("first run: %v, want it stopped", err)
		}
		mid, err := f.Totals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if mid.Events >= n {
			t.Fatalf("the first run stopped after writing %d of %d records, want half-way", mid.Events, n)
		}
		second, err := InMemory(ctx, cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("first run applied %d in memory (%d durable), second consumed %d", first.Applied, mid.Events, second.Records)
		if second.Records != n-int(mid.Events) {
			t.Errorf("the second run consumed %d records, want the %d after the stored offsets", second.Records, n-mid.Events)
		}
		want := pgbench.FloorTotals{Members: int64(len(w.versions)), Events: n}
		checkTotals(t, ctx, f.Totals, want)
		states, err := f.States(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w.check(t, states)

		cfg.Group = kcfg.GroupPrefix + "-mem-again"
		again, err := InMemory(ctx, cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		if again.Records != 0 {
			t.Errorf("a new group read %d records, want none (it resumes from the stored offsets)", again.Records)
		}
		checkTotals(t, ctx, f.Totals, want)
	})
}

func checkTotals(t *testing.T, ctx context.Context, totals func(context.Context) (pgbench.FloorTotals, error), want pgbench.FloorTotals) {
	t.Helper()
	got, err := totals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got.StoredStateBytes = 0
	if got != want {
		t.Errorf("totals %+v, want %+v", got, want)
	}
}
