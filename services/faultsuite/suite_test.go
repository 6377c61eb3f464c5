// Package faultsuite_test is the fault suite (make faults): the platform as
// separate serve and pipeline processes (two pipeline instances in one
// group), a workload over Kafka and gRPC whose clients retry with the same
// idempotency key, and injected faults — SIGKILL of pipeline instances and of
// serve, a PostgreSQL restart, a Kafka broker restart, ClickHouse stopped for
// 30 s, a crash between the relay's publish and its mark. Afterwards it checks
// that every acknowledged operation and every published event was applied
// exactly once, the ledger invariants, per-member change sequences on the
// topic and on live streams, ClickHouse facts, the dead letters of the poison
// records, and prints how long each fault took to recover from.
//
// It restarts the shared servers that scripts/deps.sh starts, so it runs
// alone: MC_FAULT_SUITE=1 (scripts/faults.sh sets it), never in make test.
package faultsuite_test

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	"github.com/membercenter/membercenter/services/cmd/membercenter/membercentertest"
)

// recovery is how long one fault took to recover from.
type recovery struct {
	fault  string
	path   string        // what was measured
	lasted time.Duration // how long the injection itself took (a server's stop and start)
	took   time.Duration // from the fault to the first end-to-end success after it
	failed string        // why it did not recover, if it did not
}

type suite struct {
	t        *testing.T
	root     string
	servers  servers
	kcfg     kafka.Config
	pool     *pgxpool.Pool
	ch       driver.Conn
	serve    *proc
	pipes    []*proc
	grpcAddr string

	connMu sync.Mutex
	conn   *grpc.ClientConn

	prod       *producer
	api        *apiClient
	subs       []*subscriber
	probe      *prober
	recoveries []recovery
	poisons    []poison
	started    time.Time
	stopSubs   func()        // ends the live streams (after the drain)
	lasted     time.Duration // how long the fault being measured took to inject
}

func TestFaultSuite(t *testing.T) {
	if os.Getenv("MC_FAULT_SUITE") == "" {
		t.Skip("the fault suite restarts the shared servers: run it alone with make faults")
	}
	s := &suite{t: t, root: repoRoot(t), started: time.Now()}
	s.servers = servers{deps: filepath.Join(s.root, "scripts", "deps.sh")}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	s.setUp(ctx)
	workCtx, stopWork := context.WithCancel(ctx)
	var work sync.WaitGroup
	s.startWorkload(workCtx, &work)

	s.log("workload running; injecting faults")
	s.injectFaults(ctx)

	s.log("faults done; the workload runs on for 10 s, then stops")
	sleep(ctx, 10*time.Second)
	stopWork()
	work.Wait()
	s.drain(ctx)
	rep := s.check(ctx)
	s.report(rep)
	for _, p := range append([]*proc{s.serve}, s.pipes...) {
		p.stop()
	}
	if rep.failed() {
		t.Fatalf("the fault suite found problems:\n%s", strings.Join(rep.problems, "\n"))
	}
}

