// Package telemetry sets up OpenTelemetry traces and metrics and the JSON
// logger that stamps every record with the trace and span of its context.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	promexp "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/membercenter/membercenter/services/version"
)

// Config selects exporters. With no OTLP endpoint, spans are still created
// (logs carry their ids) but not exported; metrics are always served for
// Prometheus. Traces and metrics describe the process with service.name,
// service.version (the build's, see package version) and whatever
// OTEL_RESOURCE_ATTRIBUTES adds (e.g. deployment.environment.name=prod,
// k8s.pod.name=…), read by the SDK as every OpenTelemetry SDK does.
type Config struct {
	ServiceName  string `env:"OTEL_SERVICE_NAME, default=membercenter"`
	OTLPEndpoint string `env:"OTEL_EXPORTER_OTLP_ENDPOINT"`
	LogLevel     string `env:"MC_LOG_LEVEL, default=info"`
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.ServiceName == "" {
		errs = append(errs, errors.New("OTEL_SERVICE_NAME is empty"))
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("MC_LOG_LEVEL: %w", err))
	}
	return errors.Join(errs...)
}

// Telemetry is the process's tracer and meter providers, propagator, logger
// and Prometheus handler.
type Telemetry struct {
	Tracers    *sdktrace.TracerProvider
	Meters     *sdkmetric.MeterProvider
	Propagator propagation.TextMapPropagator
	Logger     *slog.Logger
	Metrics    http.Handler

	// quiet, when set, is the sampler of a process with no one to receive
	// its spans (AddSpanProcessor).
	quiet *quietSampler
}

// quietSampler records no span while no span processor listens, and
// decides as the SDK's default sampler does once one was added after Setup
// (AddSpanProcessor).
type quietSampler struct {
	listeners atomic.Int32
	on        sdktrace.Sampler
}

func (s *quietSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if s.listeners.Load() > 0 {
		return s.on.ShouldSample(p)
	}
	return sdktrace.NeverSample().ShouldSample(p)
}

func (s *quietSampler) Description() string { return "QuietUntilListened{" + s.on.Description() + "}" }

// AddSpanProcessor has p receive the spans that end from now on: in a
// process that recorded none for want of a receiver, they are recorded
// while it listens (until RemoveSpanProcessor).
func (t *Telemetry) AddSpanProcessor(p sdktrace.SpanProcessor) {
	t.Tracers.RegisterSpanProcessor(p)
	if t.quiet != nil {
		t.quiet.listeners.Add(1)
	}
}

// Recording reports whether spans are recorded now: always, unless the
// process has no one to receive them (then while AddSpanProcessor's
// processors listen).
func (t *Telemetry) Recording() bool {
	return t.quiet == nil || t.quiet.listeners.Load() > 0
}

// RemoveSpanProcessor undoes AddSpanProcessor.
func (t *Telemetry) RemoveSpanProcessor(p sdktrace.SpanProcessor) {
	t.Tracers.UnregisterSpanProcessor(p)
	if t.quiet != nil {
		t.quiet.listeners.Add(-1)
	}
}

// Option adjusts Setup; tests use it to record spans in memory.
type Option func(*options)

type options struct {
	spans []sdktrace.SpanProcessor
}

// WithSpanProcessor adds a span processor (for example one feeding an
// in-memory exporter).
func WithSpanProcessor(p sdktrace.SpanProcessor) Option {
	return func(o *options) { o.spans = append(o.spans, p) }
}

// SpanEventLimit is how many events a span keeps unless
// OTEL_SPAN_EVENT_COUNT_LIMIT says otherwise.
const SpanEventLimit = 1024

