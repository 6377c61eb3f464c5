// Package platform wires Member Center together by hand, top to bottom: the
// stores, the services behind the gRPC server, the pipeline stages, and the
// admin endpoints, each built from the configuration it owns.
package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sethvargo/go-envconfig"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/sink"
	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changefeed"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/gateway"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/profile"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/tags"
	"github.com/membercenter/membercenter/services/telemetry"
)

// Config is the whole platform's configuration; each part belongs to the
// package that uses it.
type Config struct {
	Postgres   postgres.Config
	KeyStore   postgres.KeyStoreConfig
	ClickHouse clickhouse.Config
	Kafka      kafka.Config
	Ingest     ingest.Config
	Telemetry  telemetry.Config
	Server     server.Config
	Identity   identity.Config
	Profile    profile.Config
	Tags       tags.Config
	Auth       auth.Config
}

// LoadConfig reads the configuration from the environment, with defaults
// that match what scripts/deps.sh starts.
func LoadConfig(ctx context.Context) (Config, error) {
	var c Config
	if err := envconfig.Process(ctx, &c); err != nil {
		return c, fmt.Errorf("read configuration: %w", err)
	}
	return c, c.Validate()
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	return errors.Join(c.Postgres.Validate(), c.KeyStore.Validate(), c.ClickHouse.Validate(), c.Kafka.Validate(), c.Ingest.Validate(),
		c.Telemetry.Validate(), c.Server.Validate(), c.Identity.Validate(), c.Profile.Validate(), c.Tags.Validate(), c.Auth.Validate())
}

// LogValue renders the effective configuration with secrets masked.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("postgres", c.Postgres.Masked()),
		slog.Int("postgres_max_conns", int(c.Postgres.MaxConns)),
		slog.Duration("outbox_retention", c.Postgres.OutboxRetention),
		slog.String("keystore", c.KeyStore.Masked()),
		slog.String("clickhouse", c.ClickHouse.Addr+"/"+c.ClickHouse.Database),
		slog.String("clickhouse_cluster", c.ClickHouse.Cluster),
		slog.String("clickhouse_password", telemetry.Mask(c.ClickHouse.Password)),
		slog.String("kafka", strings.Join(c.Kafka.Brokers, ",")),
		slog.Bool("kafka_tls", c.Kafka.TLSEnabled()),
		slog.Bool("clickhouse_tls", c.ClickHouse.TLSEnabled()),
		slog.Any("topics", c.Kafka.Topics),
		slog.String("group_prefix", c.Kafka.GroupPrefix),
		slog.String("instance_id", c.Kafka.InstanceID),
		slog.Duration("kafka_session_timeout", c.Kafka.SessionTimeout),
		slog.Duration("record_retry_limit", c.Kafka.RecordRetryLimit),
		slog.Int("max_event_bytes", c.Ingest.MaxEventBytes),
		slog.Int64("tag_state_cache_bytes", c.Tags.StateCacheBytes),
		slog.Duration("event_max_age", c.Ingest.EventMaxAge),
		slog.Duration("event_max_ahead", c.Ingest.EventMaxAhead),
		slog.String("grpc", c.Server.GRPCAddr),
		slog.String("admin", c.Server.AdminAddr),
		slog.String("listeners", c.Server.TLS.Describe()),
		slog.String("tls_cert", c.Server.TLS.CertFile),
		slog.String("tls_client_ca", c.Server.TLS.ClientCAFile),
		slog.Duration("grpc_max_connection_age", c.Server.MaxConnectionAge),
		slog.Duration("grpc_max_connection_age_grace", c.Server.MaxConnectionAgeGrace),
		slog.String("otlp", c.Telemetry.OTLPEndpoint),
		slog.Bool("pii_dev_keys", c.Identity.Keys.IsDev()),
		slog.String("pii_hmac_key", telemetry.Mask(c.Identity.Keys.HMACKey)),
		slog.String("pii_enc_key_id", c.Identity.Keys.EncKeyID),
		slog.String("channel_clients", c.Auth.ClientsPath),
		slog.String("attribute_schema", c.Profile.AttributeSchema),
		slog.Duration("jwks_refresh", c.Auth.JWKSRefresh),
	)
}

