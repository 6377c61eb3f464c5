// Package server runs the gRPC server (health, reflection, validation,
// OpenTelemetry, error translation) and the admin HTTP server (Prometheus
// metrics, liveness and readiness), with graceful shutdown.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"buf.build/go/protovalidate"
	pvinterceptor "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/membercenter/membercenter/pipeline/fault"
)

// Default admin addresses: serve and pipeline run side by side on one
// machine, so each has its own unless MC_ADMIN_ADDR names one.
const (
	DefaultAdminAddr  = "127.0.0.1:9464"
	PipelineAdminAddr = "127.0.0.1:9465"
)

// Config says where to listen. Defaults are loopback, as deps.sh's servers.
type Config struct {
	GRPCAddr string `env:"MC_GRPC_ADDR, default=127.0.0.1:50051"`
	// AdminAddr serves metrics and health; empty means the command's
	// default (DefaultAdminAddr, or PipelineAdminAddr for pipeline).
	AdminAddr string `env:"MC_ADMIN_ADDR"`
	// HTTPAddr serves the HTTP/JSON API and the server-sent change stream.
	HTTPAddr string        `env:"MC_HTTP_ADDR, default=127.0.0.1:8080"`
	Grace    time.Duration `env:"MC_SHUTDOWN_GRACE, default=10s"`
	// MaxConnectionAge asks a gRPC client to reconnect (an HTTP/2 GOAWAY)
	// once its connection is about this old (±10%, so that clients do not
	// all come back at once): a client that keeps one connection for days
	// moves over to serve replicas started since, through the load
	// balancer or its own name resolution. 0 keeps connections as long as
	// clients do.
	MaxConnectionAge time.Duration `env:"MC_GRPC_MAX_CONNECTION_AGE, default=30m"`
	// MaxConnectionAgeGrace is how long calls still running on such a
	// connection may go on; new calls already go over a new connection.
	// Then it is closed: a Subscribe stream still open ends with
	// Unavailable and the client resumes it with its last token, missing
	// nothing. 0 waits for every call, so a stream that never ends keeps
	// its connection, and its replica, for good.
	MaxConnectionAgeGrace time.Duration `env:"MC_GRPC_MAX_CONNECTION_AGE_GRACE, default=5m"`
	// TLS, when it names a certificate, makes every listener speak TLS.
	TLS TLSConfig

	// certs is the loaded TLS (WithTLS), shared by the listeners.
	certs *TLS
}

// WithTLS returns the config with its TLS loaded once, for New, Run and
// the gateway to share.
func (c Config) WithTLS(t *TLS) Config {
	c.certs = t
	return c
}

// Certs is the TLS WithTLS gave (nil: none).
func (c Config) Certs() *TLS { return c.certs }

// loadTLS returns the TLS WithTLS gave, or loads it (nil: plaintext).
func (c Config) loadTLS(log *slog.Logger) (*TLS, error) {
	if c.certs != nil {
		return c.certs, nil
	}
	return c.TLS.Load(log)
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.GRPCAddr); err != nil {
		errs = append(errs, fmt.Errorf("MC_GRPC_ADDR: %w", err))
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); c.HTTPAddr != "" && err != nil {
		errs = append(errs, fmt.Errorf("MC_HTTP_ADDR %q: %w", c.HTTPAddr, err))
	}
	if _, _, err := net.SplitHostPort(c.AdminAddr); c.AdminAddr != "" && err != nil {
		errs = append(errs, fmt.Errorf("MC_ADMIN_ADDR %q: %w", c.AdminAddr, err))
	}
	if c.Grace <= 0 {
		errs = append(errs, errors.New("MC_SHUTDOWN_GRACE must be positive"))
	}
	if c.MaxConnectionAge < 0 {
		errs = append(errs, errors.New("MC_GRPC_MAX_CONNECTION_AGE must not be negative (0 keeps connections)"))
	}
	if c.MaxConnectionAgeGrace < 0 {
		errs = append(errs, errors.New("MC_GRPC_MAX_CONNECTION_AGE_GRACE must not be negative (0 waits for every call)"))
	}
	errs = append(errs, c.TLS.Validate())
	return errors.Join(errs...)
}

