package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/platform"
)

// benchDatabase is the scratch database the resolve benchmark preloads; it
// lives on the configured server beside the configured database.
const benchDatabase = "membercenter_bench"

// preloadCause marks the identifiers the benchmark preloaded.
const preloadCause = "bench-preload"

func resolveCmd(stdout io.Writer) *cobra.Command {
	b := &resolveBench{bench: bench{name: "resolve", out: stdout}}
	cmd := &cobra.Command{
		Use:   "resolve",
		Short: "IdentityService.Resolve and Merge over gRPC against a preloaded member base, beside a gRPC health check on the same server",
		Long: `Preloads --members members, each with a mainland-China mobile number stored
exactly as the identity service stores it (keyed hash, AES-GCM ciphertext,
masked form), into the dedicated database ` + benchDatabase + ` on the configured
PostgreSQL server (created when missing, migrated, preloaded once and reused
by later runs). Then serves the IdentityService in process on loopback with
the production gRPC stack and drives it open-loop at --rate for --duration,
after an unmeasured warm-up: first grpc.health.v1.Health/Check through the
same server (the floor), then Resolve of random existing phones. Latency
counts from each request's intended send time. Last, --merges Merge calls
of fresh pairs of preloaded members, closed loop. Prints Markdown; progress
goes to stderr.`,
		RunE: b.runE(b.run),
	}
	f := cmd.Flags()
	f.IntVar(&b.members, "members", 1_000_000, "preloaded members, each with one phone number")
	f.IntVar(&b.rate, "rate", 2000, "requests per second (open loop)")
	f.DurationVar(&b.duration, "duration", 20*time.Second, "measured time per scenario at --rate (after a 3 s warm-up)")
	f.IntVar(&b.merges, "merges", 2000, "Merge calls (closed loop)")
	f.IntVar(&b.mergeWorkers, "merge-concurrency", 8, "concurrent Merge callers")
	f.IntVar(&b.conns, "conns", 4, "gRPC client connections the requests are spread over")
	f.DurationVar(&b.timeout, "timeout", 30*time.Second, "deadline of each request; one that passes counts as an error")
	f.StringVar(&b.cpuProfile, "cpuprofile", "", "write a CPU profile of this process during the measured Resolve phase to this file")
	return cmd
}

type resolveBench struct {
	bench

	members, rate, merges, mergeWorkers, conns int
	duration, timeout                          time.Duration
	cpuProfile                                 string

	runID   string
	svc     *identity.Service // the preload's normaliser: the same config as the server's
	pool    *pgxpool.Pool
	clients []*grpc.ClientConn
}

const resolveWarmup = 3 * time.Second

// phone is preloaded member i's mobile number: 130 0000 0000 + i, all valid
// mainland-China numbers (verified by the identity normaliser on preload).
func benchPhone(i int) string { return strconv.FormatInt(13_000_000_000+int64(i), 10) }

func phoneID(i int) *mcv1.Identifier {
	return &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: benchPhone(i)}
}

// mergeSpan is the tail of the preloaded id range reserved for merges; the
// Resolve phase never touches it.
func (b *resolveBench) mergeSpan() int { return (b.members / 5) &^ 1 }

func (b *resolveBench) validate() error {
	var errs []error
	if b.members < 10 {
		errs = append(errs, errors.New("--members must be at least 10"))
	}
	if b.members > 1_000_000_000 {
		errs = append(errs, errors.New("--members must be at most 1,000,000,000 (phone numbers 130… to 139…)"))
	}
	if b.rate < 1 || b.duration < time.Second {
		errs = append(errs, errors.New("--rate must be positive and --duration at least 1s"))
	}
	if b.merges < 0 || b.mergeWorkers < 1 || b.conns < 1 || b.timeout <= 0 {
		errs = append(errs, errors.New("--merges must not be negative; --merge-concurrency, --conns and --timeout must be positive"))
	}
	return errors.Join(errs...)
}

