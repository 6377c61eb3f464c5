package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	chgo "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/facts"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/tags"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// tagBenchSynthetic prefixes the member ids of the synthetic profiles the
// CountSegment measurement preloads into ClickHouse (real members are UUIDs).
const tagBenchSynthetic = "bench-"

// benchTagsCmd is issue 5's benchmark: the tag worker's events per second
// with the shipped catalogue, event → label visible in GetProfile and in
// ClickHouse, GetProfile latency, and CountSegment over a million profiles,
// each beside a floor measured in the same run.
func benchTagsCmd(stdout io.Writer) *cobra.Command {
	b := &tagsBench{out: stdout}
	cmd := &cobra.Command{
		Use:   "tags",
		Short: "Tag worker events/s, event → label in GetProfile and ClickHouse, GetProfile latency and CountSegment over 1M profiles, each beside its floor",
		Long: `Uses the dedicated database ` + benchDatabase + ` on the configured PostgreSQL server
(created and migrated when missing, shared with the other benchmarks, whose
preloaded members it reuses) and a ClickHouse database of the same name
(created and migrated when missing).

Each run takes --members members that have no tag state yet (the database's
earliest such members; created by COPY when missing) and gives each a history
through tags.Service.Apply: a sign-up 300–365 days ago with birth date, gender
and city, then --history - 1 events of the mix at random times since. The mix:
70% transactions of 1–4 basket lines over retail categories (coffee, tea,
bakery, dairy, fresh, snacks, beverages, household, beauty, baby, pet), 5%
refunds of an earlier order, and check-ins, browses, visits, shares and
reviews; channels POS 55%, app 20%, mini-program 15%, web 10%. The catalogue
is the one the server runs (the newest loaded, else the shipped one).

1. Tag worker throughput. --events events of the mix for random members,
   applied with tags.Service.Apply by each number of --appliers (partitioned
   by member, so one member's events stay in order), beside one
   INSERT … ON CONFLICT DO UPDATE per event into a scratch table with the same
   partitioning (the floor). Then --kafka-events events published to a scratch
   member-events topic and consumed by the tag worker (worker.New with the tag
   service, as platform.Run builds it), beside a plain franz-go consume of the
   same records.
2. Event → label visible. The platform runs in process (stage tags, service
   profile) on scratch topics. For each of --visibility-events members, an
   event of the mix that changes at least one label is chosen by computing
   the labels it will produce from the member's stored state (the engine's
   own functions); events are published open loop at --visibility-rate and
   timed from their intended send time until GetProfile shows the predicted
   label value (checked when the tag engine's NOTIFY arrives and the member's
   label version reached the new one) and until member_profiles FINAL in
   ClickHouse holds the new version (polled). The floor is a plain Kafka
   produce → consume round trip at the same rate.
3. GetProfile of random members of the run at --rate for --duration, open
   loop, beside grpc.health.v1.Health/Check on the same server.
4. CountSegment of a three-label expression (--segment; by default three
   labels of different types from the catalogue) over --profiles synthetic
   profiles preloaded once into ClickHouse's member_profiles with
   INSERT … SELECT FROM numbers() (reloaded when the catalogue version
   changes), --segment-runs times, interleaved with SELECT count() FROM
   member_profiles FINAL and a plain SELECT count() (the floors).

Prints Markdown; progress goes to stderr.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, logPath, done, err := setupLogged(cmd.Context(), "membercenter-bench-tags")
			if err != nil {
				return err
			}
			defer done()
			b.e, b.progress = e, cmd.ErrOrStderr()
			b.logf("server log in %s", logPath)
			return b.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.IntVar(&b.members, "members", 1500, "members without tag state given a history this run; every measured event is for one of them")
	f.IntVar(&b.history, "history", 10, "history events per member (a sign-up, then the mix), applied before measuring")
	f.IntVar(&b.events, "events", 3000, "member events applied directly per applier count, and upserts of the floor")
	f.IntSliceVar(&b.appliers, "appliers", []int{1, 4, 8}, "concurrent appliers (and upserters) to measure")
	f.IntVar(&b.kafkaEvents, "kafka-events", 6000, "member events through Kafka and the tag worker (0 skips the Kafka path)")
	f.IntVar(&b.visRate, "visibility-rate", 100, "events per second (open loop) of the event → label measurement and its floor")
	f.IntVar(&b.visEvents, "visibility-events", 1000, "measured events of the event → label measurement (one member each)")
	f.IntVar(&b.visWarm, "visibility-warmup", 100, "unmeasured events before them")
	f.IntSliceVar(&b.rates, "rate", []int{500, 2000}, "GetProfile and Health/Check requests per second (open loop); a list measures each rate")
	f.DurationVar(&b.duration, "duration", 20*time.Second, "measured time of each of GetProfile and Health/Check (after a 3 s warm-up)")
	f.IntVar(&b.profiles, "profiles", 1_000_000, "synthetic member profiles in ClickHouse for CountSegment")
	f.IntVar(&b.segmentRuns, "segment-runs", 30, "CountSegment calls (and runs of each floor query)")
	f.StringVar(&b.segmentExpr, "segment", "", "segment expression to count (default: one enum, one bool and one number label of the catalogue)")
	f.IntVar(&b.conns, "conns", 4, "gRPC client connections the requests are spread over")
	f.DurationVar(&b.timeout, "timeout", 30*time.Second, "deadline of each request; one that passes counts as an error")
	f.StringVar(&b.cpuProfile, "cpuprofile", "", "write a CPU profile of this process during the direct Apply run with the most appliers to this file")
	f.StringVar(&b.getProfile, "get-cpuprofile", "", "write a CPU profile of this process (client and server) during the GetProfile run at the last --rate to this file")
	return cmd
}

type tagsBench struct {
	e             *env
	out, progress io.Writer

	members, history, events, kafkaEvents int
	visRate, visEvents, visWarm           int
	conns, profiles, segmentRuns          int
	appliers, rates                       []int
	duration, timeout                     time.Duration
	segmentExpr, cpuProfile, getProfile   string

	runID    string
	benchURL string
	pool     *pgxpool.Pool
	svc      *tags.Service // the worker's effect path, applied directly
	h        *benefitsBench
	chCfg    clickhouse.Config
	ch       driver.Conn
	used     []uuid.UUID
	gen      *tagEventGen
	inFlight float64 // the Kafka worker's records in process at once, on average
}

func (b *tagsBench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "bench tags: "+format+"\n", args...)
}

func (b *tagsBench) validate() error {
	var errs []error
	if b.members < 10 || b.history < 1 {
		errs = append(errs, errors.New("--members must be at least 10 and --history at least 1"))
	}
	if b.visEvents < 1 || b.visWarm < 0 || b.visRate < 1 {
		errs = append(errs, errors.New("--visibility-events and --visibility-rate must be positive, --visibility-warmup not negative"))
	}
	if b.visEvents+b.visWarm > b.members {
		errs = append(errs, fmt.Errorf("--visibility-events + --visibility-warmup (%d) must be at most --members (%d): each event has a member of its own",
			b.visEvents+b.visWarm, b.members))
	}
	for _, k := range b.appliers {
		if k < 1 {
			errs = append(errs, errors.New("--appliers values must be positive"))
		}
	}
	for _, r := range b.rates {
		if r < 1 {
			errs = append(errs, errors.New("--rate values must be positive"))
		}
	}
	if len(b.rates) == 0 {
		errs = append(errs, errors.New("--rate needs at least one rate"))
	}
	if b.events < 1 || b.kafkaEvents < 0 || b.duration < time.Second || b.conns < 1 || b.timeout <= 0 {
		errs = append(errs, errors.New("--events, --rate, --conns and --timeout must be positive, --duration at least 1s, --kafka-events not negative"))
	}
	if b.profiles < 1 || b.segmentRuns < 1 {
		errs = append(errs, errors.New("--profiles and --segment-runs must be positive"))
	}
	return errors.Join(errs...)
}

func (b *tagsBench) commandLine() string {
	list := func(xs []int) string {
		out := make([]string, len(xs))
		for i, k := range xs {
			out[i] = strconv.Itoa(k)
		}
		return strings.Join(out, ",")
	}
	s := fmt.Sprintf("membercenter bench tags --members %d --history %d --events %d --appliers %s --kafka-events %d --visibility-rate %d --visibility-events %d --visibility-warmup %d --rate %s --duration %s --profiles %d --segment-runs %d",
		b.members, b.history, b.events, list(b.appliers), b.kafkaEvents, b.visRate, b.visEvents, b.visWarm, list(b.rates), b.duration, b.profiles, b.segmentRuns)
	if b.segmentExpr != "" {
		s += " --segment '" + b.segmentExpr + "'"
	}
	return s
}

func (b *tagsBench) ktel() kafka.Telemetry {
	return kafka.Telemetry{Tracers: b.e.tel.Tracers, Meters: b.e.tel.Meters, Propagator: b.e.tel.Propagator, Logger: b.e.tel.Logger}
}

// scratchKafka is the configured Kafka with topics and groups of its own.
func (b *tagsBench) scratchKafka(prefix string) kafka.Config {
	return scratchKafka(b.e.cfg.Kafka, prefix)
}

// tagsReport is everything the run measured.
type tagsReport struct {
	pgVersion, chVersion string
	catalog              *tags.Catalog
	pool                 poolResult
	historyEvents        int
	history              time.Duration
	profiles             tagProfilesResult
	applied, upserted    []throughput
	profileWritten       string
	kafka                *kafkaResult
	state                tagStateStats
	drained              time.Duration
	visFloor             Summary
	vis                  tagVisResult
	gets                 []tagGetRun
	seg                  tagSegResult
}

func (b *tagsBench) run(ctx context.Context) error {
	if err := b.validate(); err != nil {
		return err
	}
	b.runID = fmt.Sprintf("bt%x", time.Now().UnixNano()&0xffffffffff)
	b.gen = &tagEventGen{orders: map[uuid.UUID][]tagOrder{}}
	cfg := b.e.cfg
	var err error
	if b.benchURL, err = benchDatabaseURL(cfg.Postgres.URL); err != nil {
		return err
	}
	if err := createDatabase(ctx, b.e.p.Pool(), benchDatabase); err != nil {
		return err
	}
	// One platform on the bench databases and the scratch topics of the
	// event → label measurement; its pool serves the direct measurements.
	pcfg := cfg
	pcfg.Postgres.URL = b.benchURL
	pcfg.ClickHouse.Database = benchDatabase
	vprefix := b.runID + "v"
	pcfg.Kafka = b.scratchKafka(vprefix)
	b.chCfg = pcfg.ClickHouse
	p, err := platform.Open(ctx, pcfg, b.e.tel)
	if err != nil {
		return err
	}
	defer p.Close()
	b.pool = p.Pool()
	if _, err := postgres.Migrate(ctx, b.pool); err != nil {
		return err
	}
	b.svc = tags.New(b.pool, changesWriter(b.e), b.e.tel.Logger)
	if err := b.svc.Reload(ctx); err != nil { // the catalogue the server runs
		return err
	}
	trips := &pgRoundTrips{}
	b.e.tel.Tracers.RegisterSpanProcessor(trips)
	defer b.e.tel.Tracers.UnregisterSpanProcessor(trips)
	b.h = &benefitsBench{e: b.e, out: io.Discard, progress: b.progress, pool: b.pool, benchURL: b.benchURL, trips: trips,
		tracer:   b.e.tel.Tracers.Tracer("github.com/membercenter/membercenter/services/cli/bench"),
		duration: b.duration, timeout: b.timeout, runID: b.runID}

	r := &tagsReport{catalog: b.svc.Catalog()}
	_ = b.pool.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&r.pgVersion)

	// ClickHouse: the bench database, its migrations and the synthetic
	// profiles, before anything else writes member_profiles this run.
	if b.ch, err = clickhouse.Open(ctx, b.chCfg); err != nil {
		return err
	}
	defer b.ch.Close()
	if _, err := clickhouse.Migrate(ctx, b.ch); err != nil {
		return err
	}
	_ = b.ch.QueryRow(ctx, `SELECT version()`).Scan(&r.chVersion)
	if r.profiles, err = b.preloadProfiles(ctx); err != nil {
		return fmt.Errorf("synthetic profiles: %w", err)
	}

	if r.pool, err = b.pickMembers(ctx); err != nil {
		return fmt.Errorf("members: %w", err)
	}
	// Members used by a run are not used again; cancel their sweeps, so
	// that later runs' sweepers do not recompute them at every midnight.
	defer b.retire()

	b.logf("history: %d events for %d members (a sign-up, then the mix over the past year), 8 appliers", b.history*len(b.used), len(b.used))
	if r.historyEvents, r.history, err = b.giveHistory(ctx); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	b.logf("history: %d events in %s", r.historyEvents, r.history.Round(time.Millisecond))

	if r.applied, r.upserted, err = b.applyPhases(ctx); err != nil {
		return fmt.Errorf("appliers: %w", err)
	}
	r.profileWritten = b.cpuProfile
	if b.kafkaEvents > 0 {
		k, err := b.kafkaPath(ctx)
		if err != nil {
			return fmt.Errorf("kafka path: %w", err)
		}
		r.kafka = &k
	}

	// The platform: the tag worker, sweeper and profile exporter, and the
	// ProfileService behind the production gRPC stack.
	admin, err := kafka.NewClient(pcfg.Kafka, b.ktel(), "")
	if err != nil {
		return err
	}
	defer admin.Close()
	adm := kadm.NewClient(admin.Client)
	if err := kafka.EnsureTopics(ctx, admin.Client, pcfg.Kafka.Topics); err != nil {
		return err
	}
	floorTopic := vprefix + ".floor.v1"
	if _, err := adm.CreateTopic(ctx, 6, 1, nil, floorTopic); err != nil {
		return err
	}
	defer func() {
		names := []string{floorTopic}
		for n := range pcfg.Kafka.Topics.All() {
			names = append(names, n)
		}
		_, _ = adm.DeleteTopics(context.Background(), names...)
		_, _ = adm.DeleteGroups(context.Background(), pcfg.Kafka.Group(tags.Stage))
	}()
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	adminLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ready := make(chan struct{})
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(pctx)
	g.Go(func() error {
		return p.Run(gctx, platform.Options{Services: []string{"profile"}, Stages: []string{tags.Stage},
			GRPC: grpcLis, Admin: adminLis, Ready: func() { close(ready) }})
	})
	select {
	case <-ready:
	case <-gctx.Done():
		return fmt.Errorf("platform did not start: %w", g.Wait())
	}
	for range b.conns {
		c, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer c.Close()
		c.Connect()
		b.h.clients = append(b.h.clients, c)
	}
	b.h.warmed = b.used
	profiles := mcv1.NewProfileServiceClient(b.h.clients[0])

	b.logf("platform: waiting for the profile exporter and the sweeper to catch up")
	if r.drained, err = b.drain(ctx); err != nil {
		return err
	}
	if r.state, err = b.stateStats(ctx); err != nil {
		return err
	}

	producer, err := kafka.NewClient(pcfg.Kafka, b.ktel(), "", kgo.ProducerLinger(0))
	if err != nil {
		return err
	}
	defer producer.Close()
	b.logf("visibility floor: %d Kafka produce → consume round trips at %d/s", b.visEvents, b.visRate)
	lb := &latencyBench{events: b.visEvents, members: b.members, rate: b.visRate}
	if r.visFloor, err = lb.floor(ctx, pcfg.Kafka, b.ktel(), producer, adm, floorTopic); err != nil {
		return fmt.Errorf("visibility floor: %w", err)
	}
	b.logf("visibility floor: p50 %s ms, p99 %s ms", ms(r.visFloor.Median), ms(r.visFloor.P99))
	if r.vis, err = b.visibilityPhase(ctx, profiles, producer, pcfg.Kafka.Topics.MemberEvents); err != nil {
		return fmt.Errorf("event → label: %w", err)
	}

	for ri, rate := range b.rates {
		var run tagGetRun
		run.rate = rate
		n := int(float64(rate) * b.duration.Seconds())
		b.logf("floor: grpc.health.v1.Health/Check, %d requests at %d/s after a %s warm-up", n, rate, resolveWarmup)
		if run.health, run.healthUse, err = b.h.openPhase(ctx, "health"+strconv.Itoa(rate), rate, b.h.health); err != nil {
			return fmt.Errorf("health: %w", err)
		}
		b.logf("floor: p50 %s ms, p99 %s ms, %d errors", ms(run.health.Median), ms(run.health.P99), run.health.errors)
		b.logf("get: ProfileService.GetProfile, %d requests at %d/s after a %s warm-up", n, rate, resolveWarmup)
		stopProfile := func() {}
		if ri == len(b.rates)-1 {
			if stopProfile, err = startCPUProfile(b.getProfile); err != nil {
				return err
			}
		}
		run.get, run.getUse, err = b.h.openPhase(ctx, "getprofile"+strconv.Itoa(rate), rate, tagsGetProfile)
		stopProfile()
		if err != nil {
			return fmt.Errorf("get profile: %w", err)
		}
		b.logf("get: p50 %s ms, p99 %s ms, %.0f/s, %d errors", ms(run.get.Median), ms(run.get.P99), run.get.Throughput, run.get.errors)
		r.gets = append(r.gets, run)
	}

	if r.seg, err = b.segments(ctx, profiles); err != nil {
		return fmt.Errorf("segments: %w", err)
	}

	stop()
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	b.report(r)
	return nil
}

// ---- members and their history ----

// pickMembers chooses the run's members at random among the earliest
// active, never-merged members of the bench database without tag state;
// members missing are created.
func (b *tagsBench) pickMembers(ctx context.Context) (poolResult, error) {
	rows, err := b.pool.Query(ctx, `
		SELECT m.member_id FROM members m
		 WHERE m.status = 'active' AND m.merge_count = 0
		   AND NOT EXISTS (SELECT FROM member_features f WHERE f.member_id = m.member_id)
		 ORDER BY m.member_id LIMIT $1`, 10*b.members)
	if err != nil {
		return poolResult{}, err
	}
	pool, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return poolResult{}, err
	}
	res := poolResult{fresh: len(pool)}
	if missing := b.members - len(pool); missing > 0 {
		b.logf("members: %d without tag state present, creating %d", len(pool), missing)
		now := time.Now()
		created := make([][]any, missing)
		for i := range created {
			id := uuid.Must(uuid.NewV7())
			created[i] = []any{id, now}
			pool = append(pool, id)
		}
		if _, err := b.pool.CopyFrom(ctx, pgx.Identifier{"members"}, []string{"member_id", "created_at"}, pgx.CopyFromRows(created)); err != nil {
			return res, fmt.Errorf("copy members: %w", err)
		}
		res.created = missing
	}
	for _, i := range rand.Perm(len(pool))[:b.members] {
		b.used = append(b.used, pool[i])
	}
	b.logf("members: %d drawn from %d without tag state (%d created)", len(b.used), len(pool), res.created)
	return res, nil
}

// retire clears the sweep times of the run's members (see run).
func (b *tagsBench) retire() {
	if len(b.used) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.pool.Exec(ctx, `UPDATE member_features SET due_at = NULL WHERE member_id = ANY($1)`, b.used); err != nil {
		b.logf("retire members: %v", err)
	}
}

// giveHistory applies, for every member, a sign-up 300–365 days ago and
// history-1 events of the mix at random times since, in time order, with 8
// appliers partitioned by member.
func (b *tagsBench) giveHistory(ctx context.Context) (int, time.Duration, error) {
	now := time.Now()
	var evs []*mcv1.MemberEvent
	var owner []int
	for mi, m := range b.used {
		signUp := now.Add(-time.Duration(300+rand.IntN(65)) * 24 * time.Hour)
		evs = append(evs, b.gen.signUp(fmt.Sprintf("%s-h-%d-0", b.runID, mi), m, signUp))
		owner = append(owner, mi)
		span := now.Add(-time.Hour).Sub(signUp.Add(time.Hour))
		times := make([]time.Time, b.history-1)
		for k := range times {
			times[k] = signUp.Add(time.Hour + time.Duration(rand.Int64N(int64(span))))
		}
		slices.SortFunc(times, func(a, c time.Time) int { return a.Compare(c) })
		for k, t := range times {
			evs = append(evs, b.gen.event(fmt.Sprintf("%s-h-%d-%d", b.runID, mi, k+1), m, t, true))
			owner = append(owner, mi)
		}
	}
	start := time.Now()
	res := b.h.partitioned(ctx, 8, owner, func(ctx context.Context, i int) error { return b.svc.Apply(ctx, evs[i]) })
	if res.errors > 0 {
		return len(evs), time.Since(start), fmt.Errorf("%d of %d history events failed; first: %w", res.errors, len(evs), res.firstErr)
	}
	return len(evs), time.Since(start), nil
}

// ---- the event mix ----

var (
	tagBenchCategories = []string{"coffee", "tea", "bakery", "dairy", "fresh", "snacks", "beverages", "household", "beauty", "baby", "pet"}
	tagBenchBrands     = []string{"house", "acme", "lotus", "panda", "summit", "harbor", "meadow", "orchid"}
	tagBenchCities     = []string{"Shanghai", "Beijing", "Hangzhou", "Shenzhen", "Chengdu", "Wuhan", "Suzhou", "Xiamen"}
)

type tagOrder struct {
	id     string
	amount int64
}

// tagEventGen makes member events of the mix and remembers each member's
// orders, so refunds refer to real ones.
type tagEventGen struct {
	mu     sync.Mutex
	orders map[uuid.UUID][]tagOrder
}

func tagBenchChannel() mcv1.Channel {
	switch r := rand.IntN(100); {
	case r < 55:
		return mcv1.Channel_CHANNEL_POS
	case r < 75:
		return mcv1.Channel_CHANNEL_APP
	case r < 90:
		return mcv1.Channel_CHANNEL_MINIPROGRAM
	default:
		return mcv1.Channel_CHANNEL_WEB
	}
}

func (g *tagEventGen) signUp(id string, member uuid.UUID, at time.Time) *mcv1.MemberEvent {
	ts := timestamppb.New(at)
	birth := time.Date(1960+rand.IntN(46), time.Month(1+rand.IntN(12)), 1+rand.IntN(28), 0, 0, 0, 0, time.UTC)
	gender := "f"
	if rand.IntN(100) < 45 {
		gender = "m"
	}
	ch := mcv1.Channel_CHANNEL_APP
	if rand.IntN(2) == 0 {
		ch = mcv1.Channel_CHANNEL_MINIPROGRAM
	}
	return &mcv1.MemberEvent{EventId: id, MemberId: member.String(), Channel: ch, OccurredAt: ts, IngestedAt: ts,
		Payload: &mcv1.MemberEvent_SignUp{SignUp: &mcv1.SignUp{BirthDate: timestamppb.New(birth), Gender: gender,
			City: tagBenchCities[rand.IntN(len(tagBenchCities))]}}}
}

// event is a member event of the mix at at; record remembers a
// transaction's order (and forgets a fully refunded one).
func (g *tagEventGen) event(id string, member uuid.UUID, at time.Time, record bool) *mcv1.MemberEvent {
	ch := tagBenchChannel()
	store := ""
	if ch == mcv1.Channel_CHANNEL_POS {
		store = fmt.Sprintf("BENCH-%02d", rand.IntN(40))
	}
	ts := timestamppb.New(at)
	ev := &mcv1.MemberEvent{EventId: id, MemberId: member.String(), Channel: ch, StoreId: store, OccurredAt: ts, IngestedAt: ts}
	switch r := rand.IntN(100); {
	case r < 70:
		g.transaction(ev, member, record)
	case r < 75:
		if !g.refund(ev, member, record) {
			g.transaction(ev, member, record)
		}
	case r < 82:
		ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_APP, ""
		if rand.IntN(2) == 0 {
			ev.Channel = mcv1.Channel_CHANNEL_MINIPROGRAM
		}
		ev.Payload = &mcv1.MemberEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
	case r < 89:
		cat := tagBenchCategories[rand.IntN(len(tagBenchCategories))]
		ev.Payload = &mcv1.MemberEvent_Browse{Browse: &mcv1.Browse{Sku: fmt.Sprintf("SKU-%s-%03d", cat, rand.IntN(300)), Category: cat}}
	case r < 94:
		ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_POS, fmt.Sprintf("BENCH-%02d", rand.IntN(40))
		ev.Payload = &mcv1.MemberEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(60 + rand.IntN(1800))}}
	case r < 97:
		ev.Payload = &mcv1.MemberEvent_Share{Share: &mcv1.Share{ContentId: fmt.Sprintf("C-%d", rand.IntN(500)), Target: "wechat"}}
	default:
		rating := []int32{1, 2, 3, 4, 4, 5, 5, 5}[rand.IntN(8)]
		ev.Payload = &mcv1.MemberEvent_Review{Review: &mcv1.Review{Sku: fmt.Sprintf("SKU-coffee-%03d", rand.IntN(300)), Rating: rating,
			TextLength: int32(rand.IntN(300))}}
	}
	return ev
}

// transaction: 1–4 lines, ¥5–¥200 a unit (log-uniform), 1–3 units; a
// discount in one of five, a coupon in one of ten, points in one of twenty.
func (g *tagEventGen) transaction(ev *mcv1.MemberEvent, member uuid.UUID, record bool) {
	n := 1 + rand.IntN(4)
	items := make([]*mcv1.LineItem, n)
	var total int64
	for k := range n {
		cat := tagBenchCategories[rand.IntN(len(tagBenchCategories))]
		qty := 1 + rand.IntN(3)
		unit := int64(math.Round(500 * math.Pow(40, rand.Float64())))
		amount := unit * int64(qty)
		items[k] = &mcv1.LineItem{Sku: fmt.Sprintf("SKU-%s-%03d", cat, rand.IntN(300)), Category: cat,
			Brand: tagBenchBrands[rand.IntN(len(tagBenchBrands))], Quantity: int32(qty), UnitPrice: cny(unit), Amount: cny(amount)}
		total += amount
	}
	t := &mcv1.Transaction{OrderId: "O-" + ev.GetEventId(), Total: cny(total), Items: items}
	if rand.IntN(5) == 0 {
		t.Discount = cny(total * int64(5+rand.IntN(11)) / 100)
	}
	if rand.IntN(10) == 0 {
		t.CouponCodes = []string{fmt.Sprintf("CPN-%04d", rand.IntN(10000))}
	}
	if rand.IntN(20) == 0 {
		t.PointsRedeemed = int64(100 * (1 + rand.IntN(10)))
	}
	ev.Payload = &mcv1.MemberEvent_Transaction{Transaction: t}
	if record {
		g.mu.Lock()
		g.orders[member] = append(g.orders[member], tagOrder{id: t.OrderId, amount: total})
		g.mu.Unlock()
	}
}

// refund returns an earlier order of the member, in full or (three in ten)
// half of it; false when the member has no order to refund.
func (g *tagEventGen) refund(ev *mcv1.MemberEvent, member uuid.UUID, record bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	os := g.orders[member]
	if len(os) == 0 {
		return false
	}
	k := rand.IntN(len(os))
	o := os[k]
	amount := o.amount
	if rand.IntN(10) < 3 {
		amount = o.amount / 2
	}
	if record {
		g.orders[member] = slices.Delete(os, k, k+1)
	}
	ev.Payload = &mcv1.MemberEvent_Refund{Refund: &mcv1.Refund{OrderId: o.id, Amount: cny(amount)}}
	return true
}

// ---- 1. the tag worker's effect path, and its floor ----

func (b *tagsBench) applyPhases(ctx context.Context) (applied, upserted []throughput, err error) {
	now := time.Now()
	return b.h.applyVsUpsert(ctx, applyRun{
		table: "bench_tags_upsert_floor_" + b.runID, members: b.used, appliers: b.appliers, events: b.events, logf: b.logf,
		event: func(k, i int, member uuid.UUID) *mcv1.MemberEvent {
			return b.gen.event(fmt.Sprintf("%s-apply%d-%d", b.runID, k, i), member, now, true)
		},
		apply: b.svc.Apply,
		// The run with the most appliers is the one profiled.
		profile: func(ki int) (func(), error) {
			if ki != len(b.appliers)-1 {
				return func() {}, nil
			}
			return startCPUProfile(b.cpuProfile)
		},
	})
}

// startCPUProfile profiles this process into path until the returned
// function is called; no path, no profile.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// kafkaPath publishes b.kafkaEvents events of the mix to a scratch
// member-events topic (keyed by member), consumes them once with a plain
// franz-go client (the floor), then runs the tag worker over them until
// every one is applied.
func (b *tagsBench) kafkaPath(ctx context.Context) (kafkaResult, error) {
	kcfg := b.scratchKafka(b.runID + "k")
	inFlight := &tagInFlight{topic: kcfg.Topics.MemberEvents}
	b.e.tel.Tracers.RegisterSpanProcessor(inFlight)
	defer b.e.tel.Tracers.UnregisterSpanProcessor(inFlight)
	now := time.Now()
	res, err := b.h.workerOverKafka(ctx, kafkaWorkerRun{
		kcfg: kcfg, stage: tags.Stage, applier: b.svc, events: b.kafkaEvents,
		event: func(i int) (uuid.UUID, *mcv1.MemberEvent) {
			member := b.used[rand.IntN(len(b.used))]
			return member, b.gen.event(fmt.Sprintf("%s-kafka-%d", b.runID, i), member, now, true)
		},
		limit: 5 * time.Minute, logf: b.logf,
	})
	if err != nil {
		return res, err
	}
	b.inFlight = float64(inFlight.ns.Load()) / float64(res.wall)
	b.logf("kafka: worker %.0f events/s, floor %.0f records/s", float64(b.kafkaEvents-1)/res.worker.Seconds(), float64(b.kafkaEvents)/res.floor.Seconds())
	return res, nil
}

// drain waits until the exporter has emptied its queue and no member is
// due for a sweep (work left over from the direct measurements).
func (b *tagsBench) drain(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	for {
		var queued, due int
		if err := b.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM profile_exports),
			(SELECT count(*) FROM member_features WHERE due_at <= now())`).Scan(&queued, &due); err != nil {
			return 0, err
		}
		if queued == 0 && due == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > 2*time.Minute {
			b.logf("platform: still %d exports queued and %d members due after 2 minutes; measuring anyway", queued, due)
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tagStateStats describes the run's members' stored tag state.
type tagStateStats struct {
	stateBytes, purchases, acts, labels float64
}

func (b *tagsBench) stateStats(ctx context.Context) (tagStateStats, error) {
	var s tagStateStats
	err := b.pool.QueryRow(ctx, `SELECT coalesce(avg(pg_column_size(state)), 0),
		coalesce(avg(jsonb_array_length(coalesce(state->'p', '[]'))), 0),
		coalesce(avg(jsonb_array_length(coalesce(state->'a', '[]'))), 0),
		coalesce(avg((SELECT count(*) FROM jsonb_object_keys(labels))), 0)
		FROM member_features WHERE member_id = ANY($1)`, b.used).Scan(&s.stateBytes, &s.purchases, &s.acts, &s.labels)
	return s, err
}

// ---- 2. event → label visible ----

// tagVisEvent is an event whose effect on one label is known in advance.
type tagVisEvent struct {
	member  uuid.UUID
	value   []byte // the MemberEvent
	kind    string
	label   string
	want    string // tags.FormatValue of the new value
	cleared bool
	version int64 // the member's label version once applied
}

// predict chooses, for up to n members of the run (each once), an event of
// the mix that changes at least one label, by evaluating the labels the
// engine will compute from the member's stored state exactly as Apply does
// (fold, trim, compute features, evaluate the labels the event's kind can
// change). Members due for a sweep within two minutes are skipped, so only
// the event moves their labels.
func (b *tagsBench) predict(ctx context.Context, n int, prefix string) ([]tagVisEvent, error) {
	c := b.svc.Catalog()
	rows, err := b.pool.Query(ctx, `SELECT f.member_id, f.state, f.labels, f.version, f.catalog_version, f.due_at, m.attributes
		FROM member_features f JOIN members m USING (member_id) WHERE f.member_id = ANY($1)`, b.used)
	if err != nil {
		return nil, err
	}
	type stored struct {
		id            uuid.UUID
		state, labels []byte
		version       int64
		catalog       string
		due           *time.Time
		attrs         map[string]string
	}
	var all []stored
	var s stored
	if _, err := pgx.ForEachRow(rows, []any{&s.id, &s.state, &s.labels, &s.version, &s.catalog, &s.due, &s.attrs}, func() error {
		all = append(all, s)
		s = stored{} // fresh buffers and map for the next row
		return nil
	}); err != nil {
		return nil, err
	}
	now := time.Now()
	var out []tagVisEvent
	for _, i := range rand.Perm(len(all)) {
		if len(out) == n {
			break
		}
		m := all[i]
		if m.catalog != c.Version || (m.due != nil && m.due.Before(now.Add(2*time.Minute))) {
			continue
		}
		prev := map[string]any{}
		if err := json.Unmarshal(m.labels, &prev); err != nil {
			return nil, err
		}
		demo := tags.Demographics{BirthDate: m.attrs["birth_date"], Gender: m.attrs["gender"], City: m.attrs["city"]}
		for try := range 8 {
			ev := b.gen.event(fmt.Sprintf("%s-%d-%d", prefix, len(out), try), m.id, now, false)
			f := tags.FactFromEvent(ev)
			st := &tags.State{}
			if err := json.Unmarshal(m.state, st); err != nil {
				return nil, err
			}
			st.Fold(f)
			st.Trim(now)
			feats := tags.Compute(tags.Inputs{State: st, Demo: demo}, now, c.Location, c.Filters, c.Version)
			labels := c.Evaluate(feats.Values, c.Dirty(f.Kind), prev, false)
			diff := tags.Diff(prev, labels, now)
			if len(diff) == 0 {
				continue
			}
			pick := diff[0]
			for _, d := range diff {
				if !d.GetCleared() {
					pick = d
					break
				}
			}
			e := tagVisEvent{member: m.id, kind: f.Kind, label: pick.GetLabelId(), cleared: pick.GetCleared(), version: m.version + 1}
			if !e.cleared {
				e.want = tags.FormatValue(labels[e.label])
			}
			// Remember the order (a later refund may return it).
			if f.Kind == tags.KindTransaction {
				b.gen.mu.Lock()
				b.gen.orders[m.id] = append(b.gen.orders[m.id], tagOrder{id: f.OrderID, amount: f.Amount})
				b.gen.mu.Unlock()
			}
			if e.value, err = proto.Marshal(ev); err != nil {
				return nil, err
			}
			out = append(out, e)
			break
		}
	}
	return out, nil
}

// tagSpanClock records when the worker's Kafka client buffered each record
// of a topic (its "receive" span starts) and when the worker began to
// process it ("process" span), by partition and offset, from the spans the
// platform's franz-go hooks and consumer start.
type tagSpanClock struct {
	topic            string
	mu               sync.Mutex
	receive, process map[[2]int64]time.Time
}

func newTagSpanClock(topic string) *tagSpanClock {
	return &tagSpanClock{topic: topic, receive: map[[2]int64]time.Time{}, process: map[[2]int64]time.Time{}}
}

func (c *tagSpanClock) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	var m map[[2]int64]time.Time
	switch s.Name() {
	case c.topic + " receive":
		m = c.receive
	case c.topic + " process":
		m = c.process
	default:
		return
	}
	key := [2]int64{-1, -1}
	for _, a := range s.Attributes() {
		switch a.Key {
		case attribute.Key("messaging.kafka.source.partition"):
			key[0] = a.Value.AsInt64()
		case attribute.Key("messaging.kafka.message.offset"):
			key[1] = a.Value.AsInt64()
		}
	}
	c.mu.Lock()
	if _, seen := m[key]; !seen {
		m[key] = s.StartTime()
	}
	c.mu.Unlock()
}

func (c *tagSpanClock) OnEnd(sdktrace.ReadOnlySpan)      {}
func (c *tagSpanClock) Shutdown(context.Context) error   { return nil }
func (c *tagSpanClock) ForceFlush(context.Context) error { return nil }
func (c *tagSpanClock) at(m map[[2]int64]time.Time, k [2]int64) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m[k]
}