func (s *suite) log(format string, args ...any) {
	fmt.Printf("faults %6.1fs  %s\n", time.Since(s.started).Seconds(), fmt.Sprintf(format, args...))
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// setUp gives the suite its own database, ClickHouse database and topics,
// builds the binary and starts serve and two pipeline instances.
func (s *suite) setUp(ctx context.Context) {
	t := s.t
	dir := t.TempDir()
	if d := os.Getenv("MC_FAULT_LOGS"); d != "" {
		dir = d
		_ = os.MkdirAll(dir, 0o755)
	}
	bin := membercentertest.Build(t, ctx, dir, "faults")
	pgURL := pgtest.NewDB(t)
	ch, chCfg := chtest.NewDB(t)
	s.ch = ch
	s.kcfg = kafkatest.Config(t)
	var err error
	if s.pool, err = pgxpool.New(ctx, pgURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.pool.Close)
	s.grpcAddr = freePort(t)
	base := []string{
		"MC_PG_URL=" + pgURL, "MC_PG_MAX_CONNS=10",
		"MC_KAFKA_BROKERS=" + strings.Join(s.kcfg.Brokers, ","),
		"MC_TOPIC_CHANNEL_EVENTS=" + s.kcfg.Topics.ChannelEvents, "MC_TOPIC_MEMBER_EVENTS=" + s.kcfg.Topics.MemberEvents,
		"MC_TOPIC_MEMBER_CHANGES=" + s.kcfg.Topics.MemberChanges, "MC_TOPIC_DLQ=" + s.kcfg.Topics.DLQ,
		"MC_KAFKA_GROUP_PREFIX=" + s.kcfg.GroupPrefix,
		"MC_CLICKHOUSE_ADDR=" + chCfg.Addr, "MC_CLICKHOUSE_DB=" + chCfg.Database,
		"MC_LOG_LEVEL=info", "MC_HTTP_ADDR=" + freePort(t),
	}
	migrate := &proc{name: "migrate", bin: bin, args: []string{"migrate"}, env: base, logPath: filepath.Join(dir, "migrate.log")}
	if out, err := runOnce(ctx, migrate); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	s.serve = &proc{name: "serve", bin: bin, args: []string{"serve"}, admin: freePort(t), logPath: filepath.Join(dir, "serve.log")}
	s.serve.env = append(append([]string{}, base...), "MC_GRPC_ADDR="+s.grpcAddr, "MC_ADMIN_ADDR="+s.serve.admin, "MC_INSTANCE_ID=faults-serve")
	for i := 1; i <= 2; i++ {
		p := &proc{name: fmt.Sprintf("pipeline-%d", i), bin: bin, args: []string{"pipeline"}, admin: freePort(t),
			logPath: filepath.Join(dir, fmt.Sprintf("pipeline-%d.log", i))}
		p.env = append(append([]string{}, base...), "MC_GRPC_ADDR="+freePort(t), "MC_ADMIN_ADDR="+p.admin,
			fmt.Sprintf("MC_INSTANCE_ID=faults-pipeline-%d", i))
		s.pipes = append(s.pipes, p)
	}
	for _, p := range append([]*proc{s.serve}, s.pipes...) {
		p.start(t)
	}
	t.Cleanup(func() {
		for _, p := range append([]*proc{s.serve}, s.pipes...) {
			p.stop()
		}
	})
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for _, p := range append([]*proc{s.serve}, s.pipes...) {
		if err := p.waitReady(rctx); err != nil {
			t.Fatalf("%v; see %s", err, p.logPath)
		}
	}
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.conn = conn
	s.log("platform up: serve and 2 pipeline instances; logs in %s", dir)
}

func runOnce(ctx context.Context, p *proc) ([]byte, error) {
	if err := p.spawn(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	done := p.done
	p.stopped = true
	p.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	out, _ := os.ReadFile(p.logPath)
	if p.cmd.ProcessState == nil || !p.cmd.ProcessState.Success() {
		return out, fmt.Errorf("%s failed", p.name)
	}
	return out, nil
}

func (s *suite) grpcConn() *grpc.ClientConn {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	return s.conn
}

const (
	channelShoppers = 300
	apiMembers      = 40
	eventRate       = 40 // channel events per second
	opRate          = 8  // RPCs per second
)

// startWorkload resolves the API's members, starts the subscribers, the
// prober, the channel events, the RPCs, and publishes the poison records.
func (s *suite) startWorkload(ctx context.Context, wg *sync.WaitGroup) {
	t := s.t
	var err error
	if s.prod, err = newProducer(s.kcfg.Brokers, s.kcfg.Topics.ChannelEvents); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.prod.close)
	ids := mcv1.NewIdentityServiceClient(s.grpcConn())
	var members []string
	for i := range apiMembers {
		r, err := ids.Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_APP, CreateIfMissing: true,
			IdempotencyKey: fmt.Sprintf("api-member-%d", i),
			Identifiers:    []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: fmt.Sprintf("1372%07d", i)}}})
		if err != nil {
			t.Fatalf("resolve API member: %v", err)
		}
		members = append(members, r.GetMemberId())
	}
	// Give the API members a balance to redeem from.
	benefits := mcv1.NewBenefitsServiceClient(s.grpcConn())
	for i, m := range members {
		if _, err := benefits.Adjust(ctx, &mcv1.AdjustRequest{MemberId: m, Points: 5_000, Reason: "fault suite opening balance",
			IdempotencyKey: fmt.Sprintf("opening-%d", i)}); err != nil {
			t.Fatalf("opening balance: %v", err)
		}
	}
	s.api = &apiClient{conn: s.grpcConn(), members: members}

	// Subscribers: every change, and the API members' changes.
	s.subs = []*subscriber{
		{name: "all changes", conn: s.grpcConn, req: &mcv1.SubscribeRequest{}, seqs: map[string][]uint64{}},
		{name: "API members", conn: s.grpcConn, req: &mcv1.SubscribeRequest{MemberIds: members}, seqs: map[string][]uint64{}},
	}
	s.probe = newProber(s)
	s.subs = append(s.subs, s.probe.sub)
	// The streams follow until the checks end them, after the drain.
	subCtx, stopSubs := context.WithCancel(context.Background())
	var subWG sync.WaitGroup
	s.stopSubs = func() { stopSubs(); subWG.Wait() }
	t.Cleanup(s.stopSubs)
	for _, sub := range s.subs {
		ready := make(chan struct{})
		subWG.Add(1)
		go func() { defer subWG.Done(); sub.run(subCtx, ready) }()
		select {
		case <-ready:
		case <-time.After(60 * time.Second):
			t.Fatalf("subscriber %q not ready", sub.name)
		}
	}

	// The poison records, each followed by a good purchase of its shopper,
	// and records no stage writes on the topics between the stages.
	now := time.Now()
	s.poisons = append(poisonRecords(now), internalPoisons(s.kcfg.Topics)...)
	for _, p := range s.poisons {
		if err := s.prod.publishTo(ctx, cmp.Or(p.topic, s.kcfg.Topics.ChannelEvents), p.key, p.value); err != nil {
			t.Fatalf("publish poison %s: %v", p.name, err)
		}
		if p.goodID == "" {
			continue
		}
		good := purchase(p.goodID, p.key, "PC-"+p.key, now, 4_200)
		if err := s.prod.publishEvent(ctx, good, published{id: p.goodID, kind: "purchase", phone: p.key, orderID: "O-" + p.goodID, amount: 4_200}); err != nil {
			t.Fatal(err)
		}
	}

	shoppers := make([]shopper, channelShoppers)
	for i := range shoppers {
		shoppers[i] = shopper{phone: phoneOf(i), card: fmt.Sprintf("C%07d", i)}
	}
	wg.Add(2)
	go func() { defer wg.Done(); s.prod.channelWorkload(ctx, shoppers, eventRate, 7) }()
	go func() { defer wg.Done(); s.api.run(ctx, opRate, 11) }()
	// A first probe: the baseline of an undisturbed platform.
	s.measure(ctx, "none (baseline)", time.Now(), pathStream)
}