func (b *resolveBench) run(ctx context.Context) error {
	if err := b.validate(); err != nil {
		return err
	}
	b.runID = fmt.Sprintf("bench%x", time.Now().UnixNano()&0xffffffffff)
	cfg := b.e.Config
	p, _, err := b.openBenchDB(ctx, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	b.pool = p.Pool()
	// The same identity configuration the server below is built with, so the
	// preloaded hashes are the ones Resolve looks up.
	if b.svc, err = identity.New(cfg.Identity, b.pool, changes.Writer{}, b.e.Tel.Logger); err != nil {
		return err
	}
	preload, err := b.preload(ctx)
	if err != nil {
		return fmt.Errorf("preload: %w", err)
	}

	// The production server, with only the identity service.
	running, clients, err := serve(ctx, p, platform.Options{Services: []string{"identity"}}, b.conns)
	if err != nil {
		return err
	}
	defer running.Stop()
	b.clients = clients

	n := int(float64(b.rate) * b.duration.Seconds())
	b.logf("floor: grpc.health.v1.Health/Check, %d requests at %d/s after a %s warm-up", n, b.rate, resolveWarmup)
	floor, err := b.openPhase(ctx, n, healthCheck[int], false)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	b.logf("floor: p50 %s ms, p99 %s ms, %d errors", ms(floor.Median), ms(floor.P99), floor.errors)

	b.logf("resolve: IdentityService.Resolve, %d requests at %d/s after a %s warm-up", n, b.rate, resolveWarmup)
	resolve, err := b.openPhase(ctx, n, b.resolve, true)
	if err != nil {
		return fmt.Errorf("resolve: %w", err)
	}
	b.logf("resolve: p50 %s ms, p99 %s ms, %d errors", ms(resolve.Median), ms(resolve.P99), resolve.errors)

	merges, err := b.mergePhase(ctx)
	if err != nil {
		return fmt.Errorf("merges: %w", err)
	}
	if merges.attempted > 0 {
		b.logf("merge floor: %d autocommitted upserts with %d callers (closed loop)", merges.attempted, b.mergeWorkers)
		if merges.floor, err = closedLoopUpsertFloor(ctx, b.pool, b.mergeWorkers, merges.attempted, 0); err != nil {
			return fmt.Errorf("merge floor: %w", err)
		}
		b.logf("merge floor: %.0f upserts/s, p50 %s ms, p99 %s ms, %d errors", merges.floor.Throughput, ms(merges.floor.Median), ms(merges.floor.P99), merges.floor.errors)
	}

	if err := running.Stop(); err != nil {
		return err
	}
	total, merged, err := pgbench.CountMembers(ctx, b.pool)
	if err != nil {
		return fmt.Errorf("count members: %w", err)
	}
	b.report(floor, resolve, merges, preload, total, merged)
	return nil
}

type preloadResult struct {
	present, loaded int
	took            time.Duration
}

// preload brings the bench database to b.members preloaded members. Batches
// are loaded in order, each in its own transaction, so the database always
// holds members 0…k-1 and a later run resumes at k.
func (b *resolveBench) preload(ctx context.Context) (preloadResult, error) {
	have, err := pgbench.CountPreloaded(ctx, b.pool, preloadCause)
	if err != nil {
		return preloadResult{}, err
	}
	res := preloadResult{present: have}
	if have >= b.members {
		b.logf("preload: %d bench members already present; skipping", have)
	} else {
		b.logf("preload: %d bench members present, loading %d more", have, b.members-have)
		start := time.Now()
		if err := b.load(ctx, have, b.members); err != nil {
			return res, err
		}
		res.loaded = b.members - have
		b.logf("preload: loaded %d members in %s; vacuum and analyze", res.loaded, time.Since(start).Round(time.Millisecond))
		if err := pgbench.Analyze(ctx, b.pool, true, "members", "member_identifiers"); err != nil {
			return res, err
		}
		res.took = time.Since(start)
		b.logf("preload: done in %s", res.took.Round(time.Millisecond))
	}
	if err := pgbench.Analyze(ctx, b.pool, false, "members", "member_identifiers"); err != nil {
		return res, err
	}
	// A database preloaded under other PII keys would make every Resolve
	// create a member: refuse it.
	if err := checkPreloadKeys(ctx, b.pool, b.svc, phoneID(0), phoneID(b.members-1), benchDatabase); err != nil {
		return res, err
	}
	return res, nil
}

// load inserts members [from, to), each with its bench phone.
func (b *resolveBench) load(ctx context.Context, from, to int) error {
	return preloadMembers(ctx, b.pool, b.svc, from, to, phoneID, preloadCause, b.logf)
}

type rpcCall func(ctx context.Context, conn *grpc.ClientConn, key string, i int) error

func (b *resolveBench) resolve(ctx context.Context, conn *grpc.ClientConn, key string, i int) error {
	resp, err := mcv1.NewIdentityServiceClient(conn).Resolve(ctx, &mcv1.ResolveRequest{
		Identifiers: []*mcv1.Identifier{phoneID(i)}, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "BENCH-1",
		CreateIfMissing: true, IdempotencyKey: key,
	})
	if err != nil {
		return err
	}
	if resp.GetCreated() || resp.GetMemberId() == "" {
		// The phone was preloaded: a new member means the benchmark did not
		// measure what it says.
		return fmt.Errorf("phone of member %d resolved to a new member", i)
	}
	return nil
}

// openPhase warms up for resolveWarmup at b.rate (unmeasured), then sends n
// requests open-loop at b.rate, each in its own goroutine, and times each
// from its intended send time (profiled with --cpuprofile when profile is
// set). Targets are random preloaded members outside the merge span.
func (b *resolveBench) openPhase(ctx context.Context, n int, c rpcCall, profile bool) (phaseResult, error) {
	span := b.members - b.mergeSpan()
	p := openPhase[int]{clients: b.clients, rate: b.rate, n: n, timeout: b.timeout, prefix: b.runID + "-",
		pick: func() int { return rand.IntN(span) }, call: c}
	if profile {
		p.measure = func() (func(), error) { return startCPUProfile(b.cpuProfile) }
	}
	return p.run(ctx)
}

type mergeResult struct {
	Summary
	wanted, attempted, errors int
	byCode                    map[string]int
	note                      string
	floor                     upsertFloor // the same callers' upserts, right after
}

// mergePhase merges member i+1 into member i for fresh pairs of the tail
// span, closed loop with b.mergeWorkers callers.
func (b *resolveBench) mergePhase(ctx context.Context) (mergeResult, error) {
	res := mergeResult{wanted: b.merges, byCode: map[string]int{}}
	if b.merges == 0 {
		return res, nil
	}
	pairs, err := b.freshPairs(ctx, b.merges)
	if err != nil {
		return res, err
	}
	if len(pairs) < b.merges {
		res.note = fmt.Sprintf("only %d unmerged pairs were left in the merge span (members %d…%d); drop database %s or raise --members for more",
			len(pairs), b.members-b.mergeSpan(), b.members-1, benchDatabase)
		b.logf("merges: %s", res.note)
	}
	res.attempted = len(pairs)
	if len(pairs) == 0 {
		return res, nil
	}
	b.logf("merges: %d IdentityService.Merge calls with %d workers (closed loop)", len(pairs), b.mergeWorkers)
	lat := make([]time.Duration, len(pairs))
	errs := make([]error, len(pairs))
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range b.mergeWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := mcv1.NewIdentityServiceClient(b.clients[w%len(b.clients)])
			for i := range next {
				rctx, cancel := context.WithTimeout(ctx, b.timeout)
				t := time.Now()
				_, errs[i] = client.Merge(rctx, &mcv1.MergeRequest{
					SourceMemberId: pairs[i][1].String(), TargetMemberId: pairs[i][0].String(),
					Reason: "bench", IdempotencyKey: b.runID + "-merge-" + strconv.Itoa(i),
				})
				lat[i] = time.Since(t)
				cancel()
			}
		}()
	}
	for i := range pairs {
		select {
		case next <- i:
		case <-ctx.Done():
			close(next)
			wg.Wait()
			return res, ctx.Err()
		}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	ds := make([]time.Duration, 0, len(pairs))
	for i, err := range errs {
		if err != nil {
			res.errors++
			res.byCode[errorCode(err)]++
			continue
		}
		ds = append(ds, lat[i])
	}
	if len(ds) > 0 {
		res.Summary = summarize(ds, elapsed)
	}
	b.logf("merges: %.0f/s, p50 %s ms, p99 %s ms, %d errors", res.Throughput, ms(res.Median), ms(res.P99), res.errors)
	return res, nil
}