// tagInFlight sums the durations of the worker's per-record process spans
// of a topic: divided by the wall time, the records in process at once.
type tagInFlight struct {
	topic string
	ns    atomic.Int64
}

func (c *tagInFlight) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (c *tagInFlight) OnEnd(s sdktrace.ReadOnlySpan) {
	if s.Name() == c.topic+" process" {
		c.ns.Add(int64(s.EndTime().Sub(s.StartTime())))
	}
}
func (c *tagInFlight) Shutdown(context.Context) error   { return nil }
func (c *tagInFlight) ForceFlush(context.Context) error { return nil }

// labelShown says whether the profile shows e's label as predicted.
func labelShown(p *mcv1.Profile, e *tagVisEvent) bool {
	for _, lv := range p.GetLabels() {
		if lv.GetLabelId() == e.label {
			return !e.cleared && facts.LabelValueText(lv) == e.want
		}
	}
	return e.cleared
}

type tagVisResult struct {
	profile, ch Summary
	// Stages of the GetProfile path, and ClickHouse after the commit.
	computed, committed, rpc, export Summary
	received, handed, apply          Summary // parts of computed
	use                              phaseUse
	sent, warm                       int
	profileSeen, chSeen              int
	missed                           int // the version arrived with another value than predicted
	wanted                           int
	labels, kinds                    map[string]int
	profileChecks, chPoll            int
}

