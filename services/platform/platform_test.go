package platform_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/telemetry"
)

type running struct {
	conn  *grpc.ClientConn
	admin string
	pgURL string
	p     *platform.Platform
}

// serve runs the identity, profile and benefits services (no Kafka needed)
// on their own PostgreSQL and ClickHouse databases.
func serve(t *testing.T) *running {
	t.Helper()
	cfg := testConfig(t, pgtest.NewDB(t), "membercenter-platform-test")
	e := platformtest.OpenT(t, cfg, io.Discard)
	r := platformtest.StartT(t, e.P, platform.Options{Services: []string{"identity", "profile", "benefits"}, Now: clocktest.New().Now})
	return &running{conn: r.Conn, admin: "http://" + r.Admin, pgURL: cfg.Postgres.URL, p: e.P}
}

// testConfig is the platform's configuration on the PostgreSQL database at
// pgURL and a ClickHouse database of the test's own, serving on loopback
// ports, its telemetry named service.
func testConfig(t *testing.T, pgURL, service string) platform.Config {
	t.Helper()
	_, chCfg := chtest.NewDB(t)
	return platform.Config{
		Postgres:   postgres.Config{URL: pgURL, MaxConns: 8},
		ClickHouse: chCfg,
		Telemetry:  telemetry.Config{ServiceName: service, LogLevel: "error"},
		Server:     server.Config{GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Grace: 5 * time.Second},
	}
}

// terminateBackends ends every other connection to the test's own
// database, as a PostgreSQL restart does (SQLSTATE 57P01). It never touches
// another database of the shared server, nor a server process working in
// this one (an autovacuum worker: only a superuser may end it, and the
// platform holds no connection through it).
func terminateBackends(ctx context.Context, pgURL string) (int, error) {
	u, err := url.Parse(pgURL)
	if err != nil {
		return 0, err
	}
	db := strings.TrimPrefix(u.Path, "/")
	conn, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'`, db).Scan(&n)
	return n, err
}