// Admin returns the admin address, def when none is configured.
func (c Config) Admin(def string) string {
	if c.AdminAddr != "" {
		return c.AdminAddr
	}
	return def
}

// ErrorCode maps a sentinel error (matched with errors.Is) to a gRPC code.
type ErrorCode struct {
	Err  error
	Code codes.Code
}

// Telemetry is what the server reports to.
type Telemetry struct {
	Tracers    trace.TracerProvider
	Meters     metric.MeterProvider
	Propagator propagation.TextMapPropagator
	Logger     *slog.Logger
}

// NewGRPC is New with the connection settings of a zero Config:
// connections last as long as clients keep them (tests).
func NewGRPC(tel Telemetry, rules []ErrorCode, guard ...Guard) (*grpc.Server, *health.Server, error) {
	return New(Config{}, tel, rules, guard...)
}

// New returns a server with health and reflection registered, requests
// that do not decode, hold text PostgreSQL cannot store or break their
// protovalidate annotations refused (InvalidArgument with the field and
// reason), panics recovered, errors translated to statuses once, here, by
// the rules given and by their class (see package fault), and connections
// aged as cfg says (MaxConnectionAge). It speaks TLS when cfg.TLS names a
// certificate, holding clients to the configured client certificate mode.
//
// guard, when set, authenticates and authorises every call before it is
// validated (channel credentials and scopes, see package auth).
func New(cfg Config, tel Telemetry, rules []ErrorCode, guard ...Guard) (*grpc.Server, *health.Server, error) {
	v, err := protovalidate.New()
	if err != nil {
		return nil, nil, fmt.Errorf("validator: %w", err)
	}
	tr := translator{rules: rules, log: tel.Logger}
	rec := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		tel.Logger.ErrorContext(ctx, "panic in handler", "panic", p)
		return status.Error(codes.Internal, "internal error")
	})
	// A request that did not decode is refused before anything reads it.
	codec := newWireCodec()
	unary := []grpc.UnaryServerInterceptor{codec.unary, recovery.UnaryServerInterceptor(rec), tr.unary}
	stream := []grpc.StreamServerInterceptor{codec.stream, recovery.StreamServerInterceptor(rec), tr.stream}
	for _, g := range guard {
		unary, stream = append(unary, g.Unary()), append(stream, g.Stream())
	}
	unary = append(unary, textUnary, pvinterceptor.UnaryServerInterceptor(v))
	stream = append(stream, textStream, pvinterceptor.StreamServerInterceptor(v))
	certs, err := cfg.loadTLS(tel.Logger)
	if err != nil {
		return nil, nil, err
	}
	var opts []grpc.ServerOption
	if certs != nil {
		opts = append(opts, grpc.Creds(certs.Credentials()))
	}
	s := grpc.NewServer(append(opts,
		grpc.ForceServerCodecV2(codec),
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(tel.Tracers),
			otelgrpc.WithMeterProvider(tel.Meters),
			otelgrpc.WithPropagators(tel.Propagator),
		)),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		// Calls are served by a few long-lived goroutines, which keep the
		// stack they grew while calls keep them busy (a collection
		// shrinks an idle one's); a fresh goroutine per call grew its
		// stack anew every time: 5% of a Quote's CPU went to copying
		// stacks. A call that finds them all busy, as long-lived streams
		// keep them, gets a goroutine of its own as before. Four per
		// core: 256 gained nothing (BENCHMARKS.md).
		grpc.NumStreamWorkers(uint32(4*runtime.GOMAXPROCS(0))),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      cfg.MaxConnectionAge,
			MaxConnectionAgeGrace: cfg.MaxConnectionAgeGrace,
		}),
	)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s, hs, nil
}

// Guard checks calls before they reach the services (authentication).
type Guard interface {
	Unary() grpc.UnaryServerInterceptor
	Stream() grpc.StreamServerInterceptor
}

type translator struct {
	rules []ErrorCode
	log   *slog.Logger
}

func (t translator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err != nil {
		return nil, t.status(ctx, info.FullMethod, err)
	}
	return resp, nil
}