// visibilityPhase predicts the warm-up's and the measured events, runs
// the warm-up unmeasured, then the measured events.
func (b *tagsBench) visibilityPhase(ctx context.Context, client mcv1.ProfileServiceClient, producer *kafka.Client, topic string) (tagVisResult, error) {
	b.logf("visibility: choosing %d events that change a label (from each member's stored state)", b.visWarm+b.visEvents)
	evs, err := b.predict(ctx, b.visWarm+b.visEvents, b.runID+"-vis")
	if err != nil {
		return tagVisResult{}, err
	}
	warm := min(b.visWarm, len(evs)/10)
	if warm > 0 {
		b.logf("visibility: %d unmeasured events at %d/s", warm, b.visRate)
		if _, err := b.visibility(ctx, client, producer, topic, evs[:warm]); err != nil {
			return tagVisResult{}, err
		}
	}
	measured := evs[warm:]
	b.logf("visibility: %d events at %d/s, each timed until GetProfile shows its label and ClickHouse its version", len(measured), b.visRate)
	res, err := b.visibility(ctx, client, producer, topic, measured)
	if err != nil {
		return res, err
	}
	res.wanted, res.warm = b.visEvents, warm
	res.labels, res.kinds = map[string]int{}, map[string]int{}
	for _, e := range measured {
		res.labels[e.label]++
		res.kinds[e.kind]++
	}
	b.logf("visibility: GetProfile p50 %s ms, p99 %s ms (%d seen); ClickHouse p50 %s ms, p99 %s ms (%d seen); %d predictions missed",
		ms(res.profile.Median), ms(res.profile.P99), res.profileSeen, ms(res.ch.Median), ms(res.ch.P99), res.chSeen, res.missed)
	return res, nil
}

