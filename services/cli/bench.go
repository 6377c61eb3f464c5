package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/platform"
)

func benchCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the platform against its raw floor on the configured servers",
	}
	var events, members, rate int
	latency := &cobra.Command{
		Use:   "latency",
		Short: "Time from publishing a POS event to its change on a Subscribe stream, beside a raw Kafka produce→consume round trip",
		Long: `Runs the whole platform in process on scratch topics, publishes POS
transactions open-loop at a fixed rate (latency counts from each event's
intended send time, so a queue cannot hide), and times each one until its
points change arrives on a SyncService.Subscribe stream. In the same run, at
the same rate, it times a plain produce→consume round trip on a scratch topic
of the same broker: the floor. Prints a Markdown table.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logPath := filepath.Join(os.TempDir(), "membercenter-bench.log")
			logFile, err := os.Create(logPath)
			if err != nil {
				return err
			}
			defer logFile.Close()
			e, done, err := setup(cmd.Context(), logFile)
			if err != nil {
				return err
			}
			defer done()
			b := &latencyBench{e: e, out: stdout, events: events, members: members, rate: rate}
			return b.run(cmd.Context())
		},
	}
	latency.Flags().IntVar(&events, "events", 1000, "measured events")
	latency.Flags().IntVar(&members, "members", 200, "distinct members the events belong to")
	latency.Flags().IntVar(&rate, "rate", 200, "events per second (open loop)")
	cmd.AddCommand(latency, benchResolveCmd(stdout), benchBenefitsCmd(stdout), benchTagsCmd(stdout))
	return cmd
}

type latencyBench struct {
	e                     *env
	out                   io.Writer
	events, members, rate int
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
	cfg := b.e.cfg
	run := fmt.Sprintf("bench%x", time.Now().UnixNano()&0xffffffff)
	// Scratch topics and groups: a clean, unshared pipeline for this run.
	kcfg := cfg.Kafka
	kcfg.GroupPrefix = run
	kcfg.Topics = kafka.Topics{
		ChannelEvents: run + ".channel.events.v1", MemberEvents: run + ".member.events.v1",
		MemberChanges: run + ".member.changes.v1", DLQ: run + ".dlq.v1",
	}
	floorTopic := run + ".floor.v1"
	ktel := kafka.Telemetry{Tracers: b.e.tel.Tracers, Meters: b.e.tel.Meters, Propagator: b.e.tel.Propagator, Logger: b.e.tel.Logger}
	admin, err := kafka.NewClient(kcfg, ktel, "")
	if err != nil {
		return err
	}
	defer admin.Close()
	adm := kadm.NewClient(admin.Client)
	if err := kafka.EnsureTopics(ctx, admin.Client, kcfg.Topics); err != nil {
		return err
	}
	if _, err := adm.CreateTopic(ctx, 6, 1, nil, floorTopic); err != nil {
		return err
	}
	defer func() {
		names := []string{floorTopic}
		for n := range kcfg.Topics.All() {
			names = append(names, n)
		}
		_, _ = adm.DeleteTopics(context.Background(), names...)
	}()

	if err := b.e.p.Migrate(ctx); err != nil {
		return err
	}
	pcfg := cfg
	pcfg.Kafka = kcfg
	p, err := platform.Open(ctx, pcfg, b.e.tel)
	if err != nil {
		return err
	}
	defer p.Close()
	grpcLis, _ := net.Listen("tcp", "127.0.0.1:0")
	adminLis, _ := net.Listen("tcp", "127.0.0.1:0")
	ready := make(chan struct{})
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(pctx)
	g.Go(func() error {
		return p.Run(gctx, platform.Options{Services: platform.AllServices, Stages: platform.AllStages,
			GRPC: grpcLis, Admin: adminLis, Ready: func() { close(ready) }})
	})
	select {
	case <-ready:
	case <-gctx.Done():
		return fmt.Errorf("platform did not start: %w", g.Wait())
	}

	producer, err := kafka.NewClient(kcfg, ktel, "", kgo.ProducerLinger(0))
	if err != nil {
		return err
	}
	defer producer.Close()

	floor, err := b.floor(ctx, kcfg, ktel, producer, adm, floorTopic)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	platformRes, err := b.platform(ctx, grpcLis.Addr().String(), kcfg, producer, run)
	if err != nil {
		return err
	}
	stop()
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
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
	return nil
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

func (b *latencyBench) platform(ctx context.Context, addr string, kcfg kafka.Config, producer *kafka.Client, run string) (Summary, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return Summary{}, err
	}
	defer conn.Close()
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
