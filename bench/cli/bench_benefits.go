package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/worker"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/platform"
)

// benefitsCmd is issue 4's benchmark: Quote and Commit over gRPC, and
// the benefit worker's events per second, each beside its floor.
func benefitsCmd(stdout io.Writer) *cobra.Command {
	b := &benefitsBench{bench: bench{name: "benefits", out: stdout}}
	cmd := &cobra.Command{
		Use:   "benefits",
		Short: "BenefitsService.Quote and Commit over gRPC beside a health check; benefit-worker events/s beside a plain PostgreSQL upsert and a plain Kafka consume",
		Long: `Uses the dedicated database ` + benchDatabase + ` on the configured PostgreSQL
server (created and migrated when missing; shared with 'mc-bench resolve', whose
preloaded members it reuses). Each run gives --warm members without loyalty
history a history: they are drawn at random from the --members earliest such
members of the database (created by COPY when it holds fewer) and get three
Commits each through the service, dated 70, 40 and 10 days ago, so every
measured request loads a real ledger, lots, tier inputs, missions and coupons,
consistent with the ledger invariants (checked at the end).

Then it serves the BenefitsService in process with the production gRPC stack
(platform.Run with only the benefits service) and, open loop with each request
in its own goroutine and after an unmeasured 3 s warm-up per scenario, times
from each request's intended send time: grpc.health.v1.Health/Check on the same
server (the floor) and Quote of a random basket for a random warmed member at
--rate, then Commit of a fresh order (unique order id and idempotency key) at
each --commit-rate. Then Commit closed loop with --commit-concurrency callers
for --saturation (profiled with --cpuprofile). The service applies concurrent
Commits in groups, one transaction for whatever is queued when a committer is
free, so a closed loop measures throughput only with enough calls in flight to
fill groups: 16 callers bound it by latency (16 ÷ a group's time), hence the
default of 128.

Last, the benefit worker: --events Transaction member events for warmed
members applied with benefits.Service.Apply by each number of --appliers
concurrent appliers (events partitioned by member, so one member's events stay
in order), beside one ` + pgbench.MemberFloorStatement + ` per event into a scratch
table with the same partitioning and concurrency (the floor); and --kafka-events events
published to a scratch member-events topic and consumed by the benefit worker
(worker.New with the benefits applier), beside a plain franz-go consume of the
same topic. Prints Markdown; progress goes to stderr.`,
		RunE: b.runE(b.run),
	}
	f := cmd.Flags()
	f.IntVar(&b.members, "members", 20_000, "members without loyalty history the warmed members are drawn from (the database's earliest; created when missing)")
	f.IntVar(&b.warm, "warm", 2000, "members given a history of three Commits; every measured request is for one of them")
	f.IntVar(&b.rate, "rate", 2000, "Health/Check and Quote requests per second (open loop)")
	f.IntSliceVar(&b.commitRates, "commit-rate", []int{500}, "Commit requests per second (open loop); a list measures each rate")
	f.DurationVar(&b.duration, "duration", 20*time.Second, "measured time per open-loop scenario (after a 3 s warm-up)")
	f.IntVar(&b.commitWorkers, "commit-concurrency", 128, "closed-loop Commit callers (saturation run, its floor and history commits); enough to fill the service's commit groups")
	f.DurationVar(&b.saturation, "saturation", 10*time.Second, "length of the closed-loop Commit run")
	f.IntVar(&b.events, "events", 4000, "member events applied directly per applier count, and upserts of the floor")
	f.IntSliceVar(&b.appliers, "appliers", []int{1, 4, 8}, "concurrent appliers (and upserters) to measure")
	f.IntVar(&b.kafkaEvents, "kafka-events", 20_000, "member events through Kafka and the benefit worker (0 skips the Kafka path)")
	f.IntVar(&b.conns, "conns", 4, "gRPC client connections the requests are spread over")
	f.DurationVar(&b.timeout, "timeout", 30*time.Second, "deadline of each request; one that passes counts as an error")
	f.StringVar(&b.cpuProfile, "cpuprofile", "", "write a CPU profile of this process during the closed-loop Commit run to this file")
	f.StringVar(&b.quoteProfile, "quote-cpuprofile", "", "write a CPU profile of this process (client and server) during the Quote run, its warm-up included, to this file")
	return cmd
}

type benefitsBench struct {
	bench

	members, warm, rate, commitWorkers, events, kafkaEvents, conns int
	commitRates, appliers                                          []int
	duration, saturation, timeout                                  time.Duration
	cpuProfile, quoteProfile                                       string

	runID    string
	benchURL string
	pool     *pgxpool.Pool
	svc      *benefits.Service // the worker's effect path, applied directly
	clients  []*grpc.ClientConn
	warmed   []uuid.UUID
	trips    *pgRoundTrips
	tracer   trace.Tracer
}

func (b *benefitsBench) validate() error {
	var errs []error
	if b.warm < 1 || b.members < b.warm {
		errs = append(errs, errors.New("--warm must be positive and at most --members"))
	}
	if b.rate < 1 || b.duration < time.Second || b.saturation < time.Second {
		errs = append(errs, errors.New("--rate must be positive; --duration and --saturation at least 1s"))
	}
	for _, r := range b.commitRates {
		if r < 1 {
			errs = append(errs, errors.New("--commit-rate values must be positive"))
		}
	}
	for _, k := range b.appliers {
		if k < 1 {
			errs = append(errs, errors.New("--appliers values must be positive"))
		}
	}
	if b.events < 1 || b.kafkaEvents < 0 || b.commitWorkers < 1 || b.conns < 1 || b.timeout <= 0 {
		errs = append(errs, errors.New("--events, --commit-concurrency, --conns and --timeout must be positive; --kafka-events not negative"))
	}
	return errors.Join(errs...)
}

// benefitsReport is everything the run measured.
type benefitsReport struct {
	pool                      poolResult
	history                   time.Duration
	before, after             warmState
	floor, quote              phaseResult
	floorUse, quoteUse        phaseUse
	commits                   []phaseResult
	commitUses                []phaseUse
	saturated                 closedResult
	saturatedUse              phaseUse
	applied, upserted         []throughput
	kafka                     *kafkaResult
	bad, checked              int
	weekday                   string
	weekend                   bool
	quoteEarned, commitEarned float64
	invariantErr              error
	profileWritten            string
	measuredFrom              time.Time
}