// visibility publishes evs open loop at b.visRate and times each from its
// intended send time until (a) GetProfile shows its label and (b)
// member_profiles FINAL holds its version. (a): a connection LISTENs on the
// tag engine's NOTIFY channel (sent in every transaction that changes
// labels, delivered at commit); on each notification, or every 20 ms, one
// query reads the label versions of the members still pending, and
// GetProfile is called for those whose version arrived; the event counts as
// visible when the response returns with the predicted value. (b): one
// query of member_profiles FINAL for the pending members every 5 ms.
func (b *tagsBench) visibility(ctx context.Context, client mcv1.ProfileServiceClient, producer *kafka.Client, topic string, evs []tagVisEvent) (tagVisResult, error) {
	n := len(evs)
	res := tagVisResult{sent: n}
	if n == 0 {
		return res, errors.New("no event changes a label: is the catalogue empty?")
	}
	seenP, seenC := make([]time.Time, n), make([]time.Time, n)
	// computed: member_features.updated_at of the new version (the
	// worker's clock when it computed the labels, inside the transaction);
	// committed: when the version query found the new version.
	computed, committed := make([]time.Time, n), make([]time.Time, n)
	missed := make([]bool, n)
	var published atomic.Int64
	quit := make(chan struct{})
	lc, err := pgx.Connect(ctx, b.benchURL)
	if err != nil {
		return res, err
	}
	defer lc.Close(context.Background())
	if _, err := lc.Exec(ctx, "LISTEN "+pgx.Identifier{tags.ExportChannel}.Sanitize()); err != nil {
		return res, err
	}
	var wg sync.WaitGroup
	var checkErr [2]error
	wg.Add(2)
	go func() { // (a) GetProfile
		defer wg.Done()
		remaining, lo := n, 0
		for remaining > 0 {
			select {
			case <-quit:
				return
			default:
			}
			wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
			_, err := lc.WaitForNotification(wctx)
			cancel()
			if err != nil && ctx.Err() != nil {
				checkErr[0] = ctx.Err()
				return
			}
			if lc.IsClosed() {
				checkErr[0] = fmt.Errorf("listen connection closed: %v", err)
				return
			}
			pub := int(published.Load())
			for lo < pub && (!seenP[lo].IsZero() || missed[lo]) {
				lo++
			}
			var idx []int
			var ids []uuid.UUID
			for i := lo; i < pub; i++ {
				if seenP[i].IsZero() && !missed[i] {
					idx, ids = append(idx, i), append(ids, evs[i].member)
				}
			}
			if len(idx) == 0 {
				continue
			}
			versions, updated := map[uuid.UUID]int64{}, map[uuid.UUID]time.Time{}
			rows, err := lc.Query(ctx, `SELECT member_id, version, updated_at FROM member_features WHERE member_id = ANY($1)`, ids)
			if err == nil {
				var id uuid.UUID
				var v int64
				var at time.Time
				_, err = pgx.ForEachRow(rows, []any{&id, &v, &at}, func() error { versions[id], updated[id] = v, at; return nil })
			}
			found := time.Now()
			if err != nil {
				checkErr[0] = err
				return
			}
			res.profileChecks++
			for _, i := range idx {
				if versions[evs[i].member] < evs[i].version {
					continue
				}
				computed[i], committed[i] = updated[evs[i].member], found
				rctx, cancel := context.WithTimeout(ctx, b.timeout)
				resp, err := client.GetProfile(rctx, &mcv1.GetProfileRequest{MemberId: evs[i].member.String()})
				cancel()
				if err != nil {
					checkErr[0] = fmt.Errorf("GetProfile: %w", err)
					return
				}
				if labelShown(resp.GetProfile(), &evs[i]) {
					seenP[i] = time.Now()
				} else {
					missed[i] = true
				}
				remaining--
			}
		}
	}()
	go func() { // (b) ClickHouse
		defer wg.Done()
		remaining, lo := n, 0
		for remaining > 0 {
			select {
			case <-quit:
				return
			case <-time.After(5 * time.Millisecond):
			}
			pub := int(published.Load())
			for lo < pub && !seenC[lo].IsZero() {
				lo++
			}
			want := map[string][]int{}
			var ids []string
			for i := lo; i < pub; i++ {
				if seenC[i].IsZero() {
					id := evs[i].member.String()
					want[id] = append(want[id], i)
					ids = append(ids, id)
				}
			}
			if len(ids) == 0 {
				continue
			}
			// Member ids are UUIDs: safe to inline (a bound slice is sent as
			// an array, which 18.16's IN refuses).
			rows, err := b.ch.Query(ctx, "SELECT member_id, version FROM "+clickhouse.ProfilesTable+" FINAL WHERE member_id IN ('"+
				strings.Join(ids, "', '")+"')")
			if err != nil {
				checkErr[1] = err
				return
			}
			got := map[string]uint64{}
			for rows.Next() {
				var id string
				var v uint64
				if err := rows.Scan(&id, &v); err != nil {
					rows.Close()
					checkErr[1] = err
					return
				}
				got[id] = v
			}
			err = rows.Err()
			rows.Close()
			if err != nil {
				checkErr[1] = err
				return
			}
			at := time.Now()
			res.chPoll++
			for id, is := range want {
				for _, i := range is {
					if v, ok := got[id]; ok && int64(v) >= evs[i].version {
						seenC[i] = at
						remaining--
					}
				}
			}
		}
	}()
	checkers := make(chan struct{})
	go func() { wg.Wait(); close(checkers) }()
	clock := newTagSpanClock(topic)
	b.e.tel.Tracers.RegisterSpanProcessor(clock)
	defer b.e.tel.Tracers.UnregisterSpanProcessor(clock)
	where := make([][2]int64, n)

	loop := &latencyBench{rate: b.visRate}
	mark := b.h.mark()
	var produceErr atomic.Pointer[error]
	intended, err := loop.openLoop(ctx, n, func(i int) {
		producer.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(evs[i].member.String()), Value: evs[i].value}, func(r *kgo.Record, err error) {
			if err != nil {
				produceErr.CompareAndSwap(nil, &err)
			}
			where[i] = [2]int64{int64(r.Partition), r.Offset}
		})
		published.Store(int64(i + 1))
	})
	if err != nil {
		close(quit)
		<-checkers
		b.h.since(mark)
		return res, err
	}
	select {
	case <-checkers:
	case <-time.After(30 * time.Second):
		b.logf("visibility: not every event seen 30 s after the last was sent")
		close(quit)
		<-checkers
	}
	res.use = b.h.since(mark)
	if err := producer.Flush(ctx); err != nil {
		return res, err
	}
	if p := produceErr.Load(); p != nil {
		return res, fmt.Errorf("produce: %w", *p)
	}
	for _, err := range checkErr {
		if err != nil {
			return res, err
		}
	}
	var dp, dc []time.Duration
	last := intended[0]
	for i := range n {
		if missed[i] {
			res.missed++
		}
		if !seenP[i].IsZero() {
			dp = append(dp, seenP[i].Sub(intended[i]))
			if seenP[i].After(last) {
				last = seenP[i]
			}
		}
		if !seenC[i].IsZero() {
			dc = append(dc, seenC[i].Sub(intended[i]))
		}
	}
	var dComputed, dCommitted, dRPC, dExport, dReceived, dProcess, dApply []time.Duration
	for i := range n {
		received, processed := clock.at(clock.receive, where[i]), clock.at(clock.process, where[i])
		if !received.IsZero() && !processed.IsZero() {
			dReceived = append(dReceived, received.Sub(intended[i]))
			dProcess = append(dProcess, processed.Sub(received))
			if !computed[i].IsZero() {
				dApply = append(dApply, computed[i].Sub(processed))
			}
		}
		if computed[i].IsZero() {
			continue
		}
		dComputed = append(dComputed, computed[i].Sub(intended[i]))
		dCommitted = append(dCommitted, committed[i].Sub(computed[i]))
		if !seenP[i].IsZero() {
			dRPC = append(dRPC, seenP[i].Sub(committed[i]))
		}
		if !seenC[i].IsZero() {
			dExport = append(dExport, seenC[i].Sub(committed[i]))
		}
	}
	for _, x := range []struct {
		ds  []time.Duration
		out *Summary
	}{{dComputed, &res.computed}, {dCommitted, &res.committed}, {dRPC, &res.rpc}, {dExport, &res.export},
		{dReceived, &res.received}, {dProcess, &res.handed}, {dApply, &res.apply}} {
		if len(x.ds) > 0 {
			*x.out = summarize(x.ds, time.Second)
		}
	}
	res.profileSeen, res.chSeen = len(dp), len(dc)
	if len(dp) > 0 {
		res.profile = summarize(dp, last.Sub(intended[0]))
	}
	if len(dc) > 0 {
		res.ch = summarize(dc, last.Sub(intended[0]))
	}
	return res, nil
}