func (t translator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := h(srv, ss); err != nil {
		return t.status(ss.Context(), info.FullMethod, err)
	}
	return nil
}

func (t translator) status(ctx context.Context, method string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		st = t.translate(ctx, method, err)
	}
	if len(st.Message()) <= MaxStatusMessage {
		if ok {
			return err
		}
		return st.Err()
	}
	// A message that quotes what a caller sent (a page token of a
	// megabyte) is cut: it travels in a trailer, which clients bound.
	p := st.Proto()
	cut := MaxStatusMessage
	for cut > 0 && !utf8.RuneStart(p.Message[cut]) {
		cut--
	}
	p.Message = fmt.Sprintf("%s… (%d bytes in all)", p.Message[:cut], len(p.Message))
	return status.FromProto(p).Err()
}

// MaxStatusMessage is the most bytes of an error's message a call answers
// with; the rest is cut.
const MaxStatusMessage = 2048

// translate maps an error to its status: the services' sentinels first (a
// refusal stays a refusal whatever caused it), then a cancelled or expired
// call, then the error's class: a transient error (a database restarting, a
// lost connection, a serialization failure) is Unavailable, so a client
// retries with the same idempotency key; a data error (a value the database
// cannot hold, PostgreSQL class 22) is InvalidArgument. Anything else is
// Internal and logged with the trace id.
func (t translator) translate(ctx context.Context, method string, err error) *status.Status {
	for _, r := range t.rules {
		if errors.Is(err, r.Err) {
			return status.New(r.Code, err.Error())
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, err.Error())
	}
	switch fault.Classify(err) {
	case fault.Transient:
		t.log.WarnContext(ctx, "unavailable", "method", method, "err", err)
		return status.New(codes.Unavailable, "temporarily unavailable; retry with the same idempotency key: "+err.Error())
	case fault.Data:
		return status.New(codes.InvalidArgument, err.Error())
	}
	t.log.ErrorContext(ctx, "internal error", "method", method, "err", err)
	return status.New(codes.Internal, "internal error; see the server log for the trace id")
}

// Check is a readiness probe of one dependency.
type Check func(ctx context.Context) error

// AdminHandler serves /metrics, /healthz (the process is up) and /readyz
// (every dependency answers).
func AdminHandler(metrics http.Handler, checks map[string]Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		// The status goes first: a body written before it makes it 200.
		var failed []string
		for _, name := range slices.Sorted(maps.Keys(checks)) {
			if err := checks[name](ctx); err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", name, err))
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(failed, "\n"))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// Run serves gRPC on grpcLis (when gs is not nil) and the admin handler on
// adminLis until ctx ends, then stops gracefully within the grace period:
// health turns NOT_SERVING, in-flight calls finish, then the server stops
// hard. The admin handler speaks TLS when cfg.TLS names a certificate
// (the gRPC server's own credentials are New's).
func Run(ctx context.Context, cfg Config, log *slog.Logger, gs *grpc.Server, hs *health.Server, grpcLis net.Listener, admin http.Handler, adminLis net.Listener) error {
	certs, err := cfg.loadTLS(log)
	if err != nil {
		return err
	}
	if certs != nil {
		adminLis = certs.Listener(adminLis, false)
	}
	g, ctx := errgroup.WithContext(ctx)
	if gs != nil {
		log.InfoContext(ctx, "gRPC listening", "addr", grpcLis.Addr().String(), "transport", cfg.TLS.Describe())
		g.Go(func() error { return gs.Serve(grpcLis) })
		g.Go(func() error {
			<-ctx.Done()
			hs.Shutdown()
			stopped := make(chan struct{})
			go func() { gs.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(cfg.Grace):
				log.Warn("grace period over; stopping gRPC server hard")
				gs.Stop()
			}
			return nil
		})
	}
	hsrv := &http.Server{Handler: admin, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	log.InfoContext(ctx, "admin HTTP listening", "addr", adminLis.Addr().String(), "transport", cfg.TLS.Describe())
	g.Go(func() error {
		if err := hsrv.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Grace)
		defer cancel()
		return hsrv.Shutdown(sctx)
	})
	return g.Wait()
}
