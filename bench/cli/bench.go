package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
)

func latencyCmd(stdout io.Writer) *cobra.Command {
	var events, members, rate int
	var fanout []int
	var fanEvents, fanRate int
	cmd := &cobra.Command{
		Use:   "latency",
		Short: "Time from publishing a POS event to its change on a Subscribe stream, beside a raw Kafka produce→consume round trip",
		Long: `Runs the whole platform in process on scratch topics, publishes POS
transactions open-loop at a fixed rate (latency counts from each event's
intended send time, so a queue cannot hide), and times each one until its
points change arrives on a SyncService.Subscribe stream. In the same run, at
the same rate, it times a plain produce→consume round trip on a scratch topic
of the same broker: the floor. Prints a Markdown table.

With --subscribers, it then opens each number of concurrent Subscribe
streams (no filter: every stream receives every change), publishes
--fanout-events more events at --fanout-rate, and times each event's points
change on every stream: the fan-out table, one row per number of streams.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, _, done, err := setupLogged(cmd.Context(), "membercenter-bench")
			if err != nil {
				return err
			}
			defer done()
			b := &latencyBench{e: e, out: stdout, events: events, members: members, rate: rate,
				fanout: fanout, fanEvents: fanEvents, fanRate: fanRate}
			return b.run(cmd.Context())
		},
	}
	cmd.Flags().IntVar(&events, "events", 1000, "measured events")
	cmd.Flags().IntVar(&members, "members", 200, "distinct members the events belong to")
	cmd.Flags().IntVar(&rate, "rate", 200, "events per second (open loop)")
	cmd.Flags().IntSliceVar(&fanout, "subscribers", nil, "numbers of concurrent subscribers for the fan-out table (e.g. 1000,2000,4000)")
	cmd.Flags().IntVar(&fanEvents, "fanout-events", 100, "events per fan-out row")
	cmd.Flags().IntVar(&fanRate, "fanout-rate", 20, "events per second in the fan-out rows")
	return cmd
}

type latencyBench struct {
	e                     *platformtest.Env
	out                   io.Writer
	events, members, rate int
	fanout                []int
	fanEvents, fanRate    int
}

// Summary is a latency distribution.
type Summary struct {
	N                   int
	Median, P99, Max    time.Duration
	Throughput, Elapsed float64
}

func summarize(ds []time.Duration, elapsed time.Duration) Summary {
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	return Summary{N: len(ds), Median: q(0.5), P99: q(0.99), Max: ds[len(ds)-1],
		Throughput: float64(len(ds)) / elapsed.Seconds(), Elapsed: elapsed.Seconds()}
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) }

func (b *latencyBench) run(ctx context.Context) error {
	cfg := b.e.Config
	run := fmt.Sprintf("bench%x", time.Now().UnixNano()&0xffffffff)
	// Scratch topics and groups: a clean, unshared pipeline for this run.
	kcfg := scratchKafka(cfg.Kafka, run)
	floorTopic := run + ".floor.v1"
	ktel := b.e.Kafka()
	topics, err := openScratch(ctx, kcfg, ktel, 6, floorTopic)
	if err != nil {
		return err
	}
	defer topics.close()

	if err := b.e.P.Migrate(ctx); err != nil {
		return err
	}
	pcfg := cfg
	pcfg.Kafka = kcfg
	p, err := platform.Open(ctx, pcfg, b.e.Tel)
	if err != nil {
		return err
	}
	defer p.Close()
	running, err := platformtest.Start(ctx, p, platform.Options{Services: platform.AllServices, Stages: platform.AllStages})
	if err != nil {
		return err
	}
	defer running.Stop()

	producer, err := kafka.NewClient(kcfg, ktel, "", kgo.ProducerLinger(0))
	if err != nil {
		return err
	}
	defer producer.Close()

	floor, err := b.floor(ctx, kcfg, ktel, producer, topics.adm, floorTopic)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	platformRes, err := b.platform(ctx, running.Conn, kcfg, producer, run)
	if err != nil {
		return err
	}
	var fan []fanoutResult
	for _, n := range b.fanout {
		r, err := b.fanoutRow(ctx, running, kcfg, producer, run, n)
		if err != nil {
			return fmt.Errorf("fan-out to %d subscribers: %w", n, err)
		}
		fan = append(fan, r)
	}
	if err := running.Stop(); err != nil {
		return err
	}

	fmt.Fprintf(b.out, "| scenario | events | rate (ev/s) | median ms | p99 ms | max ms | median ÷ floor | p99 ÷ floor |\n")
	fmt.Fprintf(b.out, "|---|---|---|---|---|---|---|---|\n")
	row := func(name string, s Summary) {
		fmt.Fprintf(b.out, "| %s | %d | %d | %s | %s | %s | %.1f× | %.1f× |\n", name, s.N, b.rate, ms(s.Median), ms(s.P99), ms(s.Max),
			float64(s.Median)/float64(floor.Median), float64(s.P99)/float64(floor.P99))
	}
	row("floor: Kafka produce → consume (same broker, same run)", floor)
	row("POS event → change on Subscribe stream", platformRes)
	fmt.Fprintf(b.out, "\nGOMAXPROCS %d; %d members; platform run in one process with every stage and service.\n", runtime.GOMAXPROCS(0), b.members)
	if len(fan) > 0 {
		fmt.Fprintf(b.out, "\nFan-out: concurrent `SyncService.Subscribe` streams without a filter (each receives every change) over %d gRPC connections, "+
			"%d events at %d ev/s per row; latency from each event's intended send time to its points change on each stream. "+
			"The floor is the Kafka round trip above.\n\n", fanConns, b.fanEvents, b.fanRate)
		fmt.Fprintf(b.out, "| subscribers | deliveries timed | missing | p50 ms | p99 ms | max ms | p50 ÷ floor | p99 ÷ floor | p99 under 1 s |\n|---|---|---|---|---|---|---|---|---|\n")
		best := 0
		for _, r := range fan {
			under := r.sum.P99 < time.Second && r.missing == 0
			if under {
				best = max(best, r.n)
			}
			fmt.Fprintf(b.out, "| %d | %d | %d | %s | %s | %s | %.1f× | %.1f× | %v |\n", r.n, r.sum.N, r.missing, ms(r.sum.Median), ms(r.sum.P99), ms(r.sum.Max),
				float64(r.sum.Median)/float64(floor.Median), float64(r.sum.P99)/float64(floor.P99), map[bool]string{true: "yes", false: "no"}[under])
		}
		fmt.Fprintf(b.out, "\nLargest number of concurrent subscribers measured with every change delivered and p99 under 1 s: **%d**.\n", best)
	}
	return nil
}

// fanConns is how many gRPC connections the fan-out subscribers share.
const fanConns = 8

type fanoutResult struct {
	n       int
	sum     Summary
	missing int
}

// fanoutRow opens n unfiltered streams, publishes b.fanEvents events and
// times each event's points change on every stream.
func (b *latencyBench) fanoutRow(ctx context.Context, running *platformtest.Running, kcfg kafka.Config, producer *kafka.Client, run string, n int) (fanoutResult, error) {
	var conns []*grpc.ClientConn
	for range fanConns {
		c, err := running.Dial()
		if err != nil {
			return fanoutResult{}, err
		}
		defer c.Close()
		conns = append(conns, c)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prefix := fmt.Sprintf("%s-f%d-", run, n)
	received := make([][]time.Time, n)
	streams := make([]mcv1.SyncService_SubscribeClient, n)
	for i := range n {
		s, err := mcv1.NewSyncServiceClient(conns[i%fanConns]).Subscribe(sctx, &mcv1.SubscribeRequest{})
		if err != nil {
			return fanoutResult{}, err
		}
		if m, err := s.Recv(); err != nil || m.GetReady() == nil {
			return fanoutResult{}, fmt.Errorf("subscriber %d: %v", i, err)
		}
		streams[i], received[i] = s, make([]time.Time, b.fanEvents)
	}
	fmt.Fprintf(os.Stderr, "bench latency: fan-out: %d subscribers ready\n", n)
	var wg sync.WaitGroup
	var resyncs atomic.Int64
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for got := 0; got < b.fanEvents; {
				msg, err := s.Recv()
				if err != nil {
					return
				}
				if msg.GetResyncRequired() != nil {
					resyncs.Add(1)
					return
				}
				c := msg.GetChange()
				id, ok := strings.CutPrefix(c.GetCauseId(), prefix)
				if c.GetPointsChanged() == nil || !ok {
					continue
				}
				k, _ := strconv.Atoi(id)
				if k < len(received[i]) && received[i][k].IsZero() {
					received[i][k] = time.Now()
					got++
				}
			}
		}()
	}
	phone := func(m int) string { return fmt.Sprintf("137%08d", m) }
	fb := *b
	fb.rate = b.fanRate
	intended, err := fb.openLoop(ctx, b.fanEvents, func(k int) {
		m := k % b.members
		ev := &mcv1.ChannelEvent{
			EventId: prefix + strconv.Itoa(k), Channel: mcv1.Channel_CHANNEL_POS, StoreId: "BENCH-1", OccurredAt: timestamppb.Now(),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone(m)}},
			Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{
				OrderId: "O-" + prefix + strconv.Itoa(k), Total: &mcv1.Money{Currency: "CNY", AmountMinor: 1000 + int64(m)}}},
		}
		v, _ := proto.Marshal(ev)
		producer.Produce(ctx, &kgo.Record{Topic: kcfg.Topics.ChannelEvents, Key: []byte(phone(m)), Value: v}, nil)
	})
	if err != nil {
		return fanoutResult{}, err
	}
	// Every stream has its events, or has been given up on after 30 s.
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
	}
	cancel()
	<-waited
	var ds []time.Duration
	missing := 0
	var last time.Time
	for i := range received {
		for k, at := range received[i] {
			if at.IsZero() {
				missing++
				continue
			}
			ds = append(ds, at.Sub(intended[k]))
			if at.After(last) {
				last = at
			}
		}
	}
	if len(ds) == 0 {
		return fanoutResult{}, fmt.Errorf("no change reached any of %d subscribers (%d resync required)", n, resyncs.Load())
	}
	fmt.Fprintf(os.Stderr, "bench latency: fan-out: %d subscribers, %d deliveries, %d missing, %d told to resync\n", n, len(ds), missing, resyncs.Load())
	return fanoutResult{n: n, sum: summarize(ds, last.Sub(intended[0])), missing: missing}, nil
}

// openLoop calls send for event i at start + i/rate, never waiting for
// earlier events, and returns the intended send times.
func (b *latencyBench) openLoop(ctx context.Context, n int, send func(i int)) ([]time.Time, error) {
	intended := make([]time.Time, n)
	start := time.Now().Add(50 * time.Millisecond)
	interval := time.Second / time.Duration(b.rate)
	for i := 0; i < n; i++ {
		intended[i] = start.Add(time.Duration(i) * interval)
		if d := time.Until(intended[i]); d > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(d):
			}
		}
		send(i)
	}
	return intended, nil
}

func (b *latencyBench) floor(ctx context.Context, kcfg kafka.Config, ktel kafka.Telemetry, producer *kafka.Client, adm *kadm.Client, topic string) (Summary, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return Summary{}, err
	}
	start := map[string]map[int32]kgo.Offset{topic: {}}
	ends.Each(func(o kadm.ListedOffset) { start[topic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	consumer, err := kafka.NewClient(kcfg, ktel, "", kgo.ConsumePartitions(start))
	if err != nil {
		return Summary{}, err
	}
	defer consumer.Close()
	received := make([]time.Time, b.events)
	var wg sync.WaitGroup
	wg.Add(1)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	go func() {
		defer wg.Done()
		for got := 0; got < b.events && cctx.Err() == nil; {
			consumer.PollFetches(cctx).EachRecord(func(r *kgo.Record) {
				i, _ := strconv.Atoi(string(r.Value))
				received[i] = time.Now()
				got++
			})
		}
	}()
	intended, err := b.openLoop(ctx, b.events, func(i int) {
		producer.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(strconv.Itoa(i % b.members)), Value: []byte(strconv.Itoa(i))}, nil)
	})
	if err != nil {
		return Summary{}, err
	}
	wg.Wait()
	if cctx.Err() != nil {
		return Summary{}, fmt.Errorf("floor records did not all arrive: %w", cctx.Err())
	}
	ds := make([]time.Duration, b.events)
	for i := range ds {
		ds[i] = received[i].Sub(intended[i])
	}
	return summarize(ds, received[len(received)-1].Sub(intended[0])), nil
}

func (b *latencyBench) platform(ctx context.Context, conn *grpc.ClientConn, kcfg kafka.Config, producer *kafka.Client, run string) (Summary, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	stream, err := mcv1.NewSyncServiceClient(conn).Subscribe(sctx, &mcv1.SubscribeRequest{})
	if err != nil {
		return Summary{}, err
	}
	if m, err := stream.Recv(); err != nil || m.GetReady() == nil {
		return Summary{}, fmt.Errorf("subscribe: %v", err)
	}
	phone := func(m int) string { return fmt.Sprintf("137%08d", m) }
	event := func(id string, m int) []byte {
		ev := &mcv1.ChannelEvent{
			EventId: id, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "BENCH-1", OccurredAt: timestamppb.Now(),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone(m)}},
			Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{
				OrderId: "O-" + id, Total: &mcv1.Money{Currency: "CNY", AmountMinor: 1000 + int64(m)}}},
		}
		v, _ := proto.Marshal(ev)
		return v
	}
	// Warm-up: create every member (and warm every connection) unmeasured.
	for m := 0; m < b.members; m++ {
		producer.Produce(ctx, &kgo.Record{Topic: kcfg.Topics.ChannelEvents, Key: []byte(phone(m)),
			Value: event(fmt.Sprintf("%s-warm-%d", run, m), m)}, nil)
	}
	for credited := 0; credited < b.members; {
		msg, err := stream.Recv()
		if err != nil {
			return Summary{}, fmt.Errorf("warm-up: %w", err)
		}
		if msg.GetChange().GetPointsChanged() != nil {
			credited++
		}
	}

	received := make([]time.Time, b.events)
	var recvErr error
	var wg sync.WaitGroup
	wg.Add(1)
	prefix := run + "-m-"
	go func() {
		defer wg.Done()
		for got := 0; got < b.events; {
			msg, err := stream.Recv()
			if err != nil {
				recvErr = err
				return
			}
			c := msg.GetChange()
			if c.GetPointsChanged() == nil || len(c.GetCauseId()) <= len(prefix) || c.GetCauseId()[:len(prefix)] != prefix {
				continue
			}
			i, _ := strconv.Atoi(c.GetCauseId()[len(prefix):])
			if received[i].IsZero() {
				received[i] = time.Now()
				got++
			}
		}
	}()
	intended, err := b.openLoop(ctx, b.events, func(i int) {
		m := i % b.members
		producer.Produce(ctx, &kgo.Record{Topic: kcfg.Topics.ChannelEvents, Key: []byte(phone(m)),
			Value: event(prefix+strconv.Itoa(i), m)}, nil)
	})
	if err != nil {
		return Summary{}, err
	}
	wg.Wait()
	if recvErr != nil {
		return Summary{}, fmt.Errorf("stream: %w", recvErr)
	}
	ds := make([]time.Duration, b.events)
	last := received[0]
	for i := range ds {
		ds[i] = received[i].Sub(intended[i])
		if received[i].After(last) {
			last = received[i]
		}
	}
	return summarize(ds, last.Sub(intended[0])), nil
}