// upsertFloor is a closed-loop run of autocommitted upserts on a pool: the
// same-run floor of a closed-loop phase against that pool.
type upsertFloor struct {
	Summary
	callers, ops, errors int
	firstErr             error
}

// floorKeys is the rows the floor's upserts spread over: after the first
// touches, nearly every upsert updates a row, and concurrent callers rarely
// meet on one row.
const floorKeys = 4096

// closedLoopUpsertFloor runs callers closed-loop callers on pool, each
// doing one autocommitted upsert of a random row of a scratch UNLOGGED table
// at a time (pgbench.KeyFloor, created and dropped here): ops
// operations in all when ops > 0, otherwise for d, after one unmeasured
// upsert per caller. Latency is each successful statement's; throughput
// counts successful ones.
func closedLoopUpsertFloor(ctx context.Context, pool *pgxpool.Pool, callers, ops int, d time.Duration) (upsertFloor, error) {
	res := upsertFloor{callers: callers}
	floor, err := pgbench.NewKeyFloor(ctx, pool, fmt.Sprintf("bench_closed_floor_%x", time.Now().UnixNano()&0xffffffffff))
	if err != nil {
		return res, err
	}
	defer floor.Drop()

	type outcome struct {
		lat      []time.Duration
		errors   int
		firstErr error
	}
	outs := make([]outcome, callers)
	// Unmeasured: one upsert per caller, so each has its connection and the
	// prepared statement before the clock starts, as the phase it floors had.
	warm, wctx := errgroup.WithContext(ctx)
	for range callers {
		warm.Go(func() error {
			return floor.Upsert(wctx, rand.Int64N(floorKeys), time.Now())
		})
	}
	if err := warm.Wait(); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	var issued atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	more := func() bool {
		if ctx.Err() != nil {
			return false
		}
		if ops > 0 {
			return issued.Add(1) <= int64(ops)
		}
		return time.Now().Before(deadline)
	}
	var wg sync.WaitGroup
	for w := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &outs[w]
			for more() {
				t := time.Now()
				if err := floor.Upsert(ctx, rand.Int64N(floorKeys), t); err != nil {
					if o.errors++; o.firstErr == nil {
						o.firstErr = err
					}
					continue
				}
				o.lat = append(o.lat, time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var ds []time.Duration
	for _, o := range outs {
		ds = append(ds, o.lat...)
		res.errors += o.errors
		if res.firstErr == nil {
			res.firstErr = o.firstErr
		}
	}
	res.ops = len(ds) + res.errors
	if len(ds) > 0 {
		res.Summary = summarize(ds, elapsed)
	}
	return res, ctx.Err()
}

// floorRatios is a closed-loop phase's throughput and latencies ÷ its
// upsert floor's, for the report.
func floorRatios(s Summary, f upsertFloor) (tput, p50, p99 string) {
	r := func(a, b float64, format string) string {
		if a <= 0 || b <= 0 {
			return "–"
		}
		return fmt.Sprintf(format, a/b)
	}
	tputFormat := "%.2f×"
	if f.Throughput > 0 && s.Throughput/f.Throughput < 0.1 {
		tputFormat = "%.3f×"
	}
	return r(s.Throughput, f.Throughput, tputFormat),
		r(float64(s.Median), float64(f.Median), "%.1f×"), r(float64(s.P99), float64(f.P99), "%.1f×")
}

// floorSentence describes an upsert floor in the report's words.
func floorSentence(f upsertFloor, span string) string {
	s := fmt.Sprintf("Floor, same run and pool, right after: %d callers closed loop %s, each doing one autocommitted `%s` of a random row (of %s) in a scratch UNLOGGED table at a time: **%.0f upserts/s**, p50 %s ms, p99 %s ms, max %s ms, %d errors",
		f.callers, span, pgbench.KeyFloorStatement, thousands(floorKeys), f.Throughput, ms(f.Median), ms(f.P99), ms(f.Max), f.errors)
	if f.firstErr != nil {
		s += fmt.Sprintf(" (first: %v)", f.firstErr)
	}
	return s + "."
}

// freshPairs returns up to want pairs (member i, member i+1) of the merge
// span in which neither member has merged or been merged: the merges of
// earlier runs are in the database, so a rerun picks the next pairs.
func (b *resolveBench) freshPairs(ctx context.Context, want int) ([][2]uuid.UUID, error) {
	var out [][2]uuid.UUID
	const chunk = 10_000
	for lo := b.members - b.mergeSpan(); lo+1 < b.members && len(out) < want; lo += chunk {
		hi := min(lo+chunk, b.members)
		ids := make([]*mcv1.Identifier, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ids = append(ids, phoneID(i))
		}
		ns, err := b.svc.Normalize(ids)
		if err != nil {
			return nil, err
		}
		hashes := make([][]byte, len(ns))
		for k, n := range ns {
			hashes[k] = n.Hash
		}
		// The member each phone was preloaded into, and whether it is
		// untouched.
		member, fresh, err := pgbench.OriginMembers(ctx, b.pool, int16(mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE), hashes)
		if err != nil {
			return nil, err
		}
		for k := 0; k+1 < len(ns) && len(out) < want; k += 2 {
			if fresh[k] && fresh[k+1] {
				out = append(out, [2]uuid.UUID{member[k], member[k+1]})
			}
		}
	}
	return out, nil
}

// Public latency anchors named in issue 3.
const (
	segmentProfileAPI = 200 * time.Millisecond // Segment profile API
	talonOne          = 50 * time.Millisecond  // Talon.One
)

func (b *resolveBench) report(floor, resolve phaseResult, merges mergeResult, pre preloadResult, total, merged int64) {
	w := b.out
	fmt.Fprintf(w, "| scenario | requests | target rate (req/s) | achieved (req/s) | p50 ms | p99 ms | max ms | errors | p50 ÷ floor | p99 ÷ floor |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|\n")
	row := func(name string, r phaseResult) {
		fmt.Fprintf(w, "| %s | %d | %d | %.0f | %s | %s | %s | %d | %s | %s |\n", name, r.sent, b.rate, r.Throughput,
			ms(r.Median), ms(r.P99), ms(r.Max), r.errors, ratio(r.Median, floor.Median), ratio(r.P99, floor.P99))
	}
	row("floor: grpc.health.v1.Health/Check (same server, same run)", floor)
	row("IdentityService.Resolve, existing phone (create_if_missing)", resolve)
	fmt.Fprintln(w)
	for _, r := range []struct {
		name string
		p    phaseResult
	}{{"floor", floor}, {"Resolve", resolve}} {
		if r.p.errors > 0 {
			fmt.Fprintf(w, "%s errors by status: %s.\n", r.name, countsByCode(r.p.byCode))
		}
	}
	if merges.wanted > 0 {
		tput, p50, p99 := floorRatios(merges.Summary, merges.floor)
		fmt.Fprintf(w, "Merges: IdentityService.Merge of member i+1 into member i, %d of %d pairs, %d callers closed loop: **%.0f merges/s** (÷ floor %s), p50 %s ms (÷ floor %s), p99 %s ms (÷ floor %s), max %s ms, %d errors",
			merges.attempted, merges.wanted, b.mergeWorkers, merges.Throughput, tput, ms(merges.Median), p50, ms(merges.P99), p99, ms(merges.Max), merges.errors)
		if merges.errors > 0 {
			fmt.Fprintf(w, " (%s)", countsByCode(merges.byCode))
		}
		fmt.Fprintln(w, ".")
		if merges.floor.callers > 0 {
			fmt.Fprintln(w, floorSentence(merges.floor, fmt.Sprintf("for %d upserts", merges.floor.ops)))
		}
		if merges.note != "" {
			fmt.Fprintf(w, "Note: %s.\n", merges.note)
		}
		fmt.Fprintln(w)
	}
	if resolve.P99 > 0 {
		fmt.Fprintf(w, "Public anchors from issue 3: Segment's profile API promises < 200 ms and Talon.One < 50 ms; our Resolve p99 of %s ms is %.2f× the first and %.2f× the second (over loopback, so without their network).\n\n",
			ms(resolve.P99), float64(resolve.P99)/float64(segmentProfileAPI), float64(resolve.P99)/float64(talonOne))
	}
	loaded := "already present, not reloaded"
	if pre.loaded > 0 {
		loaded = fmt.Sprintf("%s loaded in this run in %s (normalised by identity.Service, COPY in batches of %s, then VACUUM ANALYZE)",
			thousands(int64(pre.loaded)), pre.took.Round(time.Second), thousands(preloadBatchSize))
	}
	fmt.Fprintf(w, "Preload: %s members with one phone each (%s); the database holds %s members, %s of them merged.\n",
		thousands(int64(b.members)), loaded, thousands(total), thousands(merged))
	fmt.Fprintf(w, "GOMAXPROCS %d; client, gRPC server and PostgreSQL share the machine; %d client connections; PostgreSQL pool of %d; latency of successful requests, from each request's intended send time.\n",
		runtime.GOMAXPROCS(0), b.conns, b.e.Config.Postgres.MaxConns)
}

func countsByCode(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// thousands formats n with comma separators: 1000000 → "1,000,000".
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
