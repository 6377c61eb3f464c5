package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chbench"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"

	"github.com/membercenter/membercenter/bench/loadgen"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/sink"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/members"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
)

func pipelineCmd(stdout io.Writer) *cobra.Command {
	var scales []int
	var o pipelineOpts
	cmd := &cobra.Command{
		Use:   "pipeline",
		Short: "Sustained end-to-end events/s, freshness and API latency of the whole pipeline at each member count, beside raw floors",
		Long: `For each number of --members, a PostgreSQL database of that many members
(membercenter_pipeline_<members>, each of the load generator's shoppers
preloaded with its phone once, as a retailer's existing member base, and
reused by later runs) is copied afresh (membercenter_pipeline_<members>_run),
and the whole platform runs in process over the copy, so that what a run
adds is not carried into the next. Then:

- throughput: --events records of the load generator (malformed records
  included) are published to scratch topics and drained until every effect
  is in: ingest, the benefit and tag workers' PostgreSQL effects, ClickHouse
  rows and the published change feed; beside the floors on the same
  records: a plain franz-go consume → clickhouse-go batch insert, a plain
  PostgreSQL upsert per record, and two that do a stage's durable,
  exactly-once work in batches (bench/floor): one PostgreSQL transaction
  per polled partition batch (processed ids, 2 KB member states locked
  once, a multi-row upsert, a ledger and an outbox row per event, Kafka
  offsets committed after), and partition-owned states in memory written
  behind every 100 ms with the partition's offset; with CPU seconds per
  1,000 events and peak memory of membercenter, PostgreSQL, Kafka and
  ClickHouse for each, consumer lag over time, and every malformed record
  found in the dead-letter topic;
- freshness: --fresh-events POS purchases of preloaded shoppers, open loop
  at --fresh-rate, timed from their intended send time to their points
  change on a Subscribe stream, their labels in GetProfile and in
  ClickHouse's member_profiles, beside a Kafka produce → consume round trip;
  each shopper first makes one purchase, unmeasured, so that the timed one
  is of a member with labels (--fresh-first times that first purchase);
- API: Resolve, GetProfile, Quote and Commit open loop at a fixed rate,
  beside a no-op Health/Check on the same server.

With --cpuprofile DIR, membercenter's CPU profile of each drain is written
there and summarised by package, beside the PostgreSQL statements sampled
while it ran; so are the process's allocations (the heap profile at the
drain's start, pipeline-allocs-<members>.base.pprof, and at its end:
go tool pprof -sample_index=alloc_space -base … shows the drain's). With --trace, the platform records every span (the cost of
tracing everything; without it, as a process with no exporter, none).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, logPath, done, err := setupLogged(cmd.Context(), "membercenter-bench-pipeline")
			if err != nil {
				return err
			}
			defer done()
			o.logPath = logPath
			if o.trace {
				e.Tel.AddSpanProcessor(sdktrace.NewBatchSpanProcessor(discardSpans{}))
			}
			if o.profileDir != "" {
				if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
					return err
				}
			}
			var rs []pipelineResult
			for _, m := range scales {
				r, err := benchPipeline(cmd.Context(), e, m, o)
				if err != nil {
					return fmt.Errorf("%d members: %w", m, err)
				}
				rs = append(rs, r)
			}
			reportPipeline(stdout, rs, o)
			return nil
		},
	}
	cmd.Flags().IntSliceVar(&scales, "members", []int{10_000, 100_000, 1_000_000}, "member counts (one scenario each)")
	cmd.Flags().IntVar(&o.events, "events", 10_000, "records drained per scenario")
	cmd.Flags().Int64Var(&o.seed, "seed", 1, "load generator seed")
	cmd.Flags().IntVar(&o.freshEvents, "fresh-events", 300, "purchases timed for freshness per scenario")
	cmd.Flags().IntVar(&o.freshRate, "fresh-rate", 50, "purchases per second in the freshness run (open loop)")
	cmd.Flags().BoolVar(&o.freshFirst, "fresh-first", false, "time each shopper's first purchase (a preloaded member without labels: every label gets its first value) instead of giving each one purchase first, unmeasured, as an existing member with labels")
	cmd.Flags().StringVar(&o.profileDir, "cpuprofile", "", "directory for membercenter's CPU profile of each drain (pipeline-<members>.pprof) and of each freshness run's timed purchases (fresh-<members>.pprof)")
	cmd.Flags().BoolVar(&o.trace, "trace", false, "record every span of the platform, as a process exporting to a collector with the default sampler does (to an exporter that discards them)")
	return cmd
}

type pipelineOpts struct {
	logPath                        string // the platform's log
	events, freshEvents, freshRate int
	freshFirst                     bool
	seed                           int64
	profileDir                     string
	trace                          bool
}

const (
	apiRate     = 300
	apiDuration = 5 * time.Second
	// apiShoppers are the shoppers the API scenarios use; the freshness
	// run picks among the others.
	apiShoppers = 200
	// pipelinePreloadCause marks the identifiers preloaded into a scenario's
	// database.
	pipelinePreloadCause = "bench-pipeline-preload"
)

type cpuSeconds struct{ self, postgres, kafka, clickhouse float64 }

func (c cpuSeconds) total() float64 { return c.self + c.postgres + c.kafka + c.clickhouse }

type apiRow struct {
	rpc      string
	sum      Summary
	errs     int
	achieved float64
}

type pipelineResult struct {
	members, dbMembers int
	preload            preloadResult
	// Events ingested into the database before the measured pass, and the
	// unmeasured warm-up pass's drain time when the database was new.
	history int
	warmUp  time.Duration
	// The members a day's start (or a window's end) had left due for the
	// sweeper when the run began, and how long a platform took to bring
	// them up to date, unmeasured.
	due               int
	catchUp           time.Duration
	events, malformed int
	// Dead letters: the malformed records found in the dead-letter topic,
	// and any other record found there.
	dlqMalformed, dlqOther int
	rate, chFloor, pgFloor float64
	drain                  time.Duration
	// Per 1,000 events: the pipeline's drain, and the two plain floors
	// together.
	cpu, floorCPU cpuSeconds
	// The exactly-once floors, each with its own CPU.
	eo eoFloors
	// Peak memory over the scenario, and after the floors ran.
	rss, floorRSS rssMiB
	lag           string
	fresh         freshResult
	api           []apiRow
	profile       string // membercenter's CPU by package (with --cpuprofile)
	pgBusy        string // PostgreSQL statements running during the drain
	pgRunning     float64
}

// pipelineRun is one scenario: its scratch topics, its database and the
// platform over them.
type pipelineRun struct {
	e        *platformtest.Env
	o        pipelineOpts
	members  int
	run      string
	url      string
	kcfg     kafka.Config
	ktel     kafka.Telemetry
	adm      *kadm.Client
	producer *kafka.Client
	p        *platform.Platform
	g        *loadgen.Generator
	// day is the midnight in Shanghai the measured pass's workload ends
	// at, taken once per run (a run that crosses midnight keeps its day);
	// behind is how many days before it the span of g's workload ends: 0
	// for the measured pass, 1 for the warm-up's history.
	day    time.Time
	behind int
	ch     driver.Conn
	chcfg  clickhouse.Config // the scenario's ClickHouse database
	conn   *grpc.ClientConn
	admin  string // the running platform's admin listener (/metrics)
	peak   rssMiB
}

func pipelineLogf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench pipeline: "+format+"\n", args...)
}

func benchPipeline(ctx context.Context, e *platformtest.Env, members int, o pipelineOpts) (pipelineResult, error) {
	res := pipelineResult{members: members, events: o.events}
	resetPeakRSS()
	r := &pipelineRun{e: e, o: o, members: members, run: fmt.Sprintf("bp%x", time.Now().UnixNano()&0xffffff),
		ktel: e.Kafka(), day: loadgen.DayStart(time.Now(), 0)}
	floorTopic := r.run + ".floor.v1"
	closeTopics, err := r.openTopics(ctx, floorTopic)
	if err != nil {
		return res, err
	}
	defer closeTopics()

	// ClickHouse as fresh as the run's PostgreSQL copy below: a database of
	// the scenario's own, dropped and created anew. ClickHouse keeps every
	// run's rows, while the copy's member ids and label versions repeat
	// from run to run: in a shared database an earlier run's profile row
	// stood for a new one, and member_profiles (a ReplacingMergeTree by
	// version) merged a run's row away under an earlier run's higher
	// version.
	r.chcfg = e.Config.ClickHouse
	r.chcfg.Database = fmt.Sprintf("%s_pipeline_%d", r.chcfg.Database, members)
	if err := freshCHDatabase(ctx, r.chcfg); err != nil {
		return res, err
	}

	// The retailer's database: this many members, preloaded once.
	db := fmt.Sprintf("membercenter_pipeline_%d", members)
	if r.url, err = pgbench.DatabaseURL(e.Config.Postgres.URL, db); err != nil {
		return res, err
	}
	r.newGenerator()
	defer func() { // the platform open at the end
		if r.p != nil {
			r.p.Close()
		}
	}()
	if res.preload, err = r.openTemplate(ctx, db); err != nil {
		return res, err
	}
	// A database built before 2026-12-08 holds the history of the day it
	// was built (see warm): built anew, with the preload alone.
	if history, err := pgbench.CountIngested(ctx, r.p.Pool()); err != nil {
		return res, err
	} else if history > 0 {
		pipelineLogf("%s holds a history of %d events from the day it was built: building it anew with the preload alone", db, history)
		r.p.Close()
		if err := pgbench.DropDatabase(ctx, e.P.Pool(), db); err != nil {
			return res, err
		}
		if res.preload, err = r.openTemplate(ctx, db); err != nil {
			return res, err
		}
	}
	if r.ch, err = clickhouse.Open(ctx, r.chcfg); err != nil {
		return res, err
	}
	defer r.ch.Close()

	// A reused database changed by hand since it was built (an index
	// dropped for an experiment) would measure what the code does not ship.
	if err := pgbench.CheckSchema(ctx, e.P.Pool(), e.Config.Postgres.URL, r.p.Pool(), db+"_schema"); err != nil {
		return res, fmt.Errorf("%s: %w", db, err)
	}

	// The measured run works on a copy of the database, made anew each
	// time: what the run adds (its history and 20,000 events to the same
	// shoppers, whose states and open lots would grow run after run) is
	// not carried into the next.
	r.p.Close()
	runDB := db + "_run"
	if err := pgbench.CopyDatabase(ctx, e.P.Pool(), db, runDB); err != nil {
		return res, err
	}
	if r.url, err = pgbench.DatabaseURL(e.Config.Postgres.URL, runDB); err != nil {
		return res, err
	}
	if err := r.openPlatform(ctx); err != nil {
		return res, err
	}

	// A retailer's running platform meets members with a history: the
	// copy first drains one pass of the workload of the day before,
	// unmeasured (see warm).
	if res.warmUp, err = r.warm(ctx); err != nil {
		return res, fmt.Errorf("warm-up pass: %w", err)
	}
	if res.history, err = pgbench.CountIngested(ctx, r.p.Pool()); err != nil {
		return res, err
	}
	// The history's rows settled, as a running platform's are: vacuumed
	// (hint bits set, dead versions gone) and analysed, so that the drain
	// does not pay for the warm-up's first reads and autovacuum.
	if err := pgbench.Analyze(ctx, r.p.Pool(), true); err != nil {
		return res, fmt.Errorf("vacuum the history: %w", err)
	}

	// Labels that change with the clock alone (a day began, a window
	// ended) are recomputed by a running platform's sweeper. A day may
	// have begun during the warm-up (at 16:00 UTC, midnight in Shanghai):
	// a run that finds members due first lets a platform bring them up to
	// date with no new events, unmeasured, so that the drain measures the
	// events, not the day's recompute.
	if res.due, err = pgbench.CountDue(ctx, r.p.Pool(), time.Now()); err != nil {
		return res, err
	}
	if res.due > 0 {
		if res.catchUp, err = r.sweepDue(ctx); err != nil {
			return res, fmt.Errorf("bring the due members up to date: %w", err)
		}
	}

	// The workload, published before anything consumes it.
	records, err := r.publish(ctx)
	if r.producer != nil {
		defer r.producer.Close()
	}
	if err != nil {
		return res, err
	}
	for _, rec := range records {
		if rec.Malformed != "" {
			res.malformed++
		}
	}
	pipelineLogf("%d members: %d records published (%d malformed)", members, o.events, res.malformed)

	// The floors, same records, same servers: a plain consume → ClickHouse
	// batch insert, and one PostgreSQL upsert per record.
	per := float64(o.events) / 1000
	before := sampleCPU()
	if res.chFloor, err = chFloor(ctx, e, r.kcfg, r.ktel, o.events); err != nil {
		return res, fmt.Errorf("ClickHouse floor: %w", err)
	}
	if res.pgFloor, err = pgFloor(ctx, r.p.Pool(), records, r.run); err != nil {
		return res, fmt.Errorf("PostgreSQL floor: %w", err)
	}
	res.floorCPU = cpuPer(before, sampleCPU(), per)
	// The exactly-once floors (issue 14), same records: the durable work
	// of a stage, batched, each with its own CPU.
	if res.eo, err = r.runEOFloors(ctx, records); err != nil {
		return res, err
	}
	res.floorRSS = sampleRSS()

	// The pipeline drains the backlog.
	stopCPU, err := startCPUProfile(r.profilePath())
	if err != nil {
		return res, err
	}
	stopAllocs, err := startAllocProfile(r.profileOf("pipeline-allocs"))
	if err != nil {
		stopCPU()
		return res, err
	}
	stopProfile := func() { stopCPU(); stopAllocs() }
	sessions := sampleSessions(r.url)
	before = sampleCPU()
	start := time.Now()
	run, err := r.start(ctx)
	if err != nil {
		stopProfile()
		sessions.stop()
		return res, err
	}
	defer run.close()
	d, err := r.drain(ctx, run)
	if err != nil {
		stopProfile()
		sessions.stop()
		return res, err
	}
	res.drain = d.last.Sub(start)
	keys, err := r.p.NewIdentity(changes.Writer{}) // only its PII keys, to open the letters
	if err != nil {
		stopProfile()
		sessions.stop()
		return res, err
	}
	if res.dlqMalformed, res.dlqOther, err = run.letters.match(records, keys.PII()); err != nil {
		stopProfile()
		sessions.stop()
		return res, fmt.Errorf("dead letters: %w", err)
	}
	res.cpu = cpuPer(before, sampleCPU(), per)
	stopProfile()
	st := sessions.stop()
	res.pgBusy, res.pgRunning = topStatements(st.busy, 5), st.running
	res.rate = float64(o.events) / res.drain.Seconds()
	res.lag = strings.Join(d.lag, " → ")
	if res.lag == "" {
		res.lag = "(drained within the first sample)"
	}
	if path := r.profilePath(); path != "" {
		if res.profile, err = profileByPackage(path, 10); err != nil {
			return res, fmt.Errorf("CPU profile: %w", err)
		}
	}
	pipelineLogf("%d members: %.0f events/s in %s (the first effect %s after the platform's start), %d of %d malformed records dead-lettered, %d other dead letters",
		members, res.rate, res.drain.Round(time.Millisecond), d.first.Sub(start).Round(time.Millisecond), res.dlqMalformed, res.malformed, res.dlqOther)

	r.conn, r.admin = run.p.Conn, run.p.Admin
	// Freshness over this many members, and where its time went by the
	// platform's own histograms.
	if res.fresh, err = r.freshness(ctx, floorTopic); err != nil {
		return res, fmt.Errorf("freshness: %w", err)
	}
	r.sampleRSS()
	// The APIs over this many members, at a fixed rate, beside the no-op.
	shoppers, err := resolveShoppers(ctx, r.conn, r.g, apiShoppers, members, r.run+"-api")
	if err != nil {
		return res, err
	}
	calls := apiCalls(r.conn, r.g, shoppers, r.run+"-api", members)
	for _, rpc := range []string{"health", "resolve", "getprofile", "quote", "commit"} {
		lat, errs, achieved := openLoopCalls(ctx, apiRate, apiDuration, calls[rpc])
		res.api = append(res.api, apiRow{rpc: rpc, sum: summarize(lat, apiDuration), errs: errs, achieved: achieved})
	}
	r.sampleRSS()
	res.rss = r.peak
	res.rss.self = max(res.rss.self, peakRSSMiB())
	if res.dbMembers, err = pgbench.CountUnmerged(ctx, r.p.Pool()); err != nil {
		return res, err
	}
	return res, run.close()
}

// openTopics creates the run's scratch topics (and extra ones) and returns
// their removal.
func (r *pipelineRun) openTopics(ctx context.Context, extra ...string) (func(), error) {
	r.kcfg = scratchKafka(r.e.Config.Kafka, r.run)
	topics, err := openScratch(ctx, r.kcfg, r.ktel, 1, extra...)
	if err != nil {
		return nil, err
	}
	r.adm = topics.adm
	return func() { topics.close() }, nil
}

// openPlatform builds the platform over the run's database and topics.
func (r *pipelineRun) openPlatform(ctx context.Context) error {
	pcfg := r.e.Config
	pcfg.Postgres.URL = r.url
	pcfg.Kafka = r.kcfg
	pcfg.ClickHouse = r.chcfg
	var err error
	r.p, err = platform.Open(ctx, pcfg, r.e.Tel)
	return err
}

// open builds the platform over the run's database and topics, and the
// run's workload generator.
func (r *pipelineRun) open(ctx context.Context) error {
	if err := r.openPlatform(ctx); err != nil {
		return err
	}
	r.newGenerator()
	return nil
}

// newGenerator makes the run's workload generator (its span ends r.behind
// days before r.day).
func (r *pipelineRun) newGenerator() {
	start := r.day.AddDate(0, 0, -pipelineDays-r.behind)
	r.g = loadgen.New(loadgen.Config{Seed: r.o.seed, Members: r.members, Days: pipelineDays, Start: start,
		Events: r.o.events, IDPrefix: r.run, CouponRate: -1})
}

// openTemplate creates the scenario's database db unless it exists, opens
// the platform over it (r.url), migrates it and preloads its members.
func (r *pipelineRun) openTemplate(ctx context.Context, db string) (preloadResult, error) {
	if err := pgbench.CreateDatabase(ctx, r.e.P.Pool(), db); err != nil {
		return preloadResult{}, err
	}
	if err := r.openPlatform(ctx); err != nil {
		return preloadResult{}, err
	}
	if err := r.p.Migrate(ctx); err != nil {
		return preloadResult{}, err
	}
	res, err := r.preload(ctx, db)
	if err != nil {
		return res, fmt.Errorf("preload: %w", err)
	}
	return res, nil
}

// pipelineDays is the span of the simulated clock of the pipeline bench's
// workload. It ends at a midnight in Asia/Shanghai (loadgen.DayStart), so
// that the runs of one day meet the same records: before, on 2026-12-06,
// the runs after 23:30 UTC created 1,360 more new members and halved the
// drain's events/s against the runs just before, with the same binary.
const pipelineDays = 90

// publish generates the run's records and publishes them to its channel
// topic.
func (r *pipelineRun) publish(ctx context.Context) ([]loadgen.Record, error) {
	var err error
	if r.producer, err = kafka.NewClient(r.kcfg, r.ktel, "", kgo.ProducerBatchMaxBytes(1<<20)); err != nil {
		return nil, err
	}
	records := make([]loadgen.Record, r.o.events)
	for i := range records {
		records[i] = r.g.Next()
		r.producer.Produce(ctx, &kgo.Record{Topic: r.kcfg.Topics.ChannelEvents, Key: records[i].Key, Value: records[i].Value}, nil)
	}
	return records, r.producer.Flush(ctx)
}

// scratch is a run over r's database with scratch topics of its own (the
// run's id and suffix), for an unmeasured pass; done closes it.
func (r *pipelineRun) scratch(ctx context.Context, suffix string, behind int) (w *pipelineRun, done func(), err error) {
	w = &pipelineRun{e: r.e, o: r.o, members: r.members, run: r.run + suffix, url: r.url, ktel: r.ktel, ch: r.ch, chcfg: r.chcfg, day: r.day, behind: behind}
	closeTopics, err := w.openTopics(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := w.open(ctx); err != nil {
		closeTopics()
		return nil, nil, err
	}
	return w, func() {
		w.p.Close()
		closeTopics()
	}, nil
}

// warm drains one pass of the workload of the day before (its span ends a
// day earlier) on its own scratch topics and platform, unmeasured: the
// members' history. The same shoppers buy what they bought, a day earlier
// in the week, under other event ids. Until 2026-12-08 the history was the
// workload of the day the database was built, drained into it once: a run
// of that day replayed its history at the same instants, which moved few
// labels (106,337 label changes for 20,000 events at 100,000 members),
// while a run of any later day moved twelve times as many (1,253,316) and
// drained at half the rate with the same binary.
func (r *pipelineRun) warm(ctx context.Context) (time.Duration, error) {
	w, closeW, err := r.scratch(ctx, "w", 1)
	if err != nil {
		return 0, err
	}
	defer closeW()
	_, err = w.publish(ctx)
	if w.producer != nil {
		defer w.producer.Close()
	}
	if err != nil {
		return 0, err
	}
	pipelineLogf("%d members: draining the day before's %d records unmeasured first", r.members, r.o.events)
	start := time.Now()
	run, err := w.start(ctx)
	if err != nil {
		return 0, err
	}
	defer run.close()
	d, err := w.drain(ctx, run)
	if err != nil {
		return 0, err
	}
	return d.last.Sub(start), run.close()
}

// stallAfter is how long a wait for the platform to finish some work (the
// sweep, the freshness run's first purchases) goes on while what is left
// does not fall below its lowest, before it gives up and names the
// platform's log.
const stallAfter = 3 * time.Minute

// progress follows what is left in such a wait: the least seen, and when
// it last fell.
type progress struct {
	least int
	fell  time.Time
}

func newProgress() progress { return progress{least: -1, fell: time.Now()} }

// stalled notes left and says whether it has stayed above its least for
// stallAfter.
func (p *progress) stalled(left int) bool {
	if p.least < 0 || left < p.least {
		p.least, p.fell = left, time.Now()
	}
	return time.Since(p.fell) > stallAfter
}

// sweepDue runs a platform over scratch topics, with no events, until no
// member is due for the sweeper and every change it wrote is published.
func (r *pipelineRun) sweepDue(ctx context.Context) (time.Duration, error) {
	w, closeW, err := r.scratch(ctx, "s", 0)
	if err != nil {
		return 0, err
	}
	defer closeW()
	pipelineLogf("%d members: bringing the members due for the sweeper up to date first, unmeasured", r.members)
	start := time.Now()
	run, err := w.start(ctx)
	if err != nil {
		return 0, err
	}
	defer run.close()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.After(30 * time.Minute)
	// A platform that cannot sweep (its errors are in its log, not here)
	// is reported once nothing has moved for stallAfter, not after the
	// deadline.
	left, said := newProgress(), time.Now()
	for {
		due, err := pgbench.CountDue(ctx, w.p.Pool(), time.Now())
		if err != nil {
			return 0, err
		}
		unpublished, err := pgbench.CountUnpublished(ctx, w.p.Pool())
		if err != nil {
			return 0, err
		}
		if due == 0 && unpublished == 0 {
			took := time.Since(start)
			return took, run.close()
		}
		if left.stalled(due + unpublished) {
			return 0, fmt.Errorf("the sweep made no progress for %s: %d members due, %d changes unpublished (the platform's log, %s, says why)", stallAfter, due, unpublished, r.o.logPath)
		}
		if time.Since(said) > 30*time.Second {
			pipelineLogf("%d members: %d members due, %d changes unpublished", r.members, due, unpublished)
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-run.p.Stopped():
			return 0, fmt.Errorf("platform stopped: %w", run.close())
		case <-deadline:
			return 0, fmt.Errorf("%d members still due after 30 minutes", due)
		case <-tick.C:
		}
	}
}

// running is a run's platform, started over its database and topics, with
// the watch of its dead-letter topic.
type running struct {
	p       *platformtest.Running
	letters *dlqWatch
	once    sync.Once
	// effects is what the process's effect counters held before the
	// platform started (effectsSoFar): they count every platform the
	// process ran.
	effects float64
}

// start runs every stage and service of the run's platform.
func (r *pipelineRun) start(ctx context.Context) (*running, error) {
	effects, err := effectsSoFar(r.e.Tel.Metrics)
	if err != nil {
		return nil, err
	}
	letters, err := watchDLQ(ctx, r.kcfg, r.ktel)
	if err != nil {
		return nil, err
	}
	p, err := platformtest.Start(ctx, r.p, platform.Options{Services: platform.AllServices, Stages: platform.AllStages})
	if err != nil {
		letters.close()
		return nil, err
	}
	return &running{p: p, letters: letters, effects: effects}, nil
}

// close stops the platform and the watch and says why the platform ended
// if not because it was stopped.
func (p *running) close() error {
	p.once.Do(p.letters.close)
	return p.p.Stop()
}

func (r *pipelineRun) profilePath() string { return r.profileOf("pipeline") }

// startAllocProfile writes the process's heap profile (allocations since
// it started) to path with ".pprof" replaced by ".base.pprof" now, and to
// path when the returned func is called: the difference is what was
// allocated between ("" writes nothing).
func startAllocProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	write := func(path string) error {
		// The profile counts what was allocated up to the last collection.
		runtime.GC()
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return pprof.Lookup("allocs").WriteTo(f, 0)
	}
	if err := write(strings.TrimSuffix(path, ".pprof") + ".base.pprof"); err != nil {
		return nil, err
	}
	return sync.OnceFunc(func() {
		if err := write(path); err != nil {
			pipelineLogf("allocation profile: %v", err)
		}
	}), nil
}

// profileOf is where the CPU profile of the run's phase goes
// (<phase>-<members>.pprof under --cpuprofile; "" without it).
func (r *pipelineRun) profileOf(phase string) string {
	if r.o.profileDir == "" {
		return ""
	}
	return filepath.Join(r.o.profileDir, fmt.Sprintf("%s-%d.pprof", phase, r.members))
}

func (r *pipelineRun) sampleRSS() { r.peak = r.peak.max(sampleRSS()) }

// postgresEvery is how many of the drain's 2-second ticks go by between
// two samples of PostgreSQL's memory (see samplerNanos); the other
// processes are sampled at every tick, and every process once more when
// the drain ends.
const postgresEvery = 5

func cpuPer(before, after cpuSample, per float64) cpuSeconds {
	return cpuSeconds{
		self:       float64(after.self-before.self) / userHZ / per,
		postgres:   float64(after.postgres-before.postgres) / userHZ / per,
		kafka:      float64(after.kafka-before.kafka) / userHZ / per,
		clickhouse: float64(after.clickhouse-before.clickhouse) / userHZ / per,
	}
}

// preload brings the scenario's database to r.members members, shopper i
// of the generator known by its phone.
func (r *pipelineRun) preload(ctx context.Context, db string) (preloadResult, error) {
	pool := r.p.Pool()
	have, err := pgbench.CountPreloaded(ctx, pool, pipelinePreloadCause)
	if err != nil {
		return preloadResult{}, err
	}
	res := preloadResult{present: have}
	svc, err := identity.New(r.e.Config.Identity, pool, changes.Writer{}, r.e.Tel.Logger)
	if err != nil {
		return res, err
	}
	phone := func(i int) *mcv1.Identifier {
		return &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: r.g.Shopper(i).Phone}
	}
	if have < r.members {
		pipelineLogf("%s: %d members present, loading %d more", db, have, r.members-have)
		start := time.Now()
		if err := preloadMembers(ctx, pool, svc, have, r.members, phone, pipelinePreloadCause, pipelineLogf); err != nil {
			return res, err
		}
		if err := pgbench.Analyze(ctx, pool, true, "members", "member_identifiers"); err != nil {
			return res, err
		}
		res.loaded, res.took = r.members-have, time.Since(start)
	}
	return res, checkPreloadKeys(ctx, pool, svc, phone(0), phone(r.members-1), db)
}

// drain waits until every record is ingested with all its effects or
// dead-lettered, sampling consumer lag and memory every 2 s, and returns
// when the last effect was durable. Whether the stages caught up is asked
// every drainCheck, so that the drain's time is not rounded up to the next
// sample (a 10 s drain read as 10–12 s). The stages commit their offsets
// every second, after their effects, so they show caught up up to a second
// after their last effect: the drain's end is when the platform's counters
// of durable effects (effectsSoFar), read every drainCheck, last moved
// (before, drains whose last effect came anywhere between 6.3 and 7.3 s
// all read 7.3 s).
func (r *pipelineRun) drain(ctx context.Context, run *running) (drained, error) {
	var d drained
	effects := run.effects
	readEffects := func() error {
		n, err := effectsSoFar(r.e.Tel.Metrics)
		if err != nil {
			return err
		}
		if n != effects {
			effects, d.last = n, time.Now()
			if d.first.IsZero() {
				d.first = d.last
			}
		}
		return nil
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	check := time.NewTicker(drainCheck)
	defer check.Stop()
	n := r.o.events
	deadline := time.After(time.Minute + time.Duration(n)*20*time.Millisecond)
	like := r.run + "-%"
	// The counts below scan the run's rows in PostgreSQL and ClickHouse:
	// they are taken only once every stage's group has caught up (a cheap
	// question to Kafka), so that the measurement does not load the
	// servers it measures while the pipeline drains.
	counts := func() (pgbench.Progress, uint64, error) {
		pr, err := pgbench.ProgressOf(ctx, r.p.Pool(), like)
		if err != nil {
			return pr, 0, err
		}
		facts, err := chbench.CountEvents(ctx, r.ch, like, false)
		if err != nil {
			return pr, 0, fmt.Errorf("count ClickHouse rows: %w", err)
		}
		return pr, facts, nil
	}
	for ticks := 0; ; {
		if err := readEffects(); err != nil {
			return drained{}, err
		}
		if caughtUp(ctx, r.adm, r.kcfg) {
			pr, facts, err := counts()
			if err != nil {
				return drained{}, err
			}
			// Done: every record ingested or dead-lettered, every stage's
			// group caught up (offsets are committed after effects are
			// durable), the tag worker and ClickHouse have every ingested
			// event, and the outbox is published. (The benefit worker marks
			// only the events it acts on.)
			if pr.Ingested+run.letters.count() >= n && pr.Tags >= pr.Ingested && int(facts) >= pr.Ingested && pr.Unpublished == 0 && pr.Benefits > 0 {
				// An effect between the last read and the counts.
				if err := readEffects(); err != nil {
					return drained{}, err
				}
				if d.last.IsZero() {
					return drained{}, errors.New("the drain ended with no effect counted (mc.stage.records, mc.relay.published)")
				}
				r.sampleRSS()
				return d, nil
			}
		}
		select {
		case <-ctx.Done():
			return drained{}, ctx.Err()
		case <-run.p.Stopped():
			return drained{}, fmt.Errorf("platform stopped: %w", run.close())
		case <-deadline:
			pr, facts, err := counts()
			if err != nil {
				return drained{}, err
			}
			return drained{}, fmt.Errorf("pipeline did not finish: ingested %d, benefits %d, tags %d, ClickHouse %d, dead letters %d of %d; lag ingest/benefits/tags/sink %s",
				pr.Ingested, pr.Benefits, pr.Tags, facts, run.letters.count(), n, stageLags(ctx, r.adm, r.kcfg))
		case <-check.C:
		case <-tick.C:
			d.lag = append(d.lag, stageLags(ctx, r.adm, r.kcfg))
			ticks++
			r.peak = r.peak.max(sampleMemory(ticks%postgresEvery == 0))
		}
	}
}

// drained is what a drain saw: consumer lag every 2 s ("ingest/benefits/
// tags/sink"), and when the platform's first and last durable effects were
// seen.
type drained struct {
	lag         []string
	first, last time.Time
}

// drainCheck is how often drain asks Kafka whether every stage caught up
// (its committed offsets against the topics' ends: one cheap request).
const drainCheck = 100 * time.Millisecond

// chFloor consumes the channel topic with a plain client and batch-inserts
// every record into a scratch ClickHouse table, no logic.
func chFloor(ctx context.Context, e *platformtest.Env, kcfg kafka.Config, ktel kafka.Telemetry, n int) (float64, error) {
	conn, err := clickhouse.Open(ctx, e.Config.ClickHouse)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	table, err := chbench.NewRecordFloor(ctx, conn, "floor_"+strings.ReplaceAll(kcfg.GroupPrefix, "-", "_"))
	if err != nil {
		return 0, err
	}
	defer table.Drop()
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
		b, err := table.Batch(ctx)
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
func pgFloor(ctx context.Context, pool *pgxpool.Pool, records []loadgen.Record, run string) (float64, error) {
	table, err := pgbench.NewRecordFloor(ctx, pool, "floor_"+run)
	if err != nil {
		return 0, err
	}
	defer table.Drop()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(records); i += 4 {
				if err := table.Upsert(ctx, string(records[i].Key), records[i].Value); err != nil {
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

// dlqWatch consumes a scenario's dead-letter topic from its start, read
// committed (so the markers of ingest's Kafka transactions are not counted
// as letters), and keeps each letter: a dead letter carries the rejected
// record's value, sealed under the platform's PII keys (match opens it).
type dlqWatch struct {
	cl      *kafka.Client
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	n       int
	letters []*kgo.Record
}

func watchDLQ(ctx context.Context, kcfg kafka.Config, ktel kafka.Telemetry) (*dlqWatch, error) {
	cl, err := kafka.NewClient(kcfg, ktel, "", kgo.ConsumeTopics(kcfg.Topics.DLQ),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &dlqWatch{cl: cl, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			if fs.IsClientClosed() {
				return
			}
			w.mu.Lock()
			fs.EachRecord(func(r *kgo.Record) {
				w.n++
				w.letters = append(w.letters, r)
			})
			w.mu.Unlock()
		}
	}()
	return w, nil
}

func (w *dlqWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// match counts the malformed records among the letters, opened with keys,
// and the letters that are not one of them.
func (w *dlqWatch) match(records []loadgen.Record, keys dlq.Sealer) (malformed, other int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	left := map[string]int{}
	for _, rec := range w.letters {
		l := dlq.Parse(rec)
		if err := l.Open(keys); err != nil {
			return 0, 0, err
		}
		left[string(l.Record.Value)]++
	}
	for _, r := range records {
		if r.Malformed != "" && left[string(r.Value)] > 0 {
			left[string(r.Value)]--
			malformed++
		}
	}
	return malformed, w.n - malformed, nil
}

func (w *dlqWatch) close() {
	w.cancel()
	<-w.done
	w.cl.Close()
}

// pipelineStages are the consumer groups a drain waits for, in the order
// the lag is printed.
// The benefit and tag stages run together, in group members.
var pipelineStages = []string{ingest.Stage, members.Stage, sink.Stage}

// sinkChanges names, in partitionLags, the sink's lag on the member-changes
// topic (the relay's changes, which it also writes to ClickHouse).
const sinkChanges = sink.Stage + " (changes)"

// partitionLags is, per stage, each partition's lag: the end offset of the
// topic the stage consumes (ingest the channel topic, the others the
// member-events topic, and under sinkChanges the sink's member-changes
// topic) less the group's committed offset (a partition without a commit
// counts from 0, where the scratch topics start).
func partitionLags(ctx context.Context, adm *kadm.Client, kcfg kafka.Config) (map[string]map[int32]int64, error) {
	ends, err := adm.ListEndOffsets(ctx, kcfg.Topics.ChannelEvents, kcfg.Topics.MemberEvents, kcfg.Topics.MemberChanges)
	if err != nil {
		return nil, err
	}
	out := map[string]map[int32]int64{}
	lags := func(key string, committed kadm.OffsetResponses, topic string) {
		out[key] = map[int32]int64{}
		ends.Each(func(end kadm.ListedOffset) {
			if end.Topic != topic {
				return
			}
			at := int64(0)
			if c, ok := committed.Lookup(topic, end.Partition); ok && c.Err == nil && c.At >= 0 {
				at = c.At
			}
			out[key][end.Partition] = max(end.Offset-at, 0)
		})
	}
	for _, stage := range pipelineStages {
		committed, err := adm.FetchOffsets(ctx, kcfg.Group(stage))
		if err != nil {
			return nil, err
		}
		topic := kcfg.Topics.MemberEvents
		if stage == ingest.Stage {
			topic = kcfg.Topics.ChannelEvents
		}
		lags(stage, committed, topic)
		if stage == sink.Stage {
			lags(sinkChanges, committed, kcfg.Topics.MemberChanges)
		}
	}
	return out, nil
}

// caughtUp says whether every stage's group has committed everything: a
// consumer of a transactional topic (member.events.v1, written by ingest in
// Kafka transactions) stays one offset behind on each partition with data,
// the last commit marker, which it never receives.
func caughtUp(ctx context.Context, adm *kadm.Client, kcfg kafka.Config) bool {
	lags, err := partitionLags(ctx, adm, kcfg)
	if err != nil {
		return false
	}
	for stage, parts := range lags {
		for _, lag := range parts {
			if lag > 1 || (stage == ingest.Stage && lag > 0) {
				return false
			}
		}
	}
	return true
}

// stageLags sums each stage's partition lags, "ingest/benefits/tags/sink".
func stageLags(ctx context.Context, adm *kadm.Client, kcfg kafka.Config) string {
	lags, err := partitionLags(ctx, adm, kcfg)
	if err != nil {
		return "?"
	}
	out := make([]string, len(pipelineStages))
	for i, stage := range pipelineStages {
		var sum int64
		for _, lag := range lags[stage] {
			sum += lag
		}
		out[i] = strconv.FormatInt(sum, 10)
	}
	return strings.Join(out, "/")
}

// discardSpans is an exporter that sends the spans nowhere: with it, a
// run pays for recording, batching and handing over every span, as a
// process exporting to a collector does, but not for the network.
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }

// freshCHDatabase drops cfg's database and creates it empty (the
// platform's migration makes its tables).
func freshCHDatabase(ctx context.Context, cfg clickhouse.Config) error {
	conn, err := clickhouse.Open(ctx, cfg)
	if err != nil {
		return err
	}
	err = chbench.DropDatabase(ctx, conn, cfg.Database)
	conn.Close()
	if err != nil {
		return fmt.Errorf("drop ClickHouse database %s: %w", cfg.Database, err)
	}
	conn, err = clickhouse.Open(ctx, cfg) // creates it
	if err != nil {
		return err
	}
	return conn.Close()
}