// ---- 3. GetProfile ----

type tagGetRun struct {
	rate              int
	health, get       phaseResult
	healthUse, getUse phaseUse
}

func tagsGetProfile(ctx context.Context, conn *grpc.ClientConn, _ string, member uuid.UUID) error {
	resp, err := mcv1.NewProfileServiceClient(conn).GetProfile(ctx, &mcv1.GetProfileRequest{MemberId: member.String()})
	if err != nil {
		return err
	}
	if len(resp.GetProfile().GetLabels()) == 0 {
		return fmt.Errorf("member %s has no labels", member)
	}
	return nil
}

// ---- 4. CountSegment over synthetic profiles ----

type tagProfilesResult struct {
	rows, loaded uint64
	took         time.Duration
	reloadReason string
	columns      int
}

// preloadProfiles makes member_profiles hold b.profiles synthetic rows of
// the catalogue in force: kept from an earlier run when there are enough
// for this catalogue version, else the table is recreated and loaded with
// one INSERT … SELECT FROM numbers() with random values per column.
func (b *tagsBench) preloadProfiles(ctx context.Context) (tagProfilesResult, error) {
	c := b.svc.Catalog()
	cols := c.Columns()
	res := tagProfilesResult{columns: len(cols)}
	if err := clickhouse.EnsureProfiles(ctx, b.ch, cols); err != nil {
		return res, err
	}
	version := strings.ReplaceAll(strings.ReplaceAll(c.Version, `\`, `\\`), `'`, `\'`)
	var all, current uint64
	if err := b.ch.QueryRow(ctx, "SELECT count(), countIf(catalog_version = '"+version+"') FROM "+clickhouse.ProfilesTable+
		" WHERE member_id LIKE '"+tagBenchSynthetic+"%'").Scan(&all, &current); err != nil {
		return res, err
	}
	if current == uint64(b.profiles) && all == current {
		res.rows = current
		b.logf("profiles: %d synthetic profiles of catalogue %s present; reusing", current, c.Version)
		return res, nil
	}
	switch {
	case all == 0:
		res.reloadReason = "none present"
	case current != all:
		res.reloadReason = "the catalogue version changed"
	default:
		res.reloadReason = fmt.Sprintf("%d present, %d wanted", all, b.profiles)
	}
	if all > 0 {
		// The bench database's table only: real rows written by earlier
		// runs' exporters go too.
		if err := b.ch.Exec(ctx, "DROP TABLE IF EXISTS "+clickhouse.ProfilesTable); err != nil {
			return res, err
		}
		if err := clickhouse.EnsureProfiles(ctx, b.ch, cols); err != nil {
			return res, err
		}
	}
	b.logf("profiles: loading %d synthetic profiles with %d label columns (%s)", b.profiles, len(cols), res.reloadReason)
	names := []string{"member_id", "version", "updated_at", "catalog_version", "behavioural_withheld"}
	exprs := []string{"concat('" + tagBenchSynthetic + "', toString(number))", "toUInt64(1)", "now()", "'" + version + "'", "toUInt8(0)"}
	for i, col := range cols {
		l := c.Label(col.Name)
		r1, r2 := strconv.Itoa(2*i+1), strconv.Itoa(2*i+2)
		var v, typ string
		switch col.Type {
		case clickhouse.LabelBool:
			v, typ = "toUInt8(rand("+r2+") % 2)", "Nullable(UInt8)"
		case clickhouse.LabelEnum:
			values := []string{"a", "b", "c"}
			if l != nil && len(l.Values) > 0 {
				values = l.Values
			}
			quoted := make([]string, len(values))
			for k, s := range values {
				quoted[k] = "'" + strings.ReplaceAll(s, "'", `\'`) + "'"
			}
			v, typ = "arrayElement(["+strings.Join(quoted, ", ")+"], rand("+r2+") % "+strconv.Itoa(len(values))+" + 1)", "Nullable(String)"
		default:
			typ = "Nullable(Float64)"
			switch id := col.Name; {
			case strings.Contains(id, "score"):
				v = "toFloat64(rand(" + r2 + ") % 5 + 1)"
			case strings.Contains(id, "share") || strings.Contains(id, "rate") || strings.Contains(id, "ratio") || strings.Contains(id, "risk"):
				v = "round(rand(" + r2 + ") / 4294967296, 3)"
			case strings.Contains(id, "days"):
				v = "toFloat64(rand(" + r2 + ") % 366)"
			default:
				v = "round(exp(rand(" + r2 + ") / 4294967296 * 8), 2)"
			}
		}
		names = append(names, "`"+col.Name+"`")
		// One label in ten is absent (NULL).
		exprs = append(exprs, "if(rand("+r1+") % 10 = 0, CAST(NULL AS "+typ+"), CAST("+v+" AS "+typ+"))")
	}
	q := "INSERT INTO " + clickhouse.ProfilesTable + " (" + strings.Join(names, ", ") + ") SELECT " + strings.Join(exprs, ", ") +
		" FROM numbers(" + strconv.Itoa(b.profiles) + ")"
	// Blocks of 100,000 rows: a million rows of 200+ columns in one block
	// would take gigabytes of server memory.
	ictx := chgo.Context(ctx, chgo.WithSettings(chgo.Settings{"min_insert_block_size_rows": 100_000, "max_block_size": 65_536}))
	start := time.Now()
	if err := b.ch.Exec(ictx, q); err != nil {
		return res, fmt.Errorf("load: %w", err)
	}
	res.took = time.Since(start)
	res.loaded, res.rows = uint64(b.profiles), uint64(b.profiles)
	b.logf("profiles: loaded in %s", res.took.Round(time.Millisecond))
	return res, nil
}

// tagSegmentExpr is the default expression: the example when the
// catalogue has its labels, else one enum, one bool and one number label
// of the catalogue.
func tagSegmentExpr(c *tags.Catalog) (string, error) {
	if l := c.Label("lifecycle_stage"); l != nil && l.Type == tags.TypeEnum && slices.Contains(l.Values, "loyal") {
		if a := c.Label("affinity_coffee"); a != nil && a.Type == tags.TypeBool {
			if m := c.Label("rfm_m_score"); m != nil && m.Type == tags.TypeNumber {
				return `lifecycle_stage == "loyal" && affinity_coffee && rfm_m_score >= 4`, nil
			}
		}
	}
	var parts []string
	for _, typ := range []string{tags.TypeEnum, tags.TypeBool, tags.TypeNumber} {
		for _, l := range c.SortedLabels() {
			if l.Type != typ {
				continue
			}
			switch typ {
			case tags.TypeEnum:
				if len(l.Values) == 0 {
					continue
				}
				parts = append(parts, fmt.Sprintf("%s == %q", l.ID, l.Values[len(l.Values)-1]))
			case tags.TypeBool:
				parts = append(parts, l.ID)
			default:
				threshold := "100"
				switch {
				case strings.Contains(l.ID, "score"):
					threshold = "4"
				case strings.Contains(l.ID, "share") || strings.Contains(l.ID, "rate") || strings.Contains(l.ID, "ratio") || strings.Contains(l.ID, "risk"):
					threshold = "0.5"
				}
				parts = append(parts, l.ID+" >= "+threshold)
			}
			break
		}
	}
	if len(parts) == 0 {
		return "", errors.New("the catalogue has no label to build a segment from; pass --segment")
	}
	return strings.Join(parts, " && "), nil
}

type tagSegResult struct {
	expr, sql                       string
	matched, final, plain, direct   uint64
	countS, finalS, plainS, directS Summary
	compile                         Summary
	runs                            int
	parts, partRows                 uint64
}

// segments times CountSegment through the gRPC service and the two floor
// queries, interleaved so that each sees the same machine.
func (b *tagsBench) segments(ctx context.Context, client mcv1.ProfileServiceClient) (tagSegResult, error) {
	var res tagSegResult
	var err error
	if res.expr = b.segmentExpr; res.expr == "" {
		if res.expr, err = tagSegmentExpr(b.svc.Catalog()); err != nil {
			return res, err
		}
	}
	// The table as measured: active parts (FINAL merges across them).
	if err := b.ch.QueryRow(ctx, `SELECT count(), sum(rows) FROM system.parts WHERE database = currentDatabase() AND table = '`+
		clickhouse.ProfilesTable+`' AND active`).Scan(&res.parts, &res.partRows); err != nil {
		return res, err
	}
	count := func() error {
		rctx, cancel := context.WithTimeout(ctx, b.timeout)
		defer cancel()
		resp, err := client.CountSegment(rctx, &mcv1.CountSegmentRequest{Expression: res.expr})
		if err != nil {
			return err
		}
		res.matched, res.sql = resp.GetMembers(), resp.GetSql()
		return nil
	}
	final := func() error {
		return b.ch.QueryRow(ctx, "SELECT count() FROM "+clickhouse.ProfilesTable+" FINAL").Scan(&res.final)
	}
	plain := func() error {
		return b.ch.QueryRow(ctx, "SELECT count() FROM "+clickhouse.ProfilesTable).Scan(&res.plain)
	}
	// The SQL the server runs, straight to ClickHouse: CountSegment minus
	// the gRPC call and the compilation.
	direct := func() error {
		return b.ch.QueryRow(ctx, "SELECT count() FROM "+clickhouse.ProfilesTable+" FINAL WHERE "+res.sql).Scan(&res.direct)
	}
	fns := []func() error{plain, final, count, direct}
	b.logf("segments: CountSegment %q, %d runs beside count() FINAL and count()", res.expr, b.segmentRuns)
	for range 2 { // warm-up; count first, it provides the SQL
		for _, fn := range []func() error{count, plain, final, direct} {
			if err := fn(); err != nil {
				return res, err
			}
		}
	}
	lat := make([][]time.Duration, len(fns))
	var elapsed [4]time.Duration
	for i := range b.segmentRuns {
		for k := range fns {
			j := (i + k) % len(fns) // rotate, so no query always follows the same one
			t := time.Now()
			if err := fns[j](); err != nil {
				return res, err
			}
			d := time.Since(t)
			lat[j] = append(lat[j], d)
			elapsed[j] += d
		}
	}
	res.runs = b.segmentRuns
	res.plainS, res.finalS, res.countS = summarize(lat[0], elapsed[0]), summarize(lat[1], elapsed[1]), summarize(lat[2], elapsed[2])
	res.directS = summarize(lat[3], elapsed[3])
	// The compilation the server does on each call, in this process.
	labels := b.svc.Catalog().SegmentLabels()
	var cs []time.Duration
	for range b.segmentRuns {
		t := time.Now()
		if _, err := segment.Compile(res.expr, labels); err != nil {
			return res, err
		}
		cs = append(cs, time.Since(t))
	}
	res.compile = summarize(cs, time.Second)
	b.logf("segments: CountSegment p50 %s ms (%d members), count() FINAL p50 %s ms, count() p50 %s ms",
		ms(res.countS.Median), res.matched, ms(res.finalS.Median), ms(res.plainS.Median))
	return res, nil
}

// ---- report ----

func tagMachine() string {
	model := ""
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.Lines(string(raw)) {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		for l := range strings.Lines(string(raw)) {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				mem = fmt.Sprintf("%.0f GiB", kb/1024/1024)
			}
		}
	}
	kernel := ""
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(raw))
	}
	parts := []string{fmt.Sprintf("%d cores", runtime.NumCPU())}
	for _, s := range []string{model, mem, kernel} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ", ")
}