// Services and stages that can be selected.
var (
	AllServices = serviceNames()
	AllStages   = stageNames()
)

// ParseSelection expands a comma-separated selection ("all" or names) and
// rejects unknown names, listing the valid ones.
func ParseSelection(what, sel string, valid []string) ([]string, error) {
	sel = strings.TrimSpace(sel)
	switch sel {
	case "none":
		return nil, nil
	case "":
		// "--services=" is a mistake more often than a wish to run none.
		return nil, fmt.Errorf("no %s named; name some, all, or none", what)
	}
	if sel == "all" {
		return slices.Clone(valid), nil
	}
	var out []string
	for _, name := range strings.Split(sel, ",") {
		name = strings.TrimSpace(name)
		if name == "sink" {
			name = sink.Stage
		}
		if !slices.Contains(valid, name) {
			return nil, fmt.Errorf("unknown %s %q; choose from all, %s", what, name, strings.Join(valid, ", "))
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// Options selects what a process runs.
type Options struct {
	Services []string
	Stages   []string
	// Listeners; when nil, the configured addresses are used (HTTP: the
	// JSON API and server-sent events, served with the gRPC services).
	GRPC, Admin, HTTP net.Listener
	// Ready is called once every selected service and stage has started.
	Ready func()
	// Now is the business clock (event plausibility, earning, expiry,
	// windows, member codes); nil means the system clock. Tests and
	// simulations pin it so that nothing depends on the day they run.
	Now func() time.Time
}

// Platform holds the shared dependencies.
type Platform struct {
	cfg  Config
	tel  *telemetry.Telemetry
	pool *pgxpool.Pool
	keys *pgxpool.Pool // the key store: MC_KEYSTORE_URL, or the platform's database
}

// Open connects to PostgreSQL; Kafka and ClickHouse clients belong to the
// components that use them.
func Open(ctx context.Context, cfg Config, tel *telemetry.Telemetry) (*Platform, error) {
	pool, err := postgres.Open(ctx, cfg.Postgres, tel.Tracers)
	if err != nil {
		return nil, err
	}
	// The key store gets connections of its own even in the platform's
	// database: a transaction that holds one of the pool's while it makes a
	// member's data key never waits for another.
	ks := postgres.Config{URL: cfg.KeyStore.URL, MaxConns: 4}
	if ks.URL == "" {
		ks.URL = cfg.Postgres.URL
	}
	keys, err := postgres.Open(ctx, ks, tel.Tracers)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("key store (MC_KEYSTORE_URL): %w", err)
	}
	for name, p := range map[string]*pgxpool.Pool{"platform": pool, "keystore": keys} {
		if err := postgres.RecordPoolStats(p, tel.Meters, name); err != nil {
			pool.Close()
			keys.Close()
			return nil, err
		}
	}
	return &Platform{cfg: cfg, tel: tel, pool: pool, keys: keys}, nil
}

// Close releases the shared dependencies.
func (p *Platform) Close() {
	p.pool.Close()
	p.keys.Close()
}

// Pool returns the PostgreSQL pool.
func (p *Platform) Pool() *pgxpool.Pool { return p.pool }

// KeyStore returns the pool of the key store (members' data keys).
func (p *Platform) KeyStore() *pgxpool.Pool { return p.keys }

// NewIdentity is the identity service on the platform's database and key
// store.
func (p *Platform) NewIdentity(cw changes.Writer) (*identity.Service, error) {
	svc, err := identity.New(p.cfg.Identity, p.pool, cw, p.tel.Logger)
	if err != nil {
		return nil, err
	}
	svc.PII().UseKeyStore(p.keys)
	return svc, nil
}

// KafkaTelemetry is what a Kafka client of a process reports to: tel's
// providers and logger, and whether its spans are recorded now.
func KafkaTelemetry(tel *telemetry.Telemetry) kafka.Telemetry {
	return kafka.Telemetry{Tracers: tel.Tracers, Meters: tel.Meters, Propagator: tel.Propagator, Logger: tel.Logger, Recording: tel.Recording}
}

// Migrate applies PostgreSQL and ClickHouse migrations and creates missing
// Kafka topics. Every step is idempotent.
func (p *Platform) Migrate(ctx context.Context) error {
	log := p.tel.Logger
	applied, err := postgres.Migrate(ctx, p.pool)
	if err != nil {
		return err
	}
	log.InfoContext(ctx, "postgres migrated", "applied", applied)
	if p.cfg.KeyStore.URL != "" {
		if err := postgres.MigrateKeyStore(ctx, p.keys); err != nil {
			return err
		}
		log.InfoContext(ctx, "key store migrated", "keystore", p.cfg.KeyStore.Masked())
	}
	conn, err := clickhouse.Open(ctx, p.cfg.ClickHouse, clickhouse.WithTracerProvider(p.tel.Tracers))
	if err != nil {
		return err
	}
	defer conn.Close()
	// On a cluster (MC_CLICKHOUSE_CLUSTER) every node is migrated: local
	// tables and the Distributed tables over them.
	applied, err = clickhouse.NewSchema(p.cfg.ClickHouse, conn, clickhouse.WithTracerProvider(p.tel.Tracers)).Migrate(ctx)
	if err != nil {
		return err
	}
	log.InfoContext(ctx, "clickhouse migrated", "applied", applied)
	cl, err := kafka.NewClient(p.cfg.Kafka, KafkaTelemetry(p.tel), "")
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := kafka.EnsureTopics(ctx, cl.Client, p.cfg.Kafka.Topics); err != nil {
		return err
	}
	log.InfoContext(ctx, "kafka topics ready", "topics", p.cfg.Kafka.Topics)
	return nil
}

// errorCodes maps the services' sentinel errors to gRPC codes.
var errorCodes = []server.ErrorCode{
	{Err: postgres.ErrNotFound, Code: codes.NotFound},
	{Err: identity.ErrInvalidIdentifier, Code: codes.InvalidArgument},
	{Err: changes.ErrKeyReused, Code: codes.InvalidArgument},
	{Err: benefits.ErrBadPageToken, Code: codes.InvalidArgument},
	{Err: benefits.ErrInvalid, Code: codes.InvalidArgument},
	{Err: benefits.ErrOrderTaken, Code: codes.AlreadyExists},
	{Err: benefits.ErrRefused, Code: codes.FailedPrecondition},
	{Err: benefits.ErrNoFacts, Code: codes.FailedPrecondition},
	{Err: benefits.ErrSameOperator, Code: codes.PermissionDenied},
	{Err: benefits.ErrDecided, Code: codes.FailedPrecondition},
	{Err: profile.ErrInvalid, Code: codes.InvalidArgument},
	{Err: profile.ErrNoFacts, Code: codes.FailedPrecondition},
	{Err: segment.ErrLabelsBehind, Code: codes.Unavailable},
	{Err: changefeed.ErrBadToken, Code: codes.InvalidArgument},
	{Err: changefeed.ErrTokenExpired, Code: codes.OutOfRange},
	{Err: changefeed.ErrFeedBehind, Code: codes.Unavailable},
	{Err: changefeed.ErrUnknownLabel, Code: codes.InvalidArgument},
	{Err: identity.ErrBadID, Code: codes.InvalidArgument},
	{Err: identity.ErrRefused, Code: codes.FailedPrecondition},
	{Err: identity.ErrUnroutable, Code: codes.FailedPrecondition},
	{Err: identity.ErrMemberInactive, Code: codes.FailedPrecondition},
	{Err: identity.ErrMergeInvalid, Code: codes.FailedPrecondition},
	{Err: identity.ErrAlreadyUnmerged, Code: codes.FailedPrecondition},
	{Err: identity.ErrCodeInvalid, Code: codes.Unauthenticated},
	{Err: identity.ErrCodeUsed, Code: codes.Unauthenticated},
	{Err: identity.ErrCodeLocked, Code: codes.ResourceExhausted},
	{Err: identity.ErrAssertionInvalid, Code: codes.Unauthenticated},
	{Err: identity.ErrAssertionStale, Code: codes.Unauthenticated},
	{Err: identity.ErrAssertionReplayed, Code: codes.Unauthenticated},
	{Err: identity.ErrTerminalUnknown, Code: codes.PermissionDenied},
	{Err: identity.ErrTerminalRevoked, Code: codes.PermissionDenied},
	{Err: identity.ErrTerminalExists, Code: codes.FailedPrecondition},
	{Err: identity.ErrInvalidTerminal, Code: codes.InvalidArgument},
}

// Run starts the selected services and stages and the admin endpoints, and
// runs until ctx ends or one of them fails.
func (p *Platform) Run(ctx context.Context, o Options) error {
	log := p.tel.Logger
	// Every listener is bound before anything starts: a process that cannot
	// serve exits at once, saying why, instead of running half-started.
	lis, err := p.bind(o)
	if err != nil {
		return err
	}
	defer lis.close()
	// One TLS (nil: plaintext) for every listener and the gateway's own
	// connection, its certificate read again when its files change.
	certs, err := p.cfg.Server.TLS.Load(log)
	if err != nil {
		return err
	}
	scfg := p.cfg.Server.WithTLS(certs)
	now := o.Now
	if now == nil {
		now = time.Now
	}
	d, err := p.domain(now, selected(stages, o.Stages, func(s stage) bool { return s.clickhouse }) ||
		selected(services, o.Services, func(s service) bool { return s.clickhouse }))
	if err != nil {
		return err
	}
	e := env{p: p, d: d, ktel: KafkaTelemetry(p.tel), now: now,
		together: slices.Contains(o.Stages, benefits.Stage) && slices.Contains(o.Stages, tags.Stage)}
	ps := &parts{checks: map[string]server.Check{"postgres": p.pool.Ping}, shared: map[string]bool{}}
	if d.facts != nil {
		ps.closer(func() { d.facts.Close() })
	}
	defer func() {
		for _, c := range ps.closers {
			c()
		}
	}()
	if slices.Contains(o.Stages, tags.Stage) {
		reg, err := d.tags.RegisterMetrics(p.tel.Meters)
		if err != nil {
			return err
		}
		ps.closer(func() { _ = reg.Unregister() })
	}
	var groups []string
	for _, st := range stages {
		if !slices.Contains(o.Stages, st.name) {
			continue
		}
		if err := st.start(e, ps); err != nil {
			return fmt.Errorf("start %s: %w", st.name, err)
		}
		if g := e.group(st.name); st.group && !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
	}
	if len(o.Stages) > 0 {
		if err := p.registerLag(ps, e.ktel, groups); err != nil {
			return err
		}
	}
	var gs *grpcServer
	if len(o.Services) > 0 {
		if gs, err = p.grpcServer(ctx, scfg, e, ps, o.Services); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	for _, loop := range ps.loops {
		g.Go(func() error { return loop(ctx) })
	}
	if gs != nil && lis.http != nil {
		if err := p.serveGateway(ctx, g, certs, lis.grpc.Addr().String(), lis.http); err != nil {
			cancel()
			_ = g.Wait()
			return err
		}
	}
	admin := server.AdminHandler(p.tel.Metrics, ps.checks)
	g.Go(func() error {
		if gs == nil {
			return server.Run(ctx, scfg, log, nil, nil, nil, admin, lis.admin)
		}
		return server.Run(ctx, scfg, log, gs.srv, gs.health, lis.grpc, admin, lis.admin)
	})
	g.Go(func() error {
		if gs != nil && gs.hub != nil {
			select {
			case <-gs.hub.Ready():
			case <-ctx.Done():
				return nil
			}
		}
		log.InfoContext(ctx, "platform started", "services", o.Services, "stages", o.Stages)
		if o.Ready != nil {
			o.Ready()
		}
		return nil
	})
	return g.Wait()
}

// selected reports whether any of the named components is selected and
// satisfies want.
func selected[T interface{ stage | service }](all []T, names []string, want func(T) bool) bool {
	for _, c := range all {
		var name string
		switch x := any(c).(type) {
		case stage:
			name = x.name
		case service:
			name = x.name
		}
		if slices.Contains(names, name) && want(c) {
			return true
		}
	}
	return false
}

// domain builds every domain service once, on one clock and one outbox
// writer; ClickHouse is dialled (lazily: a process that starts while it is
// away runs, and what needs it waits or answers Unavailable) only when
// something selected needs it.
func (p *Platform) domain(now func() time.Time, clickhouseNeeded bool) (*domain, error) {
	log := p.tel.Logger
	cw := changes.Writer{Propagator: p.tel.Propagator, Now: now}
	idSvc, err := p.NewIdentity(cw)
	if err != nil {
		return nil, err
	}
	idSvc.SetClock(now)
	// Dead letters are sealed with the PII keys: a refused channel event
	// holds raw identifiers.
	p.cfg.Kafka.DLQSealer = idSvc.PII()
	benefitSvc := benefits.New(p.pool, cw, log)
	benefitSvc.SetClock(now)
	tagSvc := tags.New(p.pool, cw, log)
	tagSvc.SetClock(now)
	tagSvc.SetStateCache(p.cfg.Tags.StateCacheBytes)
	// Merges carry the members' loyalty data and features along.
	idSvc.AddMemberData(benefitSvc)
	idSvc.AddMemberData(tagSvc)
	// Benefits that follow labels: the tag worker queues a member whose
	// label one depends on changed, for the benefit stage's CheckLabels.
	tagSvc.SetBenefitLabels(benefitSvc.DependsOnLabel)
	profileSvc := profile.New(p.pool, tagSvc, cw)
	profileSvc.SetClock(now)
	schema, err := attributes.Load(p.cfg.Profile.AttributeSchema)
	if err != nil {
		return nil, err
	}
	schema.SetDefaultRegion(p.cfg.Identity.DefaultRegion)
	profileSvc.SetAttributes(schema, idSvc.PII())
	d := &domain{identity: idSvc, benefits: benefitSvc, tags: tagSvc, profile: profileSvc}
	if clickhouseNeeded {
		if d.facts, err = clickhouse.Dial(p.cfg.ClickHouse, clickhouse.WithTracerProvider(p.tel.Tracers)); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// registerLag exports the consumer lag of the stages' groups.
func (p *Platform) registerLag(ps *parts, ktel kafka.Telemetry, groups []string) error {
	lagClient, err := kafka.NewClient(p.cfg.Kafka, ktel, "")
	if err != nil {
		return err
	}
	ps.closer(lagClient.Close)
	ps.checks["kafka"] = lagClient.Ping
	reg, err := kafka.RegisterLag(p.tel.Meters, p.tel.Logger, lagClient.Client, groups...)
	if err != nil {
		return err
	}
	ps.closer(func() { _ = reg.Unregister() })
	return nil
}

// listeners are a process's bound listen sockets.
type listeners struct{ grpc, admin, http net.Listener }

// bind binds the listeners o needs, taking the ones o hands over as they
// are: gRPC and the HTTP/JSON gateway with services, admin always.
func (p *Platform) bind(o Options) (l listeners, err error) {
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	listen := func(given net.Listener, addr, what, env string) (net.Listener, error) {
		if given != nil {
			return given, nil
		}
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("cannot serve %s on %s (set %s): %w", what, addr, env, err)
		}
		return lis, nil
	}
	if len(o.Services) > 0 {
		if l.grpc, err = listen(o.GRPC, p.cfg.Server.GRPCAddr, "gRPC", "MC_GRPC_ADDR"); err != nil {
			return l, err
		}
		// A caller that hands over its own gRPC listener (tests,
		// benchmarks) gets the gateway only with an HTTP listener too.
		if o.HTTP != nil || (o.GRPC == nil && p.cfg.Server.HTTPAddr != "") {
			if l.http, err = listen(o.HTTP, p.cfg.Server.HTTPAddr, "the HTTP/JSON gateway", "MC_HTTP_ADDR"); err != nil {
				return l, err
			}
		}
	}
	l.admin, err = listen(o.Admin, p.cfg.Server.Admin(server.DefaultAdminAddr), "metrics and health", "MC_ADMIN_ADDR")
	return l, err
}

// close closes every listener; closing one a server already closed is
// harmless.
func (l listeners) close() {
	for _, lis := range []net.Listener{l.grpc, l.admin, l.http} {
		if lis != nil {
			_ = lis.Close()
		}
	}
}

type grpcServer struct {
	srv    *grpc.Server
	health *health.Server
	hub    *changefeed.Hub
}

func (p *Platform) grpcServer(ctx context.Context, scfg server.Config, e env, ps *parts, names []string) (*grpcServer, error) {
	var guards []server.Guard
	if p.cfg.Auth.ClientsPath == "" {
		p.tel.Logger.WarnContext(ctx, "channel authentication is off: set MC_CHANNEL_CLIENTS to a clients file in production")
	} else {
		a, err := p.cfg.Auth.Open()
		if err != nil {
			return nil, err
		}
		guards = append(guards, a)
		// The gateway forwards its HTTP clients' certificates; its own
		// connection presents this process's.
		if certs := scfg.Certs(); certs != nil {
			a.TrustGateway(certs.IsOwn, gateway.ForwardedCertificateHeader)
		}
		// Third-party channels' key sets: https ones are first fetched
		// here, and all are read again every MC_AUTH_JWKS_REFRESH.
		if a.HasKeySets() {
			ps.loop(func(ctx context.Context) error { return a.Run(ctx, p.cfg.Auth.JWKSRefresh, p.tel.Logger) })
		}
	}
	srv, hs, err := server.New(scfg, server.Telemetry{
		Tracers: p.tel.Tracers, Meters: p.tel.Meters, Propagator: p.tel.Propagator, Logger: p.tel.Logger,
	}, errorCodes, guards...)
	if err != nil {
		return nil, err
	}
	out := &grpcServer{srv: srv, health: hs}
	for _, svc := range services {
		if !slices.Contains(names, svc.name) {
			continue
		}
		health, hub := svc.register(e, srv, ps)
		if hub != nil {
			out.hub = hub
		}
		hs.SetServingStatus(health, healthpb.HealthCheckResponse_SERVING)
	}
	return out, nil
}

// serveGateway serves the HTTP/JSON API and the change stream as
// server-sent events on lis, calling the gRPC server at grpcAddr (so validation,
// authentication and scopes are the same) until ctx ends. With certs both
// speak TLS: the gateway's clients are held to the client certificate mode
// as gRPC clients are, and the gateway's own connection presents the
// server's certificate and accepts only it.
func (p *Platform) serveGateway(ctx context.Context, g *errgroup.Group, certs *server.TLS, grpcAddr string, lis net.Listener) error {
	creds := insecure.NewCredentials()
	if certs != nil {
		creds = certs.LoopbackCredentials()
		lis = certs.Listener(lis, true)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(creds),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(p.tel.Tracers), otelgrpc.WithPropagators(p.tel.Propagator))))
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	h, err := gateway.New(ctx, conn)
	if err != nil {
		conn.Close()
		return err
	}
	srv := &http.Server{Handler: otelhttp.NewHandler(h, "gateway", otelhttp.WithTracerProvider(p.tel.Tracers), otelhttp.WithPropagators(p.tel.Propagator)),
		ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx },
		// A refused handshake (no client certificate) is logged as JSON.
		ErrorLog: slog.NewLogLogger(p.tel.Logger.Handler(), slog.LevelWarn)}
	p.tel.Logger.InfoContext(ctx, "HTTP/JSON gateway listening", "addr", lis.Addr().String(), "transport", p.cfg.Server.TLS.Describe())
	g.Go(func() error {
		defer conn.Close()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("gateway: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), p.cfg.Server.Grace)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return nil
}

// OpenClickHouse connects to the configured ClickHouse database.
func (p *Platform) OpenClickHouse(ctx context.Context) (driver.Conn, error) {
	return clickhouse.Open(ctx, p.cfg.ClickHouse, clickhouse.WithTracerProvider(p.tel.Tracers))
}