// TestDatabaseRestartIsUnavailableNeverInternal: while the database drops
// every connection again and again, tills keep calling Adjust, Commit,
// Redeem and Resolve; every failure is Unavailable (so they retry with the
// same key), never Internal, and once all have succeeded each operation was
// applied exactly once.
func TestDatabaseRestartIsUnavailableNeverInternal(t *testing.T) {
	r := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ids, bens := mcv1.NewIdentityServiceClient(r.conn), mcv1.NewBenefitsServiceClient(r.conn)
	res, err := ids.Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "new",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: "card-restart"}}})
	if err != nil {
		t.Fatal(err)
	}
	member := res.GetMemberId()
	if _, err := bens.Adjust(ctx, &mcv1.AdjustRequest{MemberId: member, Points: 10_000, Reason: "seed", IdempotencyKey: "seed"}); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	failures := map[codes.Code]int{}
	var other []string
	// retry calls with the same request until it succeeds, as a till does
	// on Unavailable.
	retry := func(call func() error) error {
		for {
			err := call()
			if err == nil {
				return nil
			}
			st := status.Convert(err)
			mu.Lock()
			failures[st.Code()]++
			if st.Code() != codes.Unavailable {
				other = append(other, st.Code().String()+": "+st.Message())
			}
			mu.Unlock()
			if st.Code() != codes.Unavailable || ctx.Err() != nil {
				return err
			}
		}
	}
	const tills, calls = 4, 12
	acked := make(chan struct{}, tills*calls)
	g, gctx := errgroup.WithContext(ctx)
	for till := 0; till < tills; till++ {
		g.Go(func() error {
			for i := 0; i < calls; i++ {
				key := fmt.Sprintf("till-%d-%d", till, i)
				var err error
				switch i % 4 {
				case 0:
					err = retry(func() error {
						_, err := bens.Adjust(gctx, &mcv1.AdjustRequest{MemberId: member, Points: 10, Reason: "goodwill", IdempotencyKey: key})
						return err
					})
				case 1:
					err = retry(func() error {
						_, err := bens.Redeem(gctx, &mcv1.RedeemRequest{MemberId: member, Points: 100, IdempotencyKey: key})
						return err
					})
				case 2:
					err = retry(func() error {
						_, err := bens.Commit(gctx, &mcv1.CommitRequest{MemberId: member, IdempotencyKey: key, Basket: &mcv1.Basket{
							OrderId: key, Channel: mcv1.Channel_CHANNEL_POS, Total: &mcv1.Money{Currency: "CNY", AmountMinor: 10_000},
							Items: []*mcv1.LineItem{{Sku: "TEA", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 10_000}}}}})
						return err
					})
				default:
					err = retry(func() error {
						_, err := ids.Resolve(gctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: key,
							Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: "card-" + key}}})
						return err
					})
				}
				if err != nil {
					return fmt.Errorf("%s: %w", key, err)
				}
				acked <- struct{}{}
			}
			return nil
		})
	}
	// The database drops every connection after every few acknowledged
	// calls, while the others are in flight.
	terminations := 0
	g.Go(func() error {
		for done := 0; done < tills*calls; done++ {
			select {
			case <-acked:
			case <-gctx.Done():
				return nil
			}
			if done%3 == 0 {
				n, err := terminateBackends(gctx, r.pgURL)
				if err != nil {
					return err
				}
				terminations += n
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		t.Fatalf("%v (failures by code %v)", err, failures)
	}
	if len(other) > 0 {
		t.Errorf("failures other than Unavailable while the database restarted: %q", other)
	}
	if terminations == 0 || failures[codes.Unavailable] == 0 {
		t.Errorf("%d backends terminated, %d Unavailable answers: the fault was not exercised", terminations, failures[codes.Unavailable])
	}
	t.Logf("%d backends terminated; failures by code %v", terminations, failures)

	// Each acknowledged operation was applied exactly once. (The last
	// termination may have come after the last call: the read is retried
	// like the calls.)
	var bal *mcv1.GetBalanceResponse
	if err := retry(func() error {
		var err error
		bal, err = bens.GetBalance(ctx, &mcv1.GetBalanceRequest{MemberId: member})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const adjusts, redeems, commits = tills * calls / 4, tills * calls / 4, tills * calls / 4
	var txns, orders, cards int
	if err := r.p.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM ledger_transactions WHERE kind IN ('adjust', 'redeem')),
		(SELECT count(*) FROM orders), (SELECT count(*) FROM member_identifiers)`).Scan(&txns, &orders, &cards); err != nil {
		t.Fatal(err)
	}
	if txns != 1+adjusts+redeems || orders != commits || cards != 1+tills*calls/4 {
		t.Errorf("%d adjustments and redemptions, %d orders, %d identifiers; want %d, %d, %d", txns, orders, cards,
			1+adjusts+redeems, commits, 1+tills*calls/4)
	}
	// Purchase points are pending for the return window; the third
	// purchase of the month paid the 100-point mission bonus, available now.
	if want := int64(10_000 + adjusts*10 - redeems*100 + 100); bal.GetAvailable() != want {
		t.Errorf("available %d, want %d", bal.GetAvailable(), want)
	}
	if err := pgtest.CheckRun(ctx, r.p.Pool()); err != nil {
		t.Error(err)
	}
}

// TestReadinessFollowsTheDatabase: /readyz is 200 while PostgreSQL answers,
// and /healthz stays 200 throughout.
func TestReadinessAndHealth(t *testing.T) {
	r := serve(t)
	for _, path := range []string{"/readyz", "/healthz"} {
		resp, err := http.Get(r.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d %s", path, resp.StatusCode, b)
		}
	}
}

// TestMetricsShowThePools: an SRE sees on /metrics how the platform's
// PostgreSQL pools are used, each under its name: connections taken and
// idle, and the time calls waited for one.
func TestMetricsShowThePools(t *testing.T) {
	r := serve(t)
	resp, err := http.Get(r.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	series := map[string]bool{} // name and pool of each series
	for _, l := range strings.Split(string(b), "\n") {
		name, labels, ok := strings.Cut(l, "{")
		if _, pool, found := strings.Cut(labels, `db_client_connection_pool_name="`); ok && found {
			pool, _, _ = strings.Cut(pool, `"`)
			series[name+" "+pool] = true
		}
	}
	for _, pool := range []string{"platform", "keystore"} {
		for _, name := range []string{"pgxpool_acquires_total", "pgxpool_acquire_duration_nanoseconds_total", "pgxpool_empty_acquire_wait_time_nanoseconds_total",
			"pgxpool_acquired_connections", "pgxpool_idle_connections", "pgxpool_max_connections"} {
			if !series[name+" "+pool] {
				t.Errorf("/metrics has no %s of the %s pool", name, pool)
			}
		}
	}
}

func TestConfigAndSelection(t *testing.T) {
	cfg, err := platform.LoadConfig(context.Background())
	if err != nil {
		t.Fatalf("the defaults are not a valid configuration: %v", err)
	}
	if cfg.Server.GRPCAddr == "" || len(cfg.Kafka.Brokers) == 0 || cfg.Postgres.OutboxRetention != 24*time.Hour {
		t.Errorf("defaults: %+v", cfg)
	}
	bad := cfg
	bad.Postgres.OutboxRetention = -time.Hour
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "MC_OUTBOX_RETENTION") {
		t.Errorf("a negative outbox retention: %v; want MC_OUTBOX_RETENTION named", err)
	}
	bad = cfg
	bad.Tags.StateCacheBytes = -1
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "MC_TAG_STATE_CACHE_BYTES") {
		t.Errorf("a negative state cache: %v; want MC_TAG_STATE_CACHE_BYTES named", err)
	}
	if got, err := platform.ParseSelection("stage", "ingest, sink,ingest", platform.AllStages); err != nil || len(got) != 2 || got[1] != "clickhouse-sink" {
		t.Errorf("ingest, sink, ingest → %v, %v; want [ingest clickhouse-sink]", got, err)
	}
	if got, _ := platform.ParseSelection("service", "all", platform.AllServices); len(got) != len(platform.AllServices) {
		t.Errorf("all → %v", got)
	}
	if got, err := platform.ParseSelection("service", "none", platform.AllServices); err != nil || got != nil {
		t.Errorf("none → %v, %v", got, err)
	}
	if _, err := platform.ParseSelection("service", " ", platform.AllServices); err == nil || !strings.Contains(err.Error(), "none") {
		t.Errorf("an empty selection: %v; want it refused, saying none is how to run none", err)
	}
	_, err = platform.ParseSelection("service", "identity,billing", platform.AllServices)
	if err == nil || !strings.Contains(err.Error(), `"billing"`) || !strings.Contains(err.Error(), "identity, profile, benefits, sync") {
		t.Errorf("an unknown service: %v; want it named with the valid ones", err)
	}
}
