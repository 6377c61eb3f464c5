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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/loadgen"
	"github.com/membercenter/membercenter/services/platform"
)

func benchPipelineCmd(stdout io.Writer) *cobra.Command {
	var scales []int
	var events int
	var seed int64
	cmd := &cobra.Command{
		Use:   "pipeline",
		Short: "Sustained end-to-end events/s of the whole pipeline on the load generator's workload, beside raw floors",
		Long: `For each number of --members, publishes --events records of the load
generator (a deterministic omnichannel retailer, malformed records included)
to scratch topics as fast as Kafka takes them, runs the whole platform in
process, and measures until every effect is in: ingest, the benefit and tag
workers' PostgreSQL effects, ClickHouse rows and the published change feed.
In the same run, on the same records: a plain franz-go consume → clickhouse-go
batch insert with no logic, and a plain PostgreSQL upsert per event (the
floors). Reports events/s, CPU seconds per 1,000 events of membercenter,
PostgreSQL, Kafka and ClickHouse, membercenter's peak RSS, consumer lag over
time, and that every malformed record ended in the dead-letter topic.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logPath := filepath.Join(os.TempDir(), "membercenter-bench-pipeline.log")
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
			fmt.Fprintf(stdout, "| members | events (malformed) | pipeline events/s | floor: consume → ClickHouse events/s | floor: PG upsert events/s | ÷ ClickHouse floor | ÷ PG floor | CPU s / 1,000 events: membercenter / PostgreSQL / Kafka / ClickHouse | membercenter peak RSS | dead letters (malformed) |\n")
			fmt.Fprintf(stdout, "|---|---|---|---|---|---|---|---|---|---|\n")
			var lags []string
			var apis []string
			for _, m := range scales {
				r, err := benchPipeline(cmd.Context(), e, m, events, seed)
				if err != nil {
					return fmt.Errorf("%d members: %w", m, err)
				}
				fmt.Fprintf(stdout, "| %s | %d (%d) | %.0f | %.0f | %.0f | %.3f× | %.3f× | %.2f / %.2f / %.2f / %.2f | %d MiB | %d (%d) |\n",
					thousands(int64(m)), r.events, r.malformed, r.rate, r.chFloor, r.pgFloor, r.rate/r.chFloor, r.rate/r.pgFloor,
					r.cpu.self, r.cpu.postgres, r.cpu.kafka, r.cpu.clickhouse, r.rssMiB, r.dlq, r.malformed)
				lags = append(lags, fmt.Sprintf("%s members: %s", thousands(int64(m)), r.lag))
				floor := r.api[0].sum
				for _, a := range r.api {
					apis = append(apis, fmt.Sprintf("| %s | %s | %.0f | %s | %s | %d | %.1f× | %.1f× |", thousands(int64(m)), a.rpc, a.achieved,
						ms(a.sum.Median), ms(a.sum.P99), a.errs, float64(a.sum.Median)/float64(floor.Median), float64(a.sum.P99)/float64(floor.P99)))
				}
			}
			fmt.Fprintf(stdout, "\nConsumer lag (records behind, summed over partitions) sampled every 2 s while the pipeline drained, per stage ingest / benefits / tags / sink:\n\n")
			for _, l := range lags {
				fmt.Fprintf(stdout, "- %s\n", l)
			}
			fmt.Fprintf(stdout, "\nAPIs over each member count after the drain, open loop at %d req/s for %s each (latency from the intended send time), 200 of the generator's shoppers, beside grpc.health.v1.Health/Check on the same server (the floor):\n\n", apiRate, apiDuration)
			fmt.Fprintf(stdout, "| members | RPC | achieved req/s | p50 ms | p99 ms | errors | p50 ÷ floor | p99 ÷ floor |\n|---|---|---|---|---|---|---|---|\n")
			for _, a := range apis {
				fmt.Fprintln(stdout, a)
			}
			fmt.Fprintf(stdout, "\nGOMAXPROCS %d; membercenter runs every stage and service in one process; the load generator publishes before the pipeline starts, so the pipeline drains a backlog at its own pace.\n", runtime.GOMAXPROCS(0))
			return nil
		},
	}
	cmd.Flags().IntSliceVar(&scales, "members", []int{10_000, 100_000, 1_000_000}, "member counts (one row each)")
	cmd.Flags().IntVar(&events, "events", 10_000, "records per row")
	cmd.Flags().Int64Var(&seed, "seed", 1, "load generator seed")
	return cmd
}

const (
	apiRate     = 300
	apiDuration = 5 * time.Second
)

type cpuSeconds struct{ self, postgres, kafka, clickhouse float64 }

type apiRow struct {
	rpc      string
	sum      Summary
	errs     int
	achieved float64
}

type pipelineResult struct {
	api                    []apiRow
	events, malformed, dlq int
	rate, chFloor, pgFloor float64
	cpu                    cpuSeconds
	rssMiB                 int
	lag                    string
}

func benchPipeline(ctx context.Context, e *env, members, n int, seed int64) (pipelineResult, error) {
	var res pipelineResult
	run := fmt.Sprintf("bp%x", time.Now().UnixNano()&0xffffff)
	kcfg := e.cfg.Kafka
	kcfg.GroupPrefix = run
	kcfg.Topics = kafka.Topics{ChannelEvents: run + ".channel.events.v1", MemberEvents: run + ".member.events.v1",
		MemberChanges: run + ".member.changes.v1", DLQ: run + ".dlq.v1"}
	ktel := kafka.Telemetry{Tracers: e.tel.Tracers, Meters: e.tel.Meters, Propagator: e.tel.Propagator, Logger: e.tel.Logger}
	admin, err := kafka.NewClient(kcfg, ktel, "")
	if err != nil {
		return res, err
	}
	defer admin.Close()
	adm := kadm.NewClient(admin.Client)
	if err := kafka.EnsureTopics(ctx, admin.Client, kcfg.Topics); err != nil {
		return res, err
	}
	defer func() {
		var names []string
		for t := range kcfg.Topics.All() {
			names = append(names, t)
		}
		_, _ = adm.DeleteTopics(context.Background(), names...)
	}()
	if err := e.p.Migrate(ctx); err != nil {
		return res, err
	}

	// The workload: one seed, the member count of the row.
	g := loadgen.New(loadgen.Config{Seed: seed, Members: members, Days: 90, Events: n, IDPrefix: run, CouponRate: -1})
	producer, err := kafka.NewClient(kcfg, ktel, "", kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		return res, err
	}
	defer producer.Close()
	records := make([]loadgen.Record, n)
	for i := range records {
		records[i] = g.Next()
		if records[i].Malformed != "" {
			res.malformed++
		}
	}
	res.events = n
	for _, r := range records {
		producer.Produce(ctx, &kgo.Record{Topic: kcfg.Topics.ChannelEvents, Key: r.Key, Value: r.Value}, nil)
	}
	if err := producer.Flush(ctx); err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "bench pipeline: %d members: %d records published (%d malformed)\n", members, n, res.malformed)

	// Floor 1: plain consume → ClickHouse batch insert of the same records.
	if res.chFloor, err = chFloor(ctx, e, kcfg, ktel, n); err != nil {
		return res, fmt.Errorf("ClickHouse floor: %w", err)
	}
	// Floor 2: one PostgreSQL upsert per record.
	if res.pgFloor, err = pgFloor(ctx, e, records, run); err != nil {
		return res, fmt.Errorf("PostgreSQL floor: %w", err)
	}

	// The pipeline drains the backlog.
	pcfg := e.cfg
	pcfg.Kafka = kcfg
	p, err := platform.Open(ctx, pcfg, e.tel)
	if err != nil {
		return res, err
	}
	defer p.Close()
	grpcLis, _ := net.Listen("tcp", "127.0.0.1:0")
	adminLis, _ := net.Listen("tcp", "127.0.0.1:0")
	chConn, err := e.p.OpenClickHouse(ctx)
	if err != nil {
		return res, err
	}
	defer chConn.Close()
	before := sampleCPU()
	start := time.Now()
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	eg, gctx := errgroup.WithContext(pctx)
	eg.Go(func() error {
		return p.Run(gctx, platform.Options{Services: platform.AllServices, Stages: platform.AllStages, GRPC: grpcLis, Admin: adminLis})
	})
	var lagLine []string
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	deadline := time.After(time.Minute + time.Duration(n)*20*time.Millisecond)
	like := run + "-%"
	for {
		var ingested, benefit, tagged, unpublished int
		err := p.Pool().QueryRow(ctx, `SELECT
			(SELECT count(*) FROM ingested_events WHERE event_id LIKE $1),
			(SELECT count(*) FROM processed_events WHERE consumer = 'benefits' AND event_id LIKE $1),
			(SELECT count(*) FROM processed_events WHERE consumer = 'tags' AND event_id LIKE $1),
			(SELECT count(*) FROM outbox WHERE published_at IS NULL)`, like).Scan(&ingested, &benefit, &tagged, &unpublished)
		if err != nil {
			return res, err
		}
		dlq := topicCount(ctx, adm, kcfg.Topics.DLQ)
		var facts uint64
		if err := chConn.QueryRow(ctx, `SELECT count() FROM member_events WHERE event_id LIKE ?`, like).Scan(&facts); err != nil {
			return res, fmt.Errorf("count ClickHouse rows: %w", err)
		}
		// Done: every record ingested or dead-lettered, every stage's group
		// caught up (offsets are committed after effects are durable), the
		// tag worker and ClickHouse have every ingested event, and the
		// outbox is published. (The benefit worker marks only the events
		// it acts on.)
		if ingested+dlq >= n && tagged >= ingested && int(facts) >= ingested && unpublished == 0 && benefit > 0 &&
			caughtUp(ctx, adm, kcfg) {
			res.dlq = dlq
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-gctx.Done():
			return res, fmt.Errorf("platform stopped: %w", eg.Wait())
		case <-deadline:
			return res, fmt.Errorf("pipeline did not finish: ingested %d, benefits %d, tags %d, ClickHouse %d, dead letters %d of %d", ingested, benefit, tagged, facts, dlq, n)
		case <-tick.C:
			lagLine = append(lagLine, stageLags(ctx, adm, kcfg))
		}
	}
	elapsed := time.Since(start)
	after := sampleCPU()
	res.rate = float64(n) / elapsed.Seconds()
	per := float64(n) / 1000
	res.cpu = cpuSeconds{
		self:       float64(after.self-before.self) / userHZ / per,
		postgres:   float64(after.postgres-before.postgres) / userHZ / per,
		kafka:      float64(after.kafka-before.kafka) / userHZ / per,
		clickhouse: float64(after.clickhouse-before.clickhouse) / userHZ / per,
	}
	res.rssMiB = peakRSSMiB()
	// The APIs over this many members, at a fixed rate, beside the no-op.
	conn, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer conn.Close()
	shoppers, err := resolveShoppers(ctx, conn, g, 200, members, run+"-api")
	if err != nil {
		return res, err
	}
	calls := apiCalls(conn, g, shoppers, run+"-api", members)
	for _, rpc := range []string{"health", "resolve", "getprofile", "quote", "commit"} {
		lat, errs, achieved := openLoopCalls(ctx, apiRate, apiDuration, calls[rpc])
		res.api = append(res.api, apiRow{rpc: rpc, sum: summarize(lat, apiDuration), errs: errs, achieved: achieved})
	}
	res.lag = strings.Join(lagLine, " → ")
	if res.lag == "" {
		res.lag = "(drained within the first sample)"
	}
	stop()
	if err := eg.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "bench pipeline: %d members: %.0f events/s in %s, %d dead letters\n", members, res.rate, elapsed.Round(time.Millisecond), res.dlq)
	return res, nil
}

// chFloor consumes the channel topic with a plain client and batch-inserts
// every record into a scratch ClickHouse table, no logic.
func chFloor(ctx context.Context, e *env, kcfg kafka.Config, ktel kafka.Telemetry, n int) (float64, error) {
	conn, err := e.p.OpenClickHouse(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	table := "floor_" + strings.ReplaceAll(kcfg.GroupPrefix, "-", "_")
	if err := conn.Exec(ctx, `CREATE TABLE `+table+` (k String, v String, p Int32, o Int64) ENGINE = MergeTree ORDER BY (p, o)`); err != nil {
		return 0, err
	}
	defer func() { _ = conn.Exec(context.Background(), `DROP TABLE IF EXISTS `+table) }()
	cl, err := kafka.NewClient(kcfg, ktel, "", kgo.ConsumeTopics(kcfg.Topics.ChannelEvents), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	start := time.Now()
	for got := 0; got < n; {
		fs := cl.PollRecords(ctx, 5000)
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		b, err := conn.PrepareBatch(ctx, `INSERT INTO `+table+` (k, v, p, o)`)
		if err != nil {
			return 0, err
		}
		fs.EachRecord(func(r *kgo.Record) {
			_ = b.Append(string(r.Key), string(r.Value), r.Partition, r.Offset)
			got++
		})
		if err := b.Send(); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// pgFloor upserts one row per record into a scratch table, 4 at a time.
func pgFloor(ctx context.Context, e *env, records []loadgen.Record, run string) (float64, error) {
	pool := e.p.Pool()
	table := "floor_" + run
	if _, err := pool.Exec(ctx, `CREATE UNLOGGED TABLE `+table+` (k text PRIMARY KEY, n bigint NOT NULL, v bytea)`); err != nil {
		return 0, err
	}
	defer func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table) }()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(records); i += 4 {
				if _, err := pool.Exec(ctx, `INSERT INTO `+table+` (k, n, v) VALUES ($1, 1, $2) ON CONFLICT (k) DO UPDATE SET n = `+table+`.n + 1, v = EXCLUDED.v`,
					string(records[i].Key), records[i].Value); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(len(records)) / time.Since(start).Seconds(), nil
}

func topicCount(ctx context.Context, adm *kadm.Client, topic string) int {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0
	}
	n := 0
	ends.Each(func(o kadm.ListedOffset) { n += int(o.Offset) })
	return n
}

// caughtUp says whether every stage's group has committed everything: a
// consumer of a transactional topic (member.events.v1, written by ingest in
// Kafka transactions) stays one offset behind per partition, the commit
// marker, which it never receives.
func caughtUp(ctx context.Context, adm *kadm.Client, kcfg kafka.Config) bool {
	ends, err := adm.ListEndOffsets(ctx, kcfg.Topics.MemberEvents)
	if err != nil {
		return false
	}
	markers := int64(len(ends.Offsets()[kcfg.Topics.MemberEvents]))
	for i, l := range strings.Split(stageLags(ctx, adm, kcfg), "/") {
		v, err := strconv.ParseInt(l, 10, 64)
		if err != nil || (i == 0 && v != 0) || v > markers {
			return false
		}
	}
	return true
}

// stageLags sums each stage group's lag.
func stageLags(ctx context.Context, adm *kadm.Client, kcfg kafka.Config) string {
	stages := []string{"ingest", "benefits", "tags", "sink"}
	groups := make([]string, len(stages))
	for i, s := range stages {
		groups[i] = kcfg.Group(s)
	}
	lags, err := adm.Lag(ctx, groups...)
	if err != nil {
		return "?"
	}
	sum := map[string]int64{}
	lags.Each(func(l kadm.DescribedGroupLag) {
		for _, parts := range l.Lag {
			for _, ml := range parts {
				if ml.Lag > 0 {
					sum[l.Group] += ml.Lag
				}
			}
		}
	})
	out := make([]string, len(groups))
	for i, g := range groups {
		out[i] = strconv.FormatInt(sum[g], 10)
	}
	return strings.Join(out, "/")
}

// peakRSSMiB is this process's peak resident set (VmHWM).
func peakRSSMiB() int {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb / 1024
		}
	}
	return 0
}