// injectFaults runs the faults one after another, measuring the recovery
// from each.
func (s *suite) injectFaults(ctx context.Context) {
	settle := func() { sleep(ctx, 5*time.Second) }
	for i, p := range s.pipes {
		settle()
		at := time.Now()
		s.log("SIGKILL %s, restarted at once", p.name)
		p.restart(s.t)
		s.measure(ctx, fmt.Sprintf("SIGKILL pipeline instance %d", i+1), at, pathStream)
	}
	settle()
	at := time.Now()
	s.log("SIGKILL pipeline-2, not restarted: the group moves its partitions after the session timeout")
	s.pipes[1].kill()
	s.measure(ctx, "SIGKILL pipeline instance 2, not restarted (partitions move to instance 1)", at, pathStream)
	s.pipes[1].start(s.t)

	settle()
	at = time.Now()
	s.log("SIGKILL serve, restarted at once")
	s.serve.restart(s.t)
	s.measure(ctx, "SIGKILL serve", at, pathStream)

	if os.Getenv("MC_FAULT_SERVERS") == "off" {
		s.log("MC_FAULT_SERVERS=off: no server restarts")
	} else {
		s.serverFaults(ctx)
	}

	settle()
	at = time.Now()
	s.log("relay crash between publish and mark (failpoint) on both pipeline instances")
	for _, p := range s.pipes {
		p.restart(s.t, "MC_FAILPOINTS=relay-after-publish=crash")
	}
	s.measure(ctx, "relay crash between publish and mark", at, pathStream)

	settle()
	s.log("SIGKILL a pipeline instance every 5 s for 40 s")
	chaosStart := time.Now()
	for i := 0; time.Since(chaosStart) < 40*time.Second && ctx.Err() == nil; i++ {
		s.pipes[i%2].restart(s.t)
		sleep(ctx, 5*time.Second)
	}
	s.measure(ctx, "after SIGKILL every 5 s for 40 s", time.Now(), pathStream)
}