// Setup builds the providers. Shut them down with Shutdown.
func Setup(ctx context.Context, cfg Config, logOut io.Writer, opts ...Option) (*Telemetry, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("MC_LOG_LEVEL: %w", err)
	}
	res, err := newResource(ctx, cfg.ServiceName)
	if err != nil {
		return nil, err
	}

	// A batch's statements are events of its span (storage/postgres), and a
	// transactional batch of ingest's identity groups queues several
	// statements for each of up to 32 events: the SDK keeps 128 events a
	// span by default and counts the rest as dropped.
	// OTEL_SPAN_EVENT_COUNT_LIMIT, when set, decides.
	limits := sdktrace.NewSpanLimits()
	if os.Getenv("OTEL_SPAN_EVENT_COUNT_LIMIT") == "" {
		limits.EventCountLimit = SpanEventLimit
	}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithRawSpanLimits(limits)}
	for _, p := range o.spans {
		tpOpts = append(tpOpts, sdktrace.WithSpanProcessor(p))
	}
	var quiet *quietSampler
	if cfg.OTLPEndpoint == "" && len(o.spans) == 0 && os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		// Nothing would receive a span: record none (until a processor is
		// added, AddSpanProcessor). Spans still get ids, so log lines keep
		// their trace_id and span_id and the ids pass on in Kafka headers,
		// but marked not sampled. Recording every span of every record for
		// no one made telemetry 8–9% of the process's CPU in a drain;
		// 4.5–6% without. OTEL_TRACES_SAMPLER, when set, decides as it
		// always does.
		quiet = &quietSampler{on: sdktrace.ParentBased(sdktrace.AlwaysSample())}
		tpOpts = append(tpOpts, sdktrace.WithSampler(quiet))
	}
	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res)}

	// Beside the OpenTelemetry metrics, the Go runtime's (go_goroutines,
	// go_memstats_*, go_gc_duration_seconds) and the process's
	// (process_resident_memory_bytes, process_cpu_seconds_total,
	// process_open_fds) under the names every Go dashboard knows.
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("prometheus collectors: %w", err)
		}
	}
	prom, err := promexp.New(promexp.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mpOpts = append(mpOpts, sdkmetric.WithReader(prom))

	if cfg.OTLPEndpoint != "" {
		// The exporters read OTEL_EXPORTER_OTLP_* themselves (endpoint,
		// headers, TLS), as every OpenTelemetry SDK does.
		te, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter: %w", err)
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(te))
		me, err := otlpmetricgrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("otlp metric exporter: %w", err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(me)))
	}

	return &Telemetry{
		Tracers:    sdktrace.NewTracerProvider(tpOpts...),
		Meters:     sdkmetric.NewMeterProvider(mpOpts...),
		Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		Logger:     slog.New(NewLogHandler(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level}))),
		Metrics:    promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		quiet:      quiet,
	}, nil
}

// newResource describes the process: service.name, service.version and the
// SDK, then what OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME say (later
// detectors win, so the environment overrides the defaults, and
// OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES, as
// the specification asks). A malformed OTEL_RESOURCE_ATTRIBUTES stops the
// start, naming it, rather than losing the attributes quietly.
func newResource(ctx context.Context, serviceName string) (*resource.Resource, error) {
	attrs := []attribute.KeyValue{semconv.ServiceName(serviceName)}
	if v := version.Read().Short(); v != "(devel)" {
		attrs = append(attrs, semconv.ServiceVersion(v))
	}
	res, err := resource.New(ctx, resource.WithTelemetrySDK(), resource.WithAttributes(attrs...), resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	return res, nil
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.Tracers.Shutdown(ctx), t.Meters.Shutdown(ctx))
}

// LogHandler adds trace_id and span_id of the record's context to every log
// record, at the top level of the line (not inside a group a logger opened),
// so a log line leads to its trace.
type LogHandler struct {
	slog.Handler // base with every With and WithGroup applied
	base         slog.Handler
	// derive replays the With and WithGroup calls since the first group;
	// nil while no group is open.
	derive []func(slog.Handler) slog.Handler
}

// NewLogHandler wraps h.
func NewLogHandler(h slog.Handler) *LogHandler { return &LogHandler{Handler: h, base: h} }

// Handle implements slog.Handler.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return h.Handler.Handle(ctx, r)
	}
	ids := []slog.Attr{slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String())}
	if h.derive == nil {
		r.AddAttrs(ids...)
		return h.Handler.Handle(ctx, r)
	}
	// A group is open: the ids go in before it, as attributes of the base.
	out := h.base.WithAttrs(ids)
	for _, d := range h.derive {
		out = d(out)
	}
	return out.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *LogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if h.derive == nil {
		return &LogHandler{Handler: h.Handler.WithAttrs(as), base: h.base.WithAttrs(as)}
	}
	return &LogHandler{Handler: h.Handler.WithAttrs(as), base: h.base,
		derive: append(h.derive[:len(h.derive):len(h.derive)], func(x slog.Handler) slog.Handler { return x.WithAttrs(as) })}
}

// WithGroup implements slog.Handler.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &LogHandler{Handler: h.Handler.WithGroup(name), base: h.base,
		derive: append(h.derive[:len(h.derive):len(h.derive)], func(x slog.Handler) slog.Handler { return x.WithGroup(name) })}
}

// Mask hides all but the first and last two characters of a secret, for
// logging effective configuration.
func Mask(secret string) string {
	if secret == "" {
		return ""
	}
	if len(secret) <= 6 {
		return strings.Repeat("*", len(secret))
	}
	return secret[:2] + strings.Repeat("*", len(secret)-4) + secret[len(secret)-2:]
}