func topCounts(m map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || (all[i].v == all[j].v && all[i].k < all[j].k) })
	parts := make([]string, 0, n)
	for _, e := range all[:min(n, len(all))] {
		parts = append(parts, fmt.Sprintf("`%s` %d", e.k, e.v))
	}
	if len(all) > n {
		parts = append(parts, fmt.Sprintf("%d others", len(all)-n))
	}
	return strings.Join(parts, ", ")
}

func (b *tagsBench) report(r *tagsReport) {
	w := b.out
	c := r.catalog
	ratio := func(a, f time.Duration) string {
		if f <= 0 || a <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f×", float64(a)/float64(f))
	}
	perEvent := func(u phaseUse, n int) (string, string, string) {
		if n <= 0 {
			return "–", "–", "–"
		}
		trips := fmt.Sprintf("%.1f", float64(u.trips)/float64(n))
		if !u.cpu.ok {
			return trips, "–", "–"
		}
		return trips, fmt.Sprintf("%.3f", u.cpu.selfSecs*1000/float64(n)), fmt.Sprintf("%.3f", u.cpu.postgresSecs*1000/float64(n))
	}
	busy := func(u phaseUse) string {
		if !u.cpu.ok {
			return "–"
		}
		return fmt.Sprintf("%.2f", u.cpu.machine)
	}
	types := map[string]int{}
	for _, l := range c.Labels {
		types[l.Type]++
	}
	fmt.Fprintf(w, "Machine: %s; GOMAXPROCS %d. PostgreSQL %s, ClickHouse %s, Kafka (KRaft, one broker), all on loopback and shared with the benchmark process.\n",
		tagMachine(), runtime.GOMAXPROCS(0), r.pgVersion, r.chVersion)
	fmt.Fprintf(w, "Catalogue `%s`: %d labels (%d bool, %d enum, %d number) and %d purchase filters.\n",
		c.Version, len(c.Labels), types[tags.TypeBool], types[tags.TypeEnum], types[tags.TypeNumber], len(c.Filters))
	fmt.Fprintf(w, "Run: `%s`.\n\n", b.commandLine())
	fmt.Fprintf(w, "Members: %s members of `%s` without tag state (%s created this run), each given %d history events through `tags.Service.Apply` in %s (a sign-up with birth date, gender and city 300–365 days ago, then the mix at random times since). When the latency measurements began they held on average %.1f purchases and %.1f other records in their feature state (%.0f bytes of JSONB) and %.1f labels. Event mix: 70%% transactions of 1–4 lines over coffee, tea, bakery, dairy, fresh, snacks, beverages, household, beauty, baby and pet (¥5–¥200 a unit), 5%% refunds of an earlier order, 7%% check-ins, 7%% browses, 5%% store visits, 3%% shares, 3%% reviews; POS 55%%, app 20%%, mini-program 15%%, web 10%%.\n\n",
		thousands(int64(len(b.used))), benchDatabase, thousands(int64(r.pool.created)), b.history, r.history.Round(time.Second),
		r.state.purchases, r.state.acts, r.state.stateBytes, r.state.labels)

	// 1.
	fmt.Fprintf(w, "### Tag worker throughput\n\n")
	fmt.Fprintf(w, "The worker's effect path: %d events of the mix per row for random members of the run, applied with `tags.Service.Apply` (one PostgreSQL transaction per event: processed-event mark, canonical member, member lock, feature state, consent and device load, fold, features, the labels the event can change, and when labels changed the outbox, `member_labels` and the export queue), events partitioned by member over the appliers. The floor is one autocommitted `INSERT … ON CONFLICT DO UPDATE` of a per-member row in a scratch table per event, with the same partitioning and concurrency, in the same run. Per event: PostgreSQL round trips counted from the pgx spans; CPU of this process and of PostgreSQL from /proc.\n\n", b.events)
	fmt.Fprintf(w, "| appliers | events | Apply (events/s) | Apply p50 ms | Apply p99 ms | floor: upsert (events/s) | upsert p50 ms | upsert p99 ms | Apply ÷ floor (events/s) | machine busy (cores): Apply / floor | PG round trips / event | membercenter CPU ms / event | PostgreSQL CPU ms / event | errors |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var firstErr error
	for i, a := range r.applied {
		u := r.upserted[i]
		share := "–"
		if u.rate() > 0 {
			share = fmt.Sprintf("%.2f×", a.rate()/u.rate())
		}
		trips, self, pg := perEvent(a.use, a.events-a.errors)
		fmt.Fprintf(w, "| %d | %d | %.0f | %s | %s | %.0f | %s | %s | %s | %s / %s | %s | %s | %s | %d |\n", a.workers, a.events, a.rate(),
			ms(a.lat.Median), ms(a.lat.P99), u.rate(), ms(u.lat.Median), ms(u.lat.P99), share, busy(a.use), busy(u.use), trips, self, pg, a.errors+u.errors)
		for _, e := range []error{a.firstErr, u.firstErr} {
			if e != nil && firstErr == nil {
				firstErr = e
			}
		}
	}
	if firstErr != nil {
		fmt.Fprintf(w, "\nFirst error: %v\n", firstErr)
	}
	if r.profileWritten != "" {
		fmt.Fprintf(w, "\nCPU profile of the run with %d appliers: `%s`.\n", b.appliers[len(b.appliers)-1], r.profileWritten)
	}
	fmt.Fprintln(w)
	if k := r.kafka; k != nil {
		fmt.Fprintf(w, "Over Kafka: %d events of the mix (keyed by member id) published to a scratch member-events topic of 6 partitions in %s, then consumed twice: by a plain franz-go client with no logic (the floor), and by the tag worker (`worker.New` with the tag service, as `platform.Run` builds it: partitions in parallel, each in order, offsets committed after the effects). The floor's rate runs from its client's start to the last record; the worker's from the first record applied to the last, so its group join (shown apart) does not count against it. Records in process at once: the summed durations of the worker's per-record process spans over its run time (6 would mean every partition busy all the time).\n\n",
			k.events, k.publish.Round(time.Millisecond))
		fmt.Fprintf(w, "| path | events | events/s | first record after | ÷ floor (events/s) | records in process at once (avg) | machine busy (cores) | PG round trips / event | membercenter CPU ms / event | PostgreSQL CPU ms / event |\n|---|---|---|---|---|---|---|---|---|---|\n")
		fr := float64(k.events) / k.floor.Seconds()
		wr := float64(k.events-1) / k.worker.Seconds()
		_, fself, fpg := perEvent(k.floorUse, k.events)
		trips, self, pg := perEvent(k.workerUse, k.events)
		fmt.Fprintf(w, "| floor: plain franz-go consume, no logic | %d | %.0f | %s | 1.0× | – | %s | 0 | %s | %s |\n", k.events, fr, k.floorJoin.Round(time.Millisecond), busy(k.floorUse), fself, fpg)
		fmt.Fprintf(w, "| tag worker → PostgreSQL | %d | %.0f | %s | %.4f× | %.2f | %s | %s | %s | %s |\n", k.events, wr, k.workerJoin.Round(time.Millisecond), wr/fr, b.inFlight, busy(k.workerUse), trips, self, pg)
		if k.workerErrs > 0 {
			fmt.Fprintf(w, "\nThe worker's applier failed %d times (retried by the consumer; see the server log).\n", k.workerErrs)
		}
		fmt.Fprintln(w)
	}

	// 2.
	v := r.vis
	fmt.Fprintf(w, "### Event → label visible\n\n")
	fmt.Fprintf(w, "The platform runs in this process with stage `tags` (tag worker, sweeper, profile exporter) and service `profile` behind the production gRPC stack, on scratch topics, after the exporter and sweeper caught up with the direct measurements (%s). For each measured event a member of the run (each used once) and an event of the mix are chosen so that the event changes at least one label, by evaluating what the engine will compute from the member's stored state with the engine's own functions (fold, trim, features, the labels the event's kind can change); members due for a sweep within two minutes are skipped. Events are published to the member-events topic open loop at %d/s after %d unmeasured ones and timed from their intended send time. GetProfile: a connection LISTENs on the tag engine's NOTIFY channel (sent by every transaction that changes labels, delivered at its commit); on each notification (or every 20 ms) one query reads the label version of the members still pending, and for each whose new version is there `ProfileService.GetProfile` is called over gRPC; the time is taken when the response shows the predicted value. ClickHouse: one `SELECT member_id, version FROM member_profiles FINAL WHERE member_id IN (…pending…)` every 5 ms; the time is taken when the query returns with the new version. The floor is a plain franz-go produce → consume round trip on a scratch topic of the same broker at the same rate, in the same run.\n\n",
		r.drained.Round(time.Millisecond), b.visRate, v.warm)
	fmt.Fprintf(w, "| path | events | rate (ev/s) | p50 ms | p99 ms | max ms | p50 ÷ floor | p99 ÷ floor | not seen in 30 s |\n|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| floor: Kafka produce → consume (same broker, same run) | %d | %d | %s | %s | %s | 1.0× | 1.0× | 0 |\n", r.visFloor.N, b.visRate,
		ms(r.visFloor.Median), ms(r.visFloor.P99), ms(r.visFloor.Max))
	visRow := func(name string, s Summary, seen int) {
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %s | %s | %s | %d |\n", name, v.sent, b.visRate, ms(s.Median), ms(s.P99), ms(s.Max),
			ratio(s.Median, r.visFloor.Median), ratio(s.P99, r.visFloor.P99), v.sent-seen)
	}
	visRow("member event → label in `GetProfile`", v.profile, v.profileSeen)
	visRow("member event → new version in ClickHouse `member_profiles FINAL`", v.ch, v.chSeen)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Where the time goes (each stage's own distribution, so the rows do not add up):\n\n| stage | events | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n")
	stage := func(name string, s Summary) {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", name, s.N, ms(s.Median), ms(s.P99), ms(s.Max))
	}
	stage("intended send → labels computed by the tag worker (`member_features.updated_at`, inside its transaction)", v.computed)
	stage("· of which intended send → record buffered by the worker's Kafka client (its receive span starts)", v.received)
	stage("· of which buffered → handed to the tag service (its process span starts)", v.handed)
	stage("· of which handed → labels computed (processed mark, member lock, state load, fold, features, labels)", v.apply)
	stage("labels computed → committed and seen (NOTIFY, then the version query)", v.committed)
	stage("seen committed → `GetProfile` response with the label", v.rpc)
	stage("seen committed → ClickHouse poll with the new version (profile exporter)", v.export)
	fmt.Fprintln(w)
	if u := v.use.cpu; u.ok {
		fmt.Fprintf(w, "While the measured events ran, the machine was %.2f cores busy of %d: this process (worker, exporter, sweeper, server and the checkers) %.2f, PostgreSQL %.2f, Kafka %.2f.\n", u.machine, runtime.NumCPU(), u.self, u.postgres, u.kafka)
	}
	fmt.Fprintf(w, "Events: %s. Labels watched: %s.", topCounts(v.kinds, 9), topCounts(v.labels, 6))
	if v.sent < v.wanted {
		fmt.Fprintf(w, " Only %d of %d wanted events could be chosen (members due for a sweep soon, or no event of eight tries changed a label).", v.sent, v.wanted)
	}
	if v.missed > 0 {
		fmt.Fprintf(w, " For %d events GetProfile showed the new label version with another value than predicted (counted as not seen).", v.missed)
	}
	fmt.Fprintf(w, " %d version queries and %d ClickHouse polls were made.\n\n", v.profileChecks, v.chPoll)

	// 3.
	rates := make([]string, len(b.rates))
	for i, rate := range b.rates {
		rates[i] = thousands(int64(rate))
	}
	fmt.Fprintf(w, "### GetProfile at %s requests/s\n\n", strings.Join(rates, " and "))
	fmt.Fprintf(w, "`ProfileService.GetProfile` of a random member of the run (attributes, consents, balance, tier and every label: one PostgreSQL round trip) over %d client connections, open loop, each request in its own goroutine, timed from its intended send time after an unmeasured %s warm-up, on the same server while the tag stage runs idle; client and server share this process, so its CPU is both. The floor is `grpc.health.v1.Health/Check` on the same server, client and connections at the same rate in the same run, just before.\n\n", b.conns, resolveWarmup)
	fmt.Fprintf(w, "| scenario | requests | target rate (req/s) | achieved (req/s) | p50 ms | p99 ms | max ms | errors | p50 ÷ floor | p99 ÷ floor | machine busy (cores) | PG round trips / request | membercenter CPU ms / request | PostgreSQL CPU ms / request |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, run := range r.gets {
		row := func(name string, p phaseResult, u phaseUse) {
			trips, self, pg := perEvent(u, p.sent-p.errors)
			fmt.Fprintf(w, "| %s | %d | %d | %.0f | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", name, p.sent, run.rate, p.Throughput,
				ms(p.Median), ms(p.P99), ms(p.Max), p.errors, ratio(p.Median, run.health.Median), ratio(p.P99, run.health.P99), busy(u), trips, self, pg)
		}
		row("floor: grpc.health.v1.Health/Check (same server, same run)", run.health, run.healthUse)
		row("ProfileService.GetProfile, random member of the run", run.get, run.getUse)
	}
	fmt.Fprintln(w)
	for _, run := range r.gets {
		for _, x := range []struct {
			name string
			p    phaseResult
		}{{"Health/Check", run.health}, {"GetProfile", run.get}} {
			if x.p.errors > 0 {
				fmt.Fprintf(w, "%s at %d req/s errors by status: %s.\n", x.name, run.rate, countsByCode(x.p.byCode))
			}
		}
	}
	target := r.gets[len(r.gets)-1]
	for _, run := range r.gets {
		if run.rate == 2000 {
			target = run
		}
	}
	met := "met"
	if target.get.P99 > 5*time.Millisecond || target.get.errors > 0 || target.get.Throughput < 0.98*float64(target.rate) {
		met = "**not met**"
	}
	fmt.Fprintf(w, "Issue 5's target, GetProfile p99 ≤ 5 ms at 2,000 requests/s: %s at %s requests/s (achieved %.0f/s, p99 %s ms).\n\n",
		met, thousands(int64(target.rate)), target.get.Throughput, ms(target.get.P99))

	// 4.
	s := r.seg
	fmt.Fprintf(w, "### CountSegment over %s member profiles\n\n", thousands(int64(r.profiles.rows)))
	loaded := "kept from an earlier run"
	if r.profiles.loaded > 0 {
		loaded = fmt.Sprintf("loaded this run in %s (%s)", r.profiles.took.Round(time.Second), r.profiles.reloadReason)
	}
	fmt.Fprintf(w, "ClickHouse database `%s`, table `member_profiles` (ReplacingMergeTree by version, one Nullable column per label): %s synthetic profiles with %d label columns, random values per column generated in SQL (one label in ten absent), %s; plus the rows the exporter wrote for real members; %s rows in %d active parts when measured. `ProfileService.CountSegment` (segment compiled from the catalogue, then `SELECT count() FROM member_profiles FINAL WHERE …` by the server) is called over gRPC %d times, interleaved with the two floors run directly with clickhouse-go: `SELECT count() FROM member_profiles FINAL` (the same table read as current profiles, no condition) and a plain `SELECT count() FROM member_profiles`, and with the server's SQL sent straight to ClickHouse (a reference that leaves out gRPC and the compilation). Each query is warmed up twice; with %d runs, p99 is the second slowest or slowest run.\n\n",
		benchDatabase, thousands(int64(r.profiles.rows)), r.profiles.columns, loaded, thousands(int64(s.partRows)), s.parts, s.runs, s.runs)
	fmt.Fprintf(w, "Expression: `%s` → `%s`.\n\n", s.expr, s.sql)
	fmt.Fprintf(w, "| query | runs | members counted | p50 ms | p99 ms | max ms | p50 ÷ count() FINAL | p50 ÷ plain count() |\n|---|---|---|---|---|---|---|---|\n")
	segRow := func(name string, sum Summary, n uint64) {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", name, sum.N, thousands(int64(n)), ms(sum.Median), ms(sum.P99), ms(sum.Max),
			ratio(sum.Median, s.finalS.Median), ratio(sum.Median, s.plainS.Median))
	}
	segRow("floor: `SELECT count() FROM member_profiles`", s.plainS, s.plain)
	segRow("floor: `SELECT count() FROM member_profiles FINAL`", s.finalS, s.final)
	segRow("reference: the compiled SQL straight to ClickHouse (`… FINAL WHERE <condition>`)", s.directS, s.direct)
	segRow("`ProfileService.CountSegment`, 3 labels", s.countS, s.matched)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "`segment.Compile` of the expression against the catalogue, which the server does on every call, takes p50 %s ms (p99 %s ms) in this process: %s of the plain `count()` floor's p50 and %.1f%% of CountSegment's.\n\n",
		ms(s.compile.Median), ms(s.compile.P99), ratio(s.compile.Median, s.plainS.Median), 100*float64(s.compile.Median)/float64(s.countS.Median))
}