// serverFaults restarts PostgreSQL and Kafka and stops ClickHouse for 30 s.
func (s *suite) serverFaults(ctx context.Context) {
	settle := func() { sleep(ctx, 5*time.Second) }
	// inject runs a server command and returns when it began and how long
	// it took (the server is down for about that long).
	inject := func(what string, cmd func(context.Context, string) error, server string) (time.Time, time.Duration) {
		s.log("%s", what)
		at := time.Now()
		if err := cmd(ctx, server); err != nil {
			s.t.Fatal(err)
		}
		lasted := time.Since(at)
		s.lasted = lasted
		return at, lasted
	}
	settle()
	at, _ := inject("PostgreSQL restart", s.servers.restart, "postgres")
	s.measure(ctx, "PostgreSQL restart", at, pathStream)

	settle()
	at, _ = inject("Kafka broker restart", s.servers.restart, "kafka")
	s.measure(ctx, "Kafka broker restart", at, pathStream)

	settle()
	at, lasted := inject("ClickHouse stopped for 30 s", s.servers.stop, "clickhouse")
	s.lasted = 0
	// The stream path does not need ClickHouse: measured from the moment
	// it is down.
	s.measure(ctx, "ClickHouse stopped (stream path, while it is down)", at.Add(lasted), pathStream)
	sleep(ctx, 30*time.Second-time.Since(at))
	back, _ := inject("ClickHouse started again", s.servers.start, "clickhouse")
	s.measure(ctx, "ClickHouse back after 30 s (facts path)", back, pathFacts)
}

// prober publishes rounds of purchases, one for each of several probe
// shoppers (spread over the partitions, so a round crosses every worker),
// and watches them arrive on a Subscribe stream and in ClickHouse.
type prober struct {
	s       *suite
	phones  []string
	members []string
	sub     *subscriber

	mu      sync.Mutex
	arrived map[string]time.Time // probe event id → when its points change reached the stream
	n       int
}

const probeShoppers = 12

func newProber(s *suite) *prober {
	p := &prober{s: s, arrived: map[string]time.Time{}}
	for i := range probeShoppers {
		phone := fmt.Sprintf("1379999%04d", i)
		r, err := mcv1.NewIdentityServiceClient(s.grpcConn()).Resolve(context.Background(), &mcv1.ResolveRequest{
			Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "probe-" + phone,
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}}})
		if err != nil {
			s.t.Fatalf("resolve a probe shopper: %v", err)
		}
		p.phones = append(p.phones, phone)
		p.members = append(p.members, r.GetMemberId())
	}
	p.sub = &subscriber{name: "probe", conn: s.grpcConn, req: &mcv1.SubscribeRequest{MemberIds: p.members}, seqs: map[string][]uint64{},
		onEvent: func(c *mcv1.MemberChange, at time.Time) {
			if c.GetPointsChanged() != nil && strings.HasPrefix(c.GetCauseId(), "probe-") {
				id := strings.SplitN(c.GetCauseId(), "#", 2)[0]
				p.mu.Lock()
				if _, ok := p.arrived[id]; !ok {
					p.arrived[id] = at
				}
				p.mu.Unlock()
			}
		}}
	return p
}