func (b *benefitsBench) run(ctx context.Context) error {
	if err := b.validate(); err != nil {
		return err
	}
	b.runID = fmt.Sprintf("bb%x", time.Now().UnixNano()&0xffffffffff)
	p, url, err := b.openBenchDB(ctx, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	b.pool, b.benchURL = p.Pool(), url
	b.svc = benefits.New(b.pool, changesWriter(b.e), b.e.Tel.Logger)
	if err := b.svc.Reload(ctx); err != nil { // the programme the server runs
		return err
	}
	// PostgreSQL round trips, counted from the pgx spans the production
	// tracer records under each RPC's (or worker record's) span.
	b.trips = &pgRoundTrips{}
	b.e.Tel.AddSpanProcessor(b.trips)
	defer b.e.Tel.RemoveSpanProcessor(b.trips)
	b.tracer = b.e.Tel.Tracers.Tracer("github.com/membercenter/membercenter/bench/cli")

	var r benefitsReport
	if r.pool, err = b.pickMembers(ctx); err != nil {
		return fmt.Errorf("members: %w", err)
	}

	// The production server, with only the benefits service.
	running, clients, err := serve(ctx, p, platform.Options{Services: []string{"benefits"}}, b.conns)
	if err != nil {
		return err
	}
	defer running.Stop()
	b.clients = clients

	b.logf("history: 3 Commits for each of %d members (70, 40 and 10 days ago), %d callers", len(b.warmed), b.commitWorkers)
	if r.history, err = b.giveHistory(ctx); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	b.logf("history: %d commits in %s", 3*len(b.warmed), r.history.Round(time.Millisecond))
	if r.before, err = b.state(ctx); err != nil {
		return err
	}
	loc := b.svc.Program().Location
	r.measuredFrom = time.Now()
	wd := r.measuredFrom.In(loc).Weekday()
	r.weekday, r.weekend = wd.String(), wd == time.Saturday || wd == time.Sunday

	n := int(float64(b.rate) * b.duration.Seconds())
	b.logf("floor: grpc.health.v1.Health/Check, %d requests at %d/s after a %s warm-up", n, b.rate, resolveWarmup)
	if r.floor, r.floorUse, err = b.openPhase(ctx, "health", b.rate, healthCheck[uuid.UUID]); err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	b.logf("floor: p50 %s ms, p99 %s ms, %d errors", ms(r.floor.Median), ms(r.floor.P99), r.floor.errors)

	var quoted, quotedPoints atomic.Int64
	b.logf("quote: BenefitsService.Quote, %d requests at %d/s after a %s warm-up", n, b.rate, resolveWarmup)
	stopProfile, err := startCPUProfile(b.quoteProfile)
	if err != nil {
		return err
	}
	r.quote, r.quoteUse, err = b.openPhase(ctx, "quote", b.rate, b.quoteCall(&quoted, &quotedPoints))
	stopProfile()
	if err != nil {
		return fmt.Errorf("quote: %w", err)
	}
	b.logf("quote: p50 %s ms, p99 %s ms, %.0f/s, %d errors", ms(r.quote.Median), ms(r.quote.P99), r.quote.Throughput, r.quote.errors)
	if q := quoted.Load(); q > 0 {
		r.quoteEarned = float64(quotedPoints.Load()) / float64(q)
	}

	var committed, committedPoints atomic.Int64
	for _, rate := range b.commitRates {
		n := int(float64(rate) * b.duration.Seconds())
		b.logf("commit: BenefitsService.Commit, %d requests at %d/s after a %s warm-up", n, rate, resolveWarmup)
		res, use, err := b.openPhase(ctx, "commit"+strconv.Itoa(rate), rate, b.commitCall(&committed, &committedPoints))
		if err != nil {
			return fmt.Errorf("commit at %d/s: %w", rate, err)
		}
		b.logf("commit at %d/s: p50 %s ms, p99 %s ms, %.0f/s achieved, %d errors", rate, ms(res.Median), ms(res.P99), res.Throughput, res.errors)
		r.commits, r.commitUses = append(r.commits, res), append(r.commitUses, use)
	}

	b.logf("commit: closed loop, %d callers for %s", b.commitWorkers, b.saturation)
	if r.saturated, r.saturatedUse, err = b.saturate(ctx, b.commitCall(&committed, &committedPoints)); err != nil {
		return fmt.Errorf("saturation: %w", err)
	}
	b.logf("commit: %.0f commits/s at saturation, p50 %s ms, p99 %s ms, %d errors", r.saturated.Throughput, ms(r.saturated.Median), ms(r.saturated.P99), r.saturated.errors)
	if c := committed.Load(); c > 0 {
		r.commitEarned = float64(committedPoints.Load()) / float64(c)
	}
	r.profileWritten = b.cpuProfile

	// The gRPC server is done with; the worker measurements need only the
	// database (and Kafka).
	if err := running.Stop(); err != nil {
		return err
	}

	if r.applied, r.upserted, err = b.applyPhases(ctx); err != nil {
		return fmt.Errorf("appliers: %w", err)
	}
	if b.kafkaEvents > 0 {
		k, err := b.kafkaPath(ctx)
		if err != nil {
			return fmt.Errorf("kafka path: %w", err)
		}
		r.kafka = &k
	}
	if r.after, err = b.state(ctx); err != nil {
		return err
	}
	r.bad, r.checked, r.invariantErr = b.checkInvariants(ctx)
	b.report(&r)
	if r.invariantErr != nil {
		return r.invariantErr
	}
	if r.bad > 0 {
		return fmt.Errorf("%d of %d warmed members break the ledger invariants", r.bad, r.checked)
	}
	return nil
}

// ---- members ----

type poolResult struct {
	fresh, created int
}

// pickMembers chooses the run's warmed members: b.warm at random among the
// b.members earliest active, never-merged members without loyalty history
// (in a database preloaded by `mc-bench resolve`, its first members: far from
// the tail its merges use). Members missing from the pool are created.
func (b *benefitsBench) pickMembers(ctx context.Context) (poolResult, error) {
	pool, err := pgbench.MembersWithout(ctx, b.pool, pgbench.LoyaltyState, b.members)
	if err != nil {
		return poolResult{}, err
	}
	res := poolResult{fresh: len(pool)}
	if missing := b.members - len(pool); missing > 0 {
		b.logf("members: %d without loyalty history present, creating %d", len(pool), missing)
		if pool, err = createMembers(ctx, b.pool, pool, missing); err != nil {
			return res, err
		}
		if err := pgbench.Analyze(ctx, b.pool, false, "members"); err != nil {
			return res, err
		}
		res.created = missing
	}
	for _, i := range rand.Perm(len(pool))[:b.warm] {
		b.warmed = append(b.warmed, pool[i])
	}
	b.logf("members: %d drawn from %d without loyalty history (%d created)", len(b.warmed), len(pool), res.created)
	return res, nil
}

// giveHistory commits three baskets for every warmed member through the
// gRPC service, dated 70, 40 and 10 days ago (each round finishes before the
// next starts, so each member's time moves forward).
func (b *benefitsBench) giveHistory(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	for round, daysAgo := range []int{70, 40, 10} {
		at := start.Add(-time.Duration(daysAgo) * 24 * time.Hour)
		jobs := make(chan int)
		g, gctx := errgroup.WithContext(ctx)
		for w := range b.commitWorkers {
			g.Go(func() error {
				client := mcv1.NewBenefitsServiceClient(b.clients[w%len(b.clients)])
				for i := range jobs {
					key := fmt.Sprintf("%s-history-%d-%d", b.runID, round, i)
					rctx, cancel := context.WithTimeout(gctx, b.timeout)
					_, err := client.Commit(rctx, &mcv1.CommitRequest{MemberId: b.warmed[i].String(),
						Basket: benchBasket("O-"+key, at), IdempotencyKey: key})
					cancel()
					if err != nil {
						return fmt.Errorf("commit for member %s: %w", b.warmed[i], err)
					}
				}
				return nil
			})
		}
	feed:
		for i := range b.warmed {
			select {
			case jobs <- i:
			case <-gctx.Done():
				break feed
			}
		}
		close(jobs)
		if err := g.Wait(); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// warmState summarises the warmed members' loyalty state.
type warmState struct {
	tiers                 map[string]int
	lots, orders, coupons float64
	balance               float64
	activityMonths        float64
	allLots               int64 // point_lots rows of every member
}

func (b *benefitsBench) state(ctx context.Context) (warmState, error) {
	l, err := pgbench.LoyaltyOf(ctx, b.pool, b.warmed)
	w := float64(len(b.warmed))
	return warmState{tiers: l.Tiers, lots: float64(l.Lots) / w, orders: float64(l.Orders) / w, coupons: float64(l.Coupons) / w,
		activityMonths: float64(l.ActivityMonths) / w, balance: float64(l.Balance) / w, allLots: l.AllLots}, err
}

// checkInvariants verifies, for every warmed member, that the member
// account's ledger sum, the account balance and the sum of its lots'
// remaining points agree.
func (b *benefitsBench) checkInvariants(ctx context.Context) (bad, checked int, err error) {
	return pgbench.LedgerMismatches(ctx, b.pool, b.warmed)
}

// ---- baskets and events ----

var (
	benchCategories = []string{"grocery", "dairy", "bakery", "snacks", "beverages", "household", "personal-care", "apparel"}
	benchBrands     = []string{"house", "acme", "lotus", "panda", "summit", "harbor"}
)

func cny(minor int64) *mcv1.Money { return &mcv1.Money{Currency: "CNY", AmountMinor: minor} }

// benchItems is a plausible supermarket basket: 2–3 lines, the first a
// coffee in three baskets of ten, totals log-uniform over ¥20–¥800 (so about
// one basket in eight is ¥500 or more and earns the big-basket coupon).
func benchItems() (int64, []*mcv1.LineItem) {
	total := int64(math.Round(2000 * math.Pow(40, rand.Float64())))
	n := 2 + rand.IntN(2)
	items := make([]*mcv1.LineItem, n)
	left := total
	for k := range n {
		cat := benchCategories[rand.IntN(len(benchCategories))]
		var amount int64
		switch {
		case k == 0 && rand.IntN(10) < 3:
			cat = "coffee"
			amount = min(int64(1500+rand.IntN(2500)), total/2)
		case k == n-1:
			amount = left
		default:
			amount = left * int64(30+rand.IntN(40)) / 100
		}
		left -= amount
		items[k] = &mcv1.LineItem{Sku: benchSKU(cat, rand.IntN(500)), Category: cat,
			Brand: benchBrands[rand.IntN(len(benchBrands))], Quantity: int32(1 + rand.IntN(3)), Amount: cny(amount)}
	}
	return total, items
}

// benchSKU is "SKU-<cat>-<n, three digits>" (fmt.Sprintf took a tenth of
// the bench client's CPU in the Quote run, which shares the process).
func benchSKU(cat string, n int) string {
	d := strconv.Itoa(n)
	return "SKU-" + cat + "-" + "000"[min(len(d), 3):] + d
}

func benchChannel() mcv1.Channel {
	switch r := rand.IntN(10); {
	case r < 8:
		return mcv1.Channel_CHANNEL_POS
	case r < 9:
		return mcv1.Channel_CHANNEL_APP
	default:
		return mcv1.Channel_CHANNEL_MINIPROGRAM
	}
}

func benchStore() string { return fmt.Sprintf("BENCH-%02d", rand.IntN(40)) }

// benchBasket is a basket at server time (at zero) or at.
func benchBasket(orderID string, at time.Time) *mcv1.Basket {
	total, items := benchItems()
	b := &mcv1.Basket{OrderId: orderID, Channel: benchChannel(), StoreId: benchStore(), Total: cny(total), Items: items}
	if !at.IsZero() {
		b.At = timestamppb.New(at)
	}
	return b
}

// benchEvent is a member event of a purchase, occurring now.
func benchEvent(id string, member uuid.UUID) *mcv1.MemberEvent {
	total, items := benchItems()
	now := timestamppb.Now()
	return &mcv1.MemberEvent{EventId: id, MemberId: member.String(), Channel: benchChannel(), StoreId: benchStore(),
		OccurredAt: now, IngestedAt: now,
		Payload: &mcv1.MemberEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-" + id, Total: cny(total), Items: items}}}
}

// ---- gRPC phases ----

type benefitCall func(ctx context.Context, conn *grpc.ClientConn, key string, member uuid.UUID) error

func (b *benefitsBench) quoteCall(n, points *atomic.Int64) benefitCall {
	return func(ctx context.Context, conn *grpc.ClientConn, key string, member uuid.UUID) error {
		resp, err := mcv1.NewBenefitsServiceClient(conn).Quote(ctx, &mcv1.QuoteRequest{MemberId: member.String(), Basket: benchBasket("Q-"+key, time.Time{})})
		if err != nil {
			return err
		}
		if resp.GetPointsEarned() <= 0 {
			return fmt.Errorf("quote for member %s earned %d points: a basket of ¥20 or more earns points", member, resp.GetPointsEarned())
		}
		n.Add(1)
		points.Add(resp.GetPointsEarned())
		return nil
	}
}

func (b *benefitsBench) commitCall(n, points *atomic.Int64) benefitCall {
	return func(ctx context.Context, conn *grpc.ClientConn, key string, member uuid.UUID) error {
		req := &mcv1.CommitRequest{MemberId: member.String(), Basket: benchBasket("O-"+key, time.Time{}), IdempotencyKey: key}
		resp, err := mcv1.NewBenefitsServiceClient(conn).Commit(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetTransactionId() != req.GetBasket().GetOrderId() || resp.GetResult().GetPointsEarned() <= 0 {
			return fmt.Errorf("commit of fresh order %s for member %s: transaction %q, %d points", req.GetBasket().GetOrderId(), member,
				resp.GetTransactionId(), resp.GetResult().GetPointsEarned())
		}
		n.Add(1)
		points.Add(resp.GetResult().GetPointsEarned())
		return nil
	}
}

// phaseUse is what a phase cost: CPU by process group and PostgreSQL round
// trips.
type phaseUse struct {
	cpu       cpuUse
	trips     int64
	deadlocks int64
	sessions  sessionStates
}

type usageMark struct {
	cpu       cpuSample
	trips     int64
	deadlocks int64
	sampler   *sessionSampler
}

func (b *benefitsBench) deadlocks() int64 {
	n, _ := pgbench.Deadlocks(context.Background(), b.pool)
	return n
}

func (b *benefitsBench) mark() usageMark {
	return usageMark{cpu: sampleCPU(), trips: b.trips.n.Load(), deadlocks: b.deadlocks(), sampler: b.sampleSessions()}
}

func (b *benefitsBench) since(m usageMark) phaseUse {
	u := phaseUse{cpu: m.cpu.to(sampleCPU()), trips: b.trips.n.Load() - m.trips, sessions: m.sampler.stop()}
	u.deadlocks = b.deadlocks() - m.deadlocks
	return u
}

// sessionStates is the average number of the bench database's sessions in
// each state over a phase, sampled from pg_stat_activity ten times a second.
type sessionStates struct {
	ok                               bool
	running, lock, io, client, other float64
	samples                          int
	// Statements of sessions waiting for a lock and of running ones, with
	// how many samples saw them.
	waiting, busy map[string]int
}

type sessionSampler struct {
	stopc chan struct{}
	done  chan sessionStates
}

// sampleSessions samples the bench database's pg_stat_activity.
func (b *benefitsBench) sampleSessions() *sessionSampler { return sampleSessions(b.benchURL) }

func (s *sessionSampler) stop() sessionStates {
	close(s.stopc)
	return <-s.done
}

// openPhase warms up for resolveWarmup at rate (unmeasured), then sends
// rate × b.duration requests open loop, each in its own goroutine, for random
// warmed members, and times each from its intended send time.
func (b *benefitsBench) openPhase(ctx context.Context, name string, rate int, c benefitCall) (phaseResult, phaseUse, error) {
	var use phaseUse
	res, err := openPhase[uuid.UUID]{clients: b.clients, rate: rate, n: int(float64(rate) * b.duration.Seconds()), timeout: b.timeout,
		prefix: b.runID + "-" + name + "-", pick: func() uuid.UUID { return b.warmed[rand.IntN(len(b.warmed))] }, call: c,
		measure: func() (func(), error) {
			mark := b.mark()
			return func() { use = b.since(mark) }, nil
		}}.run(ctx)
	return res, use, err
}

type closedResult struct {
	Summary
	calls, errors int
	byCode        map[string]int
	floor         upsertFloor // the same callers' upserts for as long, right after
}

// saturate calls c closed loop from b.commitWorkers callers for
// b.saturation, under the CPU profile when one is asked for; then, outside
// the profile and the phase's usage, the same number of callers upsert a
// scratch table on the same pool for as long: the floor.
func (b *benefitsBench) saturate(ctx context.Context, c benefitCall) (closedResult, phaseUse, error) {
	if b.cpuProfile != "" {
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			return closedResult{}, phaseUse{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return closedResult{}, phaseUse{}, err
		}
		defer pprof.StopCPUProfile()
	}
	type outcome struct {
		lat  []time.Duration
		errs []error
	}
	outs := make([]outcome, b.commitWorkers)
	mark := b.mark()
	start := time.Now()
	deadline := start.Add(b.saturation)
	var wg sync.WaitGroup
	for w := range b.commitWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; time.Now().Before(deadline) && ctx.Err() == nil; k++ {
				rctx, cancel := context.WithTimeout(ctx, b.timeout)
				t := time.Now()
				err := c(rctx, b.clients[w%len(b.clients)], fmt.Sprintf("%s-sat-%d-%d", b.runID, w, k), b.warmed[rand.IntN(len(b.warmed))])
				cancel()
				if err != nil {
					outs[w].errs = append(outs[w].errs, err)
					continue
				}
				outs[w].lat = append(outs[w].lat, time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	use := b.since(mark)
	res := closedResult{byCode: map[string]int{}}
	var ds []time.Duration
	for _, o := range outs {
		ds = append(ds, o.lat...)
		for _, err := range o.errs {
			res.errors++
			res.byCode[errorCode(err)]++
		}
	}
	res.calls = len(ds) + res.errors
	if len(ds) > 0 {
		res.Summary = summarize(ds, elapsed)
	}
	if ctx.Err() != nil {
		return res, use, ctx.Err()
	}
	if b.cpuProfile != "" {
		pprof.StopCPUProfile() // the floor stays out of the Commit profile (the deferred stop is then a no-op)
	}
	b.logf("commit floor: autocommitted upserts, %d callers closed loop for %s", b.commitWorkers, b.saturation)
	var err error
	if res.floor, err = closedLoopUpsertFloor(ctx, b.pool, b.commitWorkers, 0, b.saturation); err != nil {
		return res, use, fmt.Errorf("floor: %w", err)
	}
	b.logf("commit floor: %.0f upserts/s, p50 %s ms, p99 %s ms, %d errors", res.floor.Throughput, ms(res.floor.Median), ms(res.floor.P99), res.floor.errors)
	return res, use, nil
}

// ---- the benefit worker's effect path, and its floor ----

type throughput struct {
	workers, events, errors int
	elapsed                 time.Duration
	lat                     Summary // time of each event's apply
	use                     phaseUse
	firstErr                error
}

func (t throughput) rate() float64 {
	if t.elapsed <= 0 {
		return 0
	}
	return float64(t.events-t.errors) / t.elapsed.Seconds()
}

// partitioned runs do(i) for every event i, with event i handled by worker
// owner[i] % k, each worker in event order: one member's events stay ordered.
func (b *benefitsBench) partitioned(ctx context.Context, k int, owner []int, do func(ctx context.Context, i int) error) throughput {
	queues := make([][]int, k)
	for i, m := range owner {
		queues[m%k] = append(queues[m%k], i)
	}
	lat, errs := make([]time.Duration, len(owner)), make([]error, len(owner))
	mark := b.mark()
	start := time.Now()
	var wg sync.WaitGroup
	for _, q := range queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, i := range q {
				t := time.Now()
				errs[i] = do(ctx, i)
				lat[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	res := throughput{workers: k, events: len(owner), elapsed: time.Since(start), use: b.since(mark)}
	ds := make([]time.Duration, 0, len(owner))
	for i, err := range errs {
		if err != nil {
			if res.errors == 0 {
				res.firstErr = err
			}
			res.errors++
			continue
		}
		ds = append(ds, lat[i])
	}
	if len(ds) > 0 {
		res.lat = summarize(ds, res.elapsed)
	}
	return res
}

// applyPhases measures, for each applier count, the floor (one upsert per
// event into a scratch table) and then benefits.Service.Apply of fresh
// Transaction events for warmed members.
func (b *benefitsBench) applyPhases(ctx context.Context) (applied, upserted []throughput, err error) {
	return b.applyVsUpsert(ctx, applyRun{
		table: "bench_upsert_floor_" + b.runID, members: b.warmed, appliers: b.appliers, events: b.events, logf: b.logf,
		event: func(k, i int, member uuid.UUID) *mcv1.MemberEvent {
			return benchEvent(fmt.Sprintf("%s-apply%d-%d", b.runID, k, i), member)
		},
		apply: b.svc.Apply,
	})
}

// applyRun is one worker's effect path measured against the upsert floor.
type applyRun struct {
	table    string // scratch table of the floor
	members  []uuid.UUID
	appliers []int
	events   int
	logf     func(format string, args ...any)
	// event builds the i-th event of the run with k appliers for member.
	event func(k, i int, member uuid.UUID) *mcv1.MemberEvent
	apply func(ctx context.Context, ev *mcv1.MemberEvent) error
	// profile, when set, wraps the apply phase of the ki-th applier count.
	profile func(ki int) (stop func(), err error)
}

// applyVsUpsert measures, for each applier count, the floor (one upsert per
// event into a scratch table) and then r.apply of one event per member
// draw, events partitioned by member over the appliers in both.
func (b *benefitsBench) applyVsUpsert(ctx context.Context, r applyRun) (applied, upserted []throughput, err error) {
	table, err := pgbench.NewMemberFloor(ctx, b.pool, r.table)
	if err != nil {
		return nil, nil, err
	}
	defer table.Drop()

	for ki, k := range r.appliers {
		owner := make([]int, r.events)
		for i := range owner {
			owner[i] = rand.IntN(len(r.members))
		}
		amounts := make([]int64, r.events)
		for i := range amounts {
			amounts[i], _ = benchItems()
		}
		r.logf("floor: %d × %s with %d upserters", r.events, pgbench.MemberFloorStatement, k)
		floor := b.partitioned(ctx, k, owner, func(ctx context.Context, i int) error {
			// Under a span too, so the floor pays the same tracing as Apply.
			sctx, span := b.tracer.Start(ctx, "bench upsert", trace.WithSpanKind(trace.SpanKindConsumer))
			defer span.End()
			return table.Upsert(sctx, r.members[owner[i]], amounts[i], time.Now())
		})
		r.logf("floor: %.0f upserts/s with %d upserters, %d errors", floor.rate(), k, floor.errors)

		events := make([]*mcv1.MemberEvent, r.events)
		for i := range events {
			events[i] = r.event(k, i, r.members[owner[i]])
		}
		stopProfile := func() {}
		if r.profile != nil {
			if stopProfile, err = r.profile(ki); err != nil {
				return nil, nil, err
			}
		}
		r.logf("apply: %d events with %d appliers", r.events, k)
		res := b.partitioned(ctx, k, owner, func(ctx context.Context, i int) error {
			// Under its own span, as the worker's consumer applies each record.
			sctx, span := b.tracer.Start(ctx, "bench apply", trace.WithSpanKind(trace.SpanKindConsumer))
			defer span.End()
			return r.apply(sctx, events[i])
		})
		stopProfile()
		r.logf("apply: %.0f events/s with %d appliers, p50 %s ms, p99 %s ms, %d errors", res.rate(), k, ms(res.lat.Median), ms(res.lat.P99), res.errors)
		applied, upserted = append(applied, res), append(upserted, floor)
		if ctx.Err() != nil {
			return applied, upserted, ctx.Err()
		}
	}
	return applied, upserted, nil
}

// ---- the Kafka path ----

type kafkaResult struct {
	events                int
	publish               time.Duration
	floor, worker         time.Duration // first record handled → last record handled
	floorJoin, workerJoin time.Duration // start → first record handled
	floorUse, workerUse   phaseUse
	workerErrs            int64
	wall                  time.Duration // worker start → every record applied
}

// countingApplier is the benefits applier, counting what it applied.
type countingApplier struct {
	a           worker.Applier
	want        int64
	n, errs     atomic.Int64
	first, last atomic.Int64 // unix nanoseconds
	done        chan struct{}
}

func (c *countingApplier) Apply(ctx context.Context, ev *mcv1.MemberEvent) error {
	err := c.a.Apply(ctx, ev)
	if err != nil {
		c.errs.Add(1)
		return err
	}
	now := time.Now().UnixNano()
	c.first.CompareAndSwap(0, now)
	c.last.Store(now)
	if c.n.Add(1) == c.want {
		close(c.done)
	}
	return nil
}

// countingBatchApplier counts a batch applier's events, so the worker
// applies batches as platform.Run's does (worker.New takes the batch path
// when its applier has one).
type countingBatchApplier struct {
	*countingApplier
	b contract.BatchApplier
}

func (c countingBatchApplier) ApplyBatch(ctx context.Context, evs []*mcv1.MemberEvent) (map[int]error, error) {
	// The run starts when the first batch does: a batch is applied whole,
	// so its own time counts.
	c.first.CompareAndSwap(0, time.Now().UnixNano())
	refused, err := c.b.ApplyBatch(ctx, evs)
	if err != nil {
		return refused, err
	}
	c.errs.Add(int64(len(refused)))
	c.last.Store(time.Now().UnixNano())
	if n := int64(len(evs) - len(refused)); n > 0 {
		if after := c.n.Add(n); after >= c.want && after-n < c.want {
			close(c.done)
		}
	}
	return refused, nil
}

// countingFor wraps a in a counter, keeping its batch path.
func countingFor(a worker.Applier, want int64) (worker.Applier, *countingApplier) {
	c := &countingApplier{a: a, want: want, done: make(chan struct{})}
	if b, ok := a.(contract.BatchApplier); ok {
		return countingBatchApplier{countingApplier: c, b: b}, c
	}
	return c, c
}

// kafkaPath publishes b.kafkaEvents member events to a scratch
// member-events topic (keyed by member, as ingest keys them), consumes them
// once with a plain franz-go client (the floor), then runs the benefit
// worker over them until every one is applied.
func (b *benefitsBench) kafkaPath(ctx context.Context) (kafkaResult, error) {
	return b.workerOverKafka(ctx, kafkaWorkerRun{
		kcfg: scratchKafka(b.e.Config.Kafka, b.runID), stage: benefits.Stage, applier: b.svc, events: b.kafkaEvents,
		event: func(i int) (uuid.UUID, *mcv1.MemberEvent) {
			member := b.warmed[rand.IntN(len(b.warmed))]
			return member, benchEvent(fmt.Sprintf("%s-kafka-%d", b.runID, i), member)
		},
		limit: 10 * time.Minute, logf: b.logf,
	})
}

// kafkaWorkerRun is one worker-over-Kafka measurement: events member events
// (event(i) gives the key member and the event) on kcfg's scratch
// member-events topic, for the stage's worker over applier, which must
// apply them all within limit.
type kafkaWorkerRun struct {
	kcfg    kafka.Config
	stage   string
	applier worker.Applier
	events  int
	event   func(i int) (uuid.UUID, *mcv1.MemberEvent)
	limit   time.Duration
	logf    func(format string, args ...any)
}

// workerOverKafka publishes the run's events keyed by member, consumes them
// once with a plain franz-go client (the floor), then runs the stage's
// worker (worker.New, as platform.Run builds it) until every one is
// applied, and removes the scratch topics and group.
func (b *benefitsBench) workerOverKafka(ctx context.Context, run kafkaWorkerRun) (kafkaResult, error) {
	res := kafkaResult{events: run.events}
	kcfg := run.kcfg
	topic := kcfg.Topics.MemberEvents
	ktel := b.e.Kafka()
	topics, err := openScratch(ctx, kcfg, ktel, 0)
	if err != nil {
		return res, err
	}
	defer topics.close(kcfg.Group(run.stage))

	run.logf("kafka: publishing %d member events to %s", run.events, topic)
	producer, err := kafka.NewClient(kcfg, ktel, "")
	if err != nil {
		return res, err
	}
	defer producer.Close()
	start := time.Now()
	var produceErr atomic.Pointer[error]
	for i := range run.events {
		member, ev := run.event(i)
		v, err := proto.Marshal(ev)
		if err != nil {
			return res, err
		}
		producer.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(member.String()), Value: v}, func(_ *kgo.Record, err error) {
			if err != nil {
				produceErr.CompareAndSwap(nil, &err)
			}
		})
	}
	if err := producer.Flush(ctx); err != nil {
		return res, err
	}
	if p := produceErr.Load(); p != nil {
		return res, fmt.Errorf("produce: %w", *p)
	}
	res.publish = time.Since(start)

	// Floor: the same records through a plain consumer, no logic.
	run.logf("kafka floor: plain franz-go consume of %d records", run.events)
	consumer, err := kafka.NewClient(kcfg, ktel, "", kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return res, err
	}
	mark := b.mark()
	start = time.Now()
	var first, last time.Time
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	for got := 0; got < run.events && cctx.Err() == nil; {
		fetches := consumer.PollFetches(cctx)
		if n := fetches.NumRecords(); n > 0 {
			last = time.Now()
			if got == 0 {
				first = last
			}
			got += n
		}
	}
	res.floorUse = b.since(mark)
	floorErr := cctx.Err()
	cancel()
	consumer.Close()
	if floorErr != nil {
		return res, fmt.Errorf("floor consumer: %w", floorErr)
	}
	res.floor, res.floorJoin = last.Sub(start), first.Sub(start)

	// The worker, built as platform.Run builds it.
	run.logf("kafka: %s worker over %d events", run.stage, run.events)
	applier, counter := countingFor(run.applier, int64(run.events))
	w, err := worker.New(kcfg, ktel, run.stage, applier)
	if err != nil {
		return res, err
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	mark = b.mark()
	start = time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(wctx) }()
	limit := time.NewTimer(run.limit)
	defer limit.Stop()
	select {
	case <-counter.done:
	case err := <-runErr:
		w.Close()
		return res, fmt.Errorf("worker stopped after %d of %d events: %v", counter.n.Load(), run.events, err)
	case <-limit.C:
		stop()
		<-runErr
		w.Close()
		return res, fmt.Errorf("worker applied %d of %d events in %s", counter.n.Load(), run.events, run.limit)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.wall = time.Since(start)
	res.workerUse = b.since(mark)
	stop()
	<-runErr
	w.Close()
	res.worker = time.Duration(counter.last.Load() - counter.first.Load())
	res.workerJoin = time.Unix(0, counter.first.Load()).Sub(start)
	res.workerErrs = counter.errs.Load()
	return res, nil
}

// ---- measuring PostgreSQL round trips and CPU ----

const otelpgxScope = "github.com/exaring/otelpgx"

// pgRoundTrips counts PostgreSQL round trips from the spans otelpgx
// records: every query, prepare and COPY, and one per batch (the statements
// inside a batch travel together). Pool acquisitions and connects are not
// round trips of the request. Only spans under a recording parent exist, so
// RPCs (otelgrpc) and worker records (the consumer's process span) count.
type pgRoundTrips struct {
	n       atomic.Int64
	batches sync.Map // span ids of open "batch start" spans
}

func (c *pgRoundTrips) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	if s.InstrumentationScope().Name == otelpgxScope && s.Name() == "batch start" {
		c.batches.Store(s.SpanContext().SpanID(), struct{}{})
	}
}

func (c *pgRoundTrips) OnEnd(s sdktrace.ReadOnlySpan) {
	if s.InstrumentationScope().Name != otelpgxScope {
		return
	}
	switch s.Name() {
	case "batch start":
		c.batches.Delete(s.SpanContext().SpanID())
		c.n.Add(1)
	case "pool.acquire", "connect":
	default:
		if _, inBatch := c.batches.Load(s.Parent().SpanID()); !inBatch {
			c.n.Add(1)
		}
	}
}

func (c *pgRoundTrips) Shutdown(context.Context) error   { return nil }
func (c *pgRoundTrips) ForceFlush(context.Context) error { return nil }

// cpuSample is the machine's and some processes' CPU time so far, in clock
// ticks (USER_HZ, 100 a second), read from /proc; ok is false elsewhere.
// PostgreSQL's time includes the children the postmaster has reaped, so
// backends of connections closed during a phase still count.
type cpuSample struct {
	at                    time.Time
	cpus                  int
	busy, total           uint64
	self, postgres, kafka uint64
	clickhouse            uint64
	ok                    bool
}

const userHZ = 100

func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	line, rest, _ := strings.Cut(string(raw), "\n")
	for l := range strings.Lines(rest) {
		if len(l) > 3 && l[:3] == "cpu" && l[3] >= '0' && l[3] <= '9' {
			s.cpus++
		}
	}
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal …
	if len(fields) < 9 || fields[0] != "cpu" {
		return s
	}
	for i, v := range fields[1:9] {
		n, _ := strconv.ParseUint(v, 10, 64)
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
	}
	_, s.self, _ = procCPU("/proc/self/stat")
	// Less what the memory sampler took (it measures, it is not measured).
	s.self -= min(s.self, uint64(samplerNanos.Load()*userHZ/1e9))
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		switch comm, own, children := procCPU("/proc/" + e.Name() + "/stat"); comm {
		case "postgres":
			s.postgres += own + children
		case "java":
			s.kafka += own
		case "clickhouse-serv": // comm is cut at 15 bytes
			s.clickhouse += own
		}
	}
	s.ok = true
	return s
}

// procCPU returns a process's command name, its user+system ticks and those
// of its reaped children.
func procCPU(path string) (string, uint64, uint64) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", 0, 0
	}
	st := string(raw)
	open, end := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
	if open < 0 || end < open || end+2 > len(st) {
		return "", 0, 0
	}
	f := strings.Fields(st[end+2:]) // from field 3 (state); utime, stime, cutime, cstime are fields 14–17
	if len(f) < 15 {
		return "", 0, 0
	}
	var v [4]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[11+i], 10, 64)
	}
	return st[open+1 : end], v[0] + v[1], v[2] + v[3]
}

// cpuUse is CPU over an interval, in cores (1.0 = one core busy throughout).
type cpuUse struct {
	ok                             bool
	secs                           float64
	machine, self, postgres, kafka float64
	selfSecs, postgresSecs         float64
}

func (a cpuSample) to(z cpuSample) cpuUse {
	u := cpuUse{ok: a.ok && z.ok, secs: z.at.Sub(a.at).Seconds()}
	if !u.ok || u.secs <= 0 || z.total <= a.total || z.self < a.self || z.postgres < a.postgres || z.kafka < a.kafka {
		u.ok = false
		return u
	}
	u.machine = float64(z.busy-a.busy) / float64(z.total-a.total) * float64(z.cpus)
	u.selfSecs = float64(z.self-a.self) / userHZ
	u.postgresSecs = float64(z.postgres-a.postgres) / userHZ
	u.self, u.postgres = u.selfSecs/u.secs, u.postgresSecs/u.secs
	u.kafka = float64(z.kafka-a.kafka) / userHZ / u.secs
	return u
}

// ---- report ----

func (b *benefitsBench) report(r *benefitsReport) {
	w := b.out
	fmt.Fprintf(w, "| scenario | requests | target rate (req/s) | achieved (req/s) | p50 ms | p99 ms | max ms | errors | p50 ÷ floor | p99 ÷ floor |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|\n")
	row := func(name string, rate int, p phaseResult) {
		fmt.Fprintf(w, "| %s | %d | %d | %.0f | %s | %s | %s | %d | %s | %s |\n", name, p.sent, rate, p.Throughput,
			ms(p.Median), ms(p.P99), ms(p.Max), p.errors, ratio(p.Median, r.floor.Median), ratio(p.P99, r.floor.P99))
	}
	row("floor: grpc.health.v1.Health/Check (same server, same run)", b.rate, r.floor)
	row("BenefitsService.Quote, random basket, warmed member", b.rate, r.quote)
	for i, rate := range b.commitRates {
		row(fmt.Sprintf("BenefitsService.Commit, fresh order, at %d req/s", rate), rate, r.commits[i])
	}
	fmt.Fprintln(w)
	for i, p := range append([]phaseResult{r.floor, r.quote}, r.commits...) {
		if p.errors == 0 {
			continue
		}
		name := "floor"
		switch {
		case i == 1:
			name = "Quote"
		case i > 1:
			name = fmt.Sprintf("Commit at %d req/s", b.commitRates[i-2])
		}
		fmt.Fprintf(w, "%s errors by status: %s.\n", name, countsByCode(p.byCode))
	}
	s := r.saturated
	tput, p50, p99 := floorRatios(s.Summary, s.floor)
	fmt.Fprintf(w, "Commit at saturation: %d callers closed loop for %s: **%.0f commits/s** (÷ floor %s), p50 %s ms (÷ floor %s), p99 %s ms (÷ floor %s), max %s ms, %d errors",
		b.commitWorkers, b.saturation, s.Throughput, tput, ms(s.Median), p50, ms(s.P99), p99, ms(s.Max), s.errors)
	if s.errors > 0 {
		fmt.Fprintf(w, " (%s)", countsByCode(s.byCode))
	}
	fmt.Fprint(w, ".")
	if r.profileWritten != "" {
		fmt.Fprintf(w, " CPU profile of this run: `%s`.", r.profileWritten)
	}
	fmt.Fprintf(w, " The service applies concurrent Commits in groups (one PostgreSQL transaction for whatever is queued when one of its committers is free), so the closed loop runs %d callers: with 16, throughput is bounded by latency rather than by the service.", b.commitWorkers)
	if s.floor.callers > 0 {
		fmt.Fprint(w, "\n"+floorSentence(s.floor, "for "+b.saturation.String()))
	}
	fmt.Fprint(w, "\n\n")

	fmt.Fprintf(w, "Where the time goes, over each measured phase: PostgreSQL round trips counted from the pgx spans; CPU from /proc in cores of %d (the client and the gRPC server share the membercenter process; PostgreSQL includes backends that exited during the phase); the bench database's client sessions sampled from `pg_stat_activity` ten times a second (average number running, waiting for a lock, waiting for I/O or WAL, and idle in transaction, i.e. waiting for the next statement of its client); deadlocks from `pg_stat_database`. Per-request figures divide by successful requests.\n\n", sampleCPU().cpus)
	fmt.Fprintf(w, "| scenario | PG round trips / request | machine busy | membercenter | PostgreSQL | membercenter CPU ms / request | PostgreSQL CPU ms / request | PG sessions: running / lock wait / I/O, WAL / idle in txn | deadlocks |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	use := func(name string, u phaseUse, n int) {
		if n <= 0 {
			fmt.Fprintf(w, "| %s | – | – | – | – | – | – | – | %d |\n", name, u.deadlocks)
			return
		}
		trips := "0"
		if u.trips > 0 {
			trips = fmt.Sprintf("%.1f", float64(u.trips)/float64(n))
		}
		cpu := "– | – | – | – | –"
		if u.cpu.ok {
			cpu = fmt.Sprintf("%.2f | %.2f | %.2f | %.3f | %.3f", u.cpu.machine, u.cpu.self, u.cpu.postgres,
				u.cpu.selfSecs*1000/float64(n), u.cpu.postgresSecs*1000/float64(n))
		}
		sessions := "–"
		if ss := u.sessions; ss.ok {
			sessions = fmt.Sprintf("%.1f / %.1f / %.1f / %.1f", ss.running, ss.lock, ss.io, ss.client)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %d |\n", name, trips, cpu, sessions, u.deadlocks)
	}
	ok := func(p phaseResult) int { return p.sent - p.errors }
	use("Health/Check", r.floorUse, ok(r.floor))
	use("Quote", r.quoteUse, ok(r.quote))
	for i, rate := range b.commitRates {
		use(fmt.Sprintf("Commit at %d req/s", rate), r.commitUses[i], ok(r.commits[i]))
	}
	use(fmt.Sprintf("Commit, %d callers closed loop", b.commitWorkers), r.saturatedUse, s.calls-s.errors)
	for i := range r.applied {
		use(fmt.Sprintf("floor upsert, %d upserters", r.upserted[i].workers), r.upserted[i].use, r.upserted[i].events-r.upserted[i].errors)
		use(fmt.Sprintf("benefits.Service.Apply, %d appliers", r.applied[i].workers), r.applied[i].use, r.applied[i].events-r.applied[i].errors)
	}
	if k := r.kafka; k != nil {
		use("benefit worker over Kafka", k.workerUse, k.events)
	}
	fmt.Fprintln(w)
	stmts := func(name string, u phaseUse) {
		if !u.sessions.ok {
			return
		}
		if u.sessions.lock >= 0.5 {
			fmt.Fprintf(w, "- %s, statements waiting for a lock: %s\n", name, topStatements(u.sessions.waiting, 3))
		}
		if u.sessions.running >= 0.5 {
			fmt.Fprintf(w, "- %s, statements running: %s\n", name, topStatements(u.sessions.busy, 3))
		}
	}
	stmts("Quote", r.quoteUse)
	for i, rate := range b.commitRates {
		stmts(fmt.Sprintf("Commit at %d req/s", rate), r.commitUses[i])
	}
	stmts("Commit closed loop", r.saturatedUse)
	if len(r.applied) > 0 {
		last := r.applied[len(r.applied)-1]
		stmts(fmt.Sprintf("Apply with %d appliers", last.workers), last.use)
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "Benefit worker's effect path: %d Transaction member events per row for random warmed members, applied with `benefits.Service.Apply` (one PostgreSQL transaction per event: processed-event mark, member lock, state load, ledger, lot, account, activity, outbox), events partitioned by member over the appliers; the floor is one `%s` per event (an autocommitted upsert of a per-member row in a scratch table) with the same partitioning and concurrency, in the same run.\n\n", b.events, pgbench.MemberFloorStatement)
	fmt.Fprintf(w, "| concurrent appliers | events | Apply (events/s) | Apply p50 ms | Apply p99 ms | floor: upsert (events/s) | upsert p50 ms | Apply ÷ floor (events/s) | errors |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	var firstErr error
	for i, a := range r.applied {
		u := r.upserted[i]
		share := "–"
		if u.rate() > 0 {
			share = fmt.Sprintf("%.2f×", a.rate()/u.rate())
		}
		fmt.Fprintf(w, "| %d | %d | %.0f | %s | %s | %.0f | %s | %s | %d |\n", a.workers, a.events, a.rate(), ms(a.lat.Median), ms(a.lat.P99),
			u.rate(), ms(u.lat.Median), share, a.errors+u.errors)
		firstErr = cmp.Or(firstErr, a.firstErr, u.firstErr)
	}
	if firstErr != nil {
		fmt.Fprintf(w, "\nFirst error: %v\n", firstErr)
	}
	fmt.Fprintln(w)

	if k := r.kafka; k != nil {
		fmt.Fprintf(w, "Full Kafka path: %d member events (keyed by member id) published to a scratch member-events topic of 6 partitions in %s, then consumed twice: by a plain franz-go client with no logic (the floor), and by the benefit worker (`worker.New` with the benefits applier, as `platform.Run` builds it: partitions in parallel, a partition's polled batch in one transaction, offsets committed after the effects). The floor's rate runs from its client's start to the last record (a cold client: metadata and first fetch included); the worker's from the first record applied to the last, so its group join (shown apart) does not count against it.\n\n",
			k.events, k.publish.Round(time.Millisecond))
		fmt.Fprintf(w, "| path | events | events/s | first record after | ÷ floor (events/s) |\n|---|---|---|---|---|\n")
		fr := float64(k.events) / k.floor.Seconds()
		wr := float64(k.events-1) / k.worker.Seconds()
		fmt.Fprintf(w, "| floor: plain franz-go consume, no logic | %d | %.0f | %s | 1.0× |\n", k.events, fr, k.floorJoin.Round(time.Millisecond))
		fmt.Fprintf(w, "| benefit worker → PostgreSQL | %d | %.0f | %s | %.4f× |\n", k.events, wr, k.workerJoin.Round(time.Millisecond), wr/fr)
		if k.workerErrs > 0 {
			fmt.Fprintf(w, "\nThe worker's applier failed %d times (retried by the consumer; see the server log).\n", k.workerErrs)
		}
		fmt.Fprintln(w)
	}

	day := "a weekday, so `weekend-double` did not apply"
	if r.weekend {
		day = "a weekend day, so `weekend-double` applied"
	}
	fmt.Fprintf(w, "Members: %s warmed members, drawn from %s members of `%s` without loyalty history (%s created this run), each given three Commits through the service dated 70, 40 and 10 days ago before measuring (%s). At the first measurement they averaged %.1f open lots, %.1f orders, %.1f coupons, %.1f months of tier activity and %.0f points (tiers: %s); at the end, %.1f open lots and %.1f orders. The point_lots table (all members of the database) held %s rows at the first measurement and %s at the end. Ledger invariants (member ledger sum = account balance = remaining points of the lots) hold for %d of %d warmed members.\n",
		thousands(int64(len(b.warmed))), thousands(int64(b.members)), benchDatabase, thousands(int64(r.pool.created)), r.history.Round(time.Second),
		r.before.lots, r.before.orders, r.before.coupons, r.before.activityMonths, r.before.balance, tierList(r.before.tiers),
		r.after.lots, r.after.orders, thousands(r.before.allLots), thousands(r.after.allLots), r.checked-r.bad, r.checked)
	fmt.Fprintf(w, "Baskets: 2–3 lines, a coffee line in three of ten, totals log-uniform over ¥20–¥800, 80%% POS; server time (%s, Asia/Shanghai: %s). A Quote earned %.1f points on average, a Commit %.1f.\n",
		r.weekday, day, r.quoteEarned, r.commitEarned)
	fmt.Fprintf(w, "GOMAXPROCS %d; client, gRPC server, PostgreSQL and Kafka share the machine; %d client connections; PostgreSQL pool of %d; latency of successful requests, from each request's intended send time; round trips counted from the pgx spans of each request.\n",
		runtime.GOMAXPROCS(0), b.conns, b.e.Config.Postgres.MaxConns)
}

// topStatements renders the n statements seen most often, with their share.
func topStatements(m map[string]int, n int) string {
	type kv struct {
		q string
		c int
	}
	var all []kv
	total := 0
	for q, c := range m {
		all = append(all, kv{q, c})
		total += c
	}
	if total == 0 {
		return "none sampled"
	}
	slices.SortFunc(all, func(a, b kv) int { return b.c - a.c })
	parts := make([]string, 0, n)
	for _, e := range all[:min(n, len(all))] {
		parts = append(parts, fmt.Sprintf("%.0f%% `%s…`", 100*float64(e.c)/float64(total), strings.ReplaceAll(e.q, "`", "'")))
	}
	return strings.Join(parts, ", ")
}

func tierList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %s", k, thousands(int64(m[k])))
	}
	return strings.Join(parts, ", ")
}