// round publishes one probe purchase per probe shopper and returns their
// event ids.
func (p *prober) round(ctx context.Context) ([]string, error) {
	p.mu.Lock()
	p.n++
	n := p.n
	p.mu.Unlock()
	var ids []string
	for i, phone := range p.phones {
		id := fmt.Sprintf("probe-%04d-%02d", n, i)
		ev := purchase(id, phone, "PROBE", time.Now(), 1_000)
		ev.Identifiers = ev.Identifiers[:1]
		if err := p.s.prod.publishEvent(ctx, ev, published{id: id, kind: "purchase", phone: phone, orderID: "O-" + id, amount: 1_000}); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// stream reports whether every probe of ids reached the stream.
func (p *prober) stream(_ context.Context, ids []string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if _, ok := p.arrived[id]; !ok {
			return false, nil
		}
	}
	return true, nil
}

// facts reports whether every probe of ids is in ClickHouse's member_events.
func (p *prober) facts(ctx context.Context, ids []string) (bool, error) {
	var n uint64
	err := p.s.ch.QueryRow(ctx, `SELECT uniqExact(event_id) FROM member_events WHERE has(?, event_id)`, ids).Scan(&n)
	return n == uint64(len(ids)), err
}

// The paths a recovery is measured on.
const (
	pathStream = "purchase → Subscribe stream"
	pathFacts  = "purchase → ClickHouse member_events"
)

// measure publishes a round of probes every second until a round published
// after the fault has completed its path for every probe shopper, and
// records the time from the fault to that completion.
func (s *suite) measure(ctx context.Context, fault string, at time.Time, path string) {
	done := s.probe.stream
	if path == pathFacts {
		done = s.probe.facts
	}
	mctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var rounds [][]string
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastSend := time.Time{}
	for {
		if time.Since(lastSend) >= time.Second {
			if ids, err := s.probe.round(mctx); err == nil {
				rounds = append(rounds, ids)
			}
			lastSend = time.Now()
		}
		for _, ids := range rounds {
			if ok, _ := done(mctx, ids); ok {
				took := time.Since(at)
				s.recoveries = append(s.recoveries, recovery{fault: fault, path: path, took: took, lasted: s.lasted})
				s.lasted = 0
				s.log("recovered from %q in %s (%s)", fault, took.Round(10*time.Millisecond), path)
				return
			}
		}
		select {
		case <-mctx.Done():
			s.recoveries = append(s.recoveries, recovery{fault: fault, path: path, took: time.Since(at), lasted: s.lasted,
				failed: "no round of probes completed within 3 minutes"})
			s.lasted = 0
			s.log("NOT recovered from %q", fault)
			return
		case <-tick.C:
		}
	}
}

// drain waits until every stage has caught up: every acknowledged event is
// processed by both workers or dead-lettered, the outbox is published, and
// ClickHouse has stopped growing.
func (s *suite) drain(ctx context.Context) {
	s.log("draining")
	dctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	good := map[string]bool{}
	want := 0
	for _, e := range s.prod.acked() {
		good[e.id] = true
		want += len(stagesOf(e))
	}
	var lastCH uint64
	stable := 0
	for {
		var processed, unpublished int
		err := s.pool.QueryRow(dctx, `SELECT (SELECT count(*) FROM processed_events WHERE event_id = ANY($1)),
			(SELECT count(*) FROM outbox_pending)`, keys(good)).Scan(&processed, &unpublished)
		var chRows uint64
		if err == nil {
			err = s.ch.QueryRow(dctx, `SELECT count() FROM member_changes`).Scan(&chRows)
		}
		if err == nil && processed >= want && unpublished == 0 {
			if chRows == lastCH {
				stable++
			} else {
				stable = 0
			}
			lastCH = chRows
			if stable >= 6 {
				s.log("drained: %d events processed by the workers, outbox published, ClickHouse stable", len(good))
				return
			}
		}
		select {
		case <-dctx.Done():
			s.log("drain timed out (processed %d of %d, unpublished %d, err %v); checking anyway", processed, want, unpublished, err)
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
