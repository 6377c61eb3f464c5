// Package kafka configures franz-go clients the way every stage needs them:
// brokers and topic names from the environment, OpenTelemetry hooks that carry
// trace context in record headers, slog logging, topic creation and lag.
package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kotel"
	"github.com/twmb/franz-go/plugin/kslog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/fault"
)

// Config says how to reach Kafka and which topics to use. Defaults match
// scripts/deps.sh.
type Config struct {
	Brokers []string `env:"MC_KAFKA_BROKERS, default=127.0.0.1:59092"`
	Topics  Topics   `env:", prefix=MC_TOPIC_"`
	// Distinguishes this process's transactional producers; defaults to
	// hostname-pid.
	InstanceID string `env:"MC_INSTANCE_ID"`
	// Prefix of the consumer group names; lets several platforms (or tests)
	// share a cluster.
	GroupPrefix string `env:"MC_KAFKA_GROUP_PREFIX, default=mc"`
	// SessionTimeout is how long the group waits for a silent member before
	// giving its partitions to the others (0: 10s). With MC_INSTANCE_ID
	// set, members are static: a restarted process with the same id takes
	// its partitions back at once, without a rebalance.
	SessionTimeout time.Duration `env:"MC_KAFKA_SESSION_TIMEOUT, default=10s"`
	// RecordRetryLimit bounds how long a stage retries a record whose
	// failure is neither a recognised data error nor a recognised outage
	// before it dead-letters the record with the error as its reason, so
	// that no record blocks its partition for longer (0: 30s). Outages
	// (a server restarting, a lost connection) are retried for as long as
	// they last; data errors are dead-lettered at once.
	RecordRetryLimit time.Duration `env:"MC_RECORD_RETRY_LIMIT, default=30s"`
	// Dial, when set, opens every broker connection of the clients built
	// from this config (tests route them through a proxy they can cut);
	// nil dials the brokers directly. With TLS, the handshake runs over
	// the connection it opens.
	Dial func(ctx context.Context, network, host string) (net.Conn, error)
	// DLQSealer, when set, seals the key and value of every dead letter
	// the stages built from this config write (dlq.HeaderSealed): the
	// platform sets its PII keys, so refused records' raw identifiers
	// never sit in the dead-letter topic. nil writes letters as they came.
	DLQSealer dlq.Sealer
	// TLS to the brokers: on with MC_KAFKA_TLS=true (the system's CAs) or
	// when any TLS file is set. CAFile (PEM) replaces the system's CAs;
	// CertFile and KeyFile are this client's certificate for brokers that
	// require one (ssl.client.auth=required); ServerName overrides the
	// name checked in the brokers' certificates (default: each broker's
	// host).
	TLS           bool   `env:"MC_KAFKA_TLS"`
	TLSCAFile     string `env:"MC_KAFKA_TLS_CA_FILE"`
	TLSCertFile   string `env:"MC_KAFKA_TLS_CERT_FILE"`
	TLSKeyFile    string `env:"MC_KAFKA_TLS_KEY_FILE"`
	TLSServerName string `env:"MC_KAFKA_TLS_SERVER_NAME"`
}

// TLSEnabled reports whether clients speak TLS to the brokers.
func (c Config) TLSEnabled() bool {
	return c.TLS || c.TLSCAFile != "" || c.TLSCertFile != "" || c.TLSKeyFile != ""
}

// TLSConfig is the clients' TLS configuration, nil for plaintext.
func (c Config) TLSConfig() (*tls.Config, error) {
	if !c.TLSEnabled() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("MC_KAFKA_TLS_CA_FILE: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("MC_KAFKA_TLS_CA_FILE %s: no PEM certificate in it", c.TLSCAFile)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return nil, errors.New("MC_KAFKA_TLS_CERT_FILE and MC_KAFKA_TLS_KEY_FILE go together")
	}
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("MC_KAFKA_TLS_CERT_FILE / MC_KAFKA_TLS_KEY_FILE: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Defaults of the durations when a Config is built in code.
const (
	DefaultSessionTimeout   = 10 * time.Second
	DefaultRecordRetryLimit = 30 * time.Second
)

// RetryLimit returns RecordRetryLimit or its default.
func (c Config) RetryLimit() time.Duration {
	if c.RecordRetryLimit > 0 {
		return c.RecordRetryLimit
	}
	return DefaultRecordRetryLimit
}

// GroupOptions returns the options of a member of a consumer group: static
// membership when the instance id is configured (stable per pod), and a
// session timeout of seconds, so a crashed member's partitions move on
// quickly.
func (c Config) GroupOptions() []kgo.Opt {
	session := c.SessionTimeout
	if session <= 0 {
		session = DefaultSessionTimeout
	}
	opts := []kgo.Opt{
		kgo.SessionTimeout(session),
		kgo.HeartbeatInterval(max(session/10, 100*time.Millisecond)),
	}
	if c.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(c.InstanceID))
	}
	return opts
}

// Topics are the platform's topic names.
type Topics struct {
	ChannelEvents string `env:"CHANNEL_EVENTS, default=channel.events.v1"`
	MemberEvents  string `env:"MEMBER_EVENTS, default=member.events.v1"`
	MemberChanges string `env:"MEMBER_CHANGES, default=member.changes.v1"`
	DLQ           string `env:"DLQ, default=dlq.v1"`
	// Partitions is how many partitions the member-keyed topics are
	// created with (0: DefaultPartitions): the most instances of a stage
	// that can share its work. Size it for the largest deployment planned:
	// adding partitions to a topic later moves members' keys to other
	// partitions, so their order holds only across a drained cut-over.
	Partitions int32 `env:"PARTITIONS, default=6"`
	// RawRetention is how long the channel topic keeps records: they hold
	// raw identifiers (phones, e-mails) as channels sent them, needed only
	// until ingest has converted them (and for a replay after an
	// incident). 0: DefaultRawRetention.
	RawRetention time.Duration `env:"RAW_RETENTION, default=168h"`
	// DLQRetention is how long dead letters are kept for inspection and
	// replay ('membercenter dlq'); they hold the refused records as sent.
	// 0: DefaultDLQRetention.
	DLQRetention time.Duration `env:"DLQ_RETENTION, default=720h"`
}

// The retention of the topics that hold raw identifiers when none is
// configured: a week of channel events, thirty days of dead letters.
const (
	DefaultRawRetention = 7 * 24 * time.Hour
	DefaultDLQRetention = 30 * 24 * time.Hour
)

// Retention is the retention.ms each topic that has a limit is kept to:
// the channel topic and the dead letters. The member topics keep the
// broker's setting (the change stream is what channels resume from).
func (t Topics) Retention() map[string]time.Duration {
	raw, dlq := t.RawRetention, t.DLQRetention
	if raw <= 0 {
		raw = DefaultRawRetention
	}
	if dlq <= 0 {
		dlq = DefaultDLQRetention
	}
	return map[string]time.Duration{t.ChannelEvents: raw, t.DLQ: dlq}
}

// DefaultPartitions is the member-keyed topics' partition count when none
// is configured.
const DefaultPartitions = 6

// DefaultTopics returns the production topic names.
func DefaultTopics() Topics {
	return Topics{
		ChannelEvents: "channel.events.v1",
		MemberEvents:  "member.events.v1",
		MemberChanges: "member.changes.v1",
		DLQ:           "dlq.v1",
	}
}

// All lists the topics with the partition count each is created with.
func (t Topics) All() map[string]int32 {
	n := t.Partitions
	if n <= 0 {
		n = DefaultPartitions
	}
	return map[string]int32{t.ChannelEvents: n, t.MemberEvents: n, t.MemberChanges: n, t.DLQ: 3}
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("MC_KAFKA_BROKERS is empty"))
	}
	if c.Topics.Partitions < 0 || c.Topics.Partitions > 10000 {
		errs = append(errs, fmt.Errorf("MC_TOPIC_PARTITIONS %d: want 1 to 10000", c.Topics.Partitions))
	}
	for name, d := range map[string]time.Duration{"MC_TOPIC_RAW_RETENTION": c.Topics.RawRetention, "MC_TOPIC_DLQ_RETENTION": c.Topics.DLQRetention} {
		if d < 0 || (d > 0 && d < time.Hour) {
			errs = append(errs, fmt.Errorf("%s %s: want at least 1h (0: the default)", name, d))
		}
	}
	if c.SessionTimeout < 0 || (c.SessionTimeout > 0 && c.SessionTimeout < 2*time.Second) {
		errs = append(errs, fmt.Errorf("MC_KAFKA_SESSION_TIMEOUT %s: want at least 2s", c.SessionTimeout))
	}
	if c.RecordRetryLimit < 0 {
		errs = append(errs, fmt.Errorf("MC_RECORD_RETRY_LIMIT %s: must not be negative", c.RecordRetryLimit))
	}
	if _, err := c.TLSConfig(); err != nil {
		errs = append(errs, err)
	}
	for name, v := range map[string]string{
		"MC_TOPIC_CHANNEL_EVENTS": c.Topics.ChannelEvents, "MC_TOPIC_MEMBER_EVENTS": c.Topics.MemberEvents,
		"MC_TOPIC_MEMBER_CHANGES": c.Topics.MemberChanges, "MC_TOPIC_DLQ": c.Topics.DLQ,
	} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", name))
		}
	}
	return errors.Join(errs...)
}

// Instance returns the configured instance id or hostname-pid.
func (c Config) Instance() string {
	if c.InstanceID != "" {
		return c.InstanceID
	}
	h, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

// Group returns the full consumer group name of a stage.
func (c Config) Group(stage string) string {
	if c.GroupPrefix == "" {
		return stage
	}
	return c.GroupPrefix + "-" + stage
}

// Telemetry is what clients report to.
type Telemetry struct {
	Tracers    trace.TracerProvider
	Meters     metric.MeterProvider
	Propagator propagation.TextMapPropagator
	Logger     *slog.Logger
	// Recording says whether spans are recorded now: a process with no
	// one to receive them records none (telemetry's quiet sampler). While
	// it says no, the clients pass each record's trace context on through
	// its headers without a span of their own per record, whose attributes
	// alone cost 5–7% of a drain's CPU for spans no one would see; so do
	// they, while it says yes, for a record of a trace a sampler left out
	// upstream (Tracer.kept). Nil: always.
	Recording func() bool
}

func (t Telemetry) tracer(group string) *Tracer {
	opts := []kotel.TracerOpt{kotel.TracerProvider(t.Tracers), kotel.TracerPropagator(t.Propagator)}
	if group != "" {
		opts = append(opts, kotel.ConsumerGroup(group))
	}
	tp := t.Tracers
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	prop := t.Propagator
	if prop == nil {
		prop = otel.GetTextMapPropagator()
	}
	rec := t.Recording
	if rec == nil {
		rec = func() bool { return true }
	}
	return &Tracer{Tracer: kotel.NewTracer(opts...), batches: tp.Tracer("github.com/membercenter/membercenter/pipeline/kafka"),
		prop: prop, recording: rec}
}

// Tracer is the tracer a client's hooks use (per record), with the one a
// stage starts its batch spans with.
type Tracer struct {
	*kotel.Tracer
	batches   trace.Tracer
	prop      propagation.TextMapPropagator
	recording func() bool
}

// passedOn marks the context of a record produced without spans of its
// own: its headers carry the producer's trace context as it was, and no
// publish span waits to be ended.
type passedOn struct{}

// kept says whether a record whose trace context is ctx gets spans of its
// own: spans are recorded, and its trace was not left out upstream. A
// parent-based sampler (the SDK's default, and how a ratio is usually
// sampled: OTEL_TRACES_SAMPLER=parentbased_traceidratio) records no child
// of a span it did not sample, so kotel's spans and their attributes
// would be built for nobody, 6–7% of a drain's CPU; a record of a trace
// left out passes its context on as it is, as in a process that records
// nothing. (A sampler that is not parent-based, always_on say, would have
// recorded spans of such a record; they are left out too.)
func (t *Tracer) kept(ctx context.Context) bool {
	if !t.recording() {
		return false
	}
	sc := trace.SpanContextFromContext(ctx)
	return !sc.IsValid() || sc.IsSampled()
}

// OnProduceRecordBuffered starts the record's publish span and injects it
// into the headers; for a record whose spans are not kept (see kept), it
// injects the record's own trace context instead.
func (t *Tracer) OnProduceRecordBuffered(r *kgo.Record) {
	if t.kept(recordContext(r)) {
		t.Tracer.OnProduceRecordBuffered(r)
		return
	}
	t.prop.Inject(recordContext(r), kotel.NewRecordCarrier(r))
	r.Context = context.WithValue(r.Context, passedOn{}, true)
}

// OnProduceRecordUnbuffered ends the record's publish span, if it has one.
func (t *Tracer) OnProduceRecordUnbuffered(r *kgo.Record, err error) {
	if r.Context != nil && r.Context.Value(passedOn{}) != nil {
		return
	}
	t.Tracer.OnProduceRecordUnbuffered(r, err)
}

// OnFetchRecordBuffered starts the record's receive span, child of the
// trace context in its headers; for a record whose spans are not kept
// (see kept), the record's context is that trace context.
func (t *Tracer) OnFetchRecordBuffered(r *kgo.Record) {
	ctx := t.prop.Extract(recordContext(r), kotel.NewRecordCarrier(r))
	if t.kept(ctx) {
		t.Tracer.OnFetchRecordBuffered(r)
		return
	}
	r.Context = ctx
}

// WithProcessSpan starts the span of a stage processing r, child of the
// record's context; for a record whose spans are not kept (see kept),
// without kotel's attributes (the span still has ids, which log lines
// carry).
func (t *Tracer) WithProcessSpan(r *kgo.Record) (context.Context, trace.Span) {
	if t.kept(recordContext(r)) {
		return t.Tracer.WithProcessSpan(r)
	}
	return t.batches.Start(recordContext(r), r.Topic+" process", trace.WithSpanKind(trace.SpanKindConsumer))
}

// recordContext is r's context, made the background when it has none.
func recordContext(r *kgo.Record) context.Context {
	if r.Context == nil {
		r.Context = context.Background()
	}
	return r.Context
}

// Client is a franz-go client with the tracer its hooks use.
type Client struct {
	*kgo.Client
	Tracer *Tracer
}

// Options returns the client options every platform client starts from:
// seed brokers, TLS as configured, slog logging and OpenTelemetry hooks. Producing injects the
// trace context of the record's context into its headers; consuming starts a
// span whose parent is that context. The tracer is the one the hooks use, for
// the stage's per-record process spans.
func Options(cfg Config, tel Telemetry, group string) ([]kgo.Opt, *Tracer, error) {
	tc, err := cfg.TLSConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("kafka client: %w", err)
	}
	tr := tel.tracer(group)
	k := kotel.NewKotel(kotel.WithMeter(kotel.NewMeter(kotel.MeterProvider(tel.Meters))))
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.WithHooks(append(k.Hooks(), tr)...),
		kgo.ClientID("membercenter"),
	}
	if tel.Logger != nil {
		opts = append(opts, kgo.WithLogger(quietLogger{kslog.New(tel.Logger)}))
	}
	switch {
	case tc != nil && cfg.Dial != nil:
		opts = append(opts, kgo.Dialer(tlsOver(cfg.Dial, tc)))
	case tc != nil:
		opts = append(opts, kgo.DialTLSConfig(tc))
	case cfg.Dial != nil:
		opts = append(opts, kgo.Dialer(cfg.Dial))
	}
	return opts, tr, nil
}

// tlsOver runs the TLS handshake over the connections dial opens, as
// kgo.DialTLSConfig does over its own (franz-go takes one or the other).
func tlsOver(dial func(ctx context.Context, network, host string) (net.Conn, error), tc *tls.Config) func(ctx context.Context, network, host string) (net.Conn, error) {
	return func(ctx context.Context, network, host string) (net.Conn, error) {
		conn, err := dial(ctx, network, host)
		if err != nil {
			return nil, err
		}
		c := tc.Clone()
		if c.ServerName == "" {
			if c.ServerName, _, err = net.SplitHostPort(host); err != nil {
				c.ServerName = host
			}
		}
		tconn := tls.Client(conn, c)
		if err := tconn.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		return tconn, nil
	}
}

// NewClient returns an instrumented client (see Options) with extra options.
func NewClient(cfg Config, tel Telemetry, group string, opts ...kgo.Opt) (*Client, error) {
	base, tr, err := Options(cfg, tel, group)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	return &Client{Client: cl, Tracer: tr}, nil
}

// EnsureTopics creates the platform's topics that do not exist yet, and
// keeps the topics with a retention limit (Topics.Retention) to it, so that
// a changed setting applies to topics created before.
func EnsureTopics(ctx context.Context, cl *kgo.Client, topics Topics) error {
	adm := kadm.NewClient(cl)
	retention := topics.Retention()
	for name, parts := range topics.All() {
		var configs map[string]*string
		if d, ok := retention[name]; ok {
			ms := strconv.FormatInt(d.Milliseconds(), 10)
			configs = map[string]*string{"retention.ms": &ms}
		}
		_, err := adm.CreateTopic(ctx, parts, 1, configs, name)
		switch {
		case err == nil:
		case errors.Is(err, kerr.TopicAlreadyExists):
			if configs == nil {
				continue
			}
			if err := setTopicConfig(ctx, adm, name, "retention.ms", configs["retention.ms"]); err != nil {
				return fmt.Errorf("set the retention of topic %s: %w", name, err)
			}
		default:
			return fmt.Errorf("create topic %s: %w", name, err)
		}
	}
	return WaitTopicsKnown(ctx, cl, topics.All())
}

// WaitTopicsKnown returns once the broker's metadata holds every topic with
// its partitions (name → count), each with a leader: a topic just created
// is known to the controller before the brokers, and a producer that asks
// too early is told UNKNOWN_TOPIC_OR_PARTITION. It asks the broker each time (kadm's Metadata
// answers from the client's cache for up to MetadataMinAge).
func WaitTopicsKnown(ctx context.Context, cl *kgo.Client, topics map[string]int32) error {
	req := kmsg.NewPtrMetadataRequest()
	for name := range topics {
		t := kmsg.NewMetadataRequestTopic()
		t.Topic = kmsg.StringPtr(name)
		req.Topics = append(req.Topics, t)
	}
	backoff := fault.Backoff{Min: 20 * time.Millisecond, Max: 250 * time.Millisecond}
	for {
		resp, err := req.RequestWith(ctx, cl)
		if err == nil {
			err = topicsReady(resp, topics)
		}
		if err == nil {
			return nil
		}
		if !fault.Sleep(ctx, backoff.Next()) {
			return fmt.Errorf("wait for the topics to be known: %w", err)
		}
	}
}

func topicsReady(resp *kmsg.MetadataResponse, topics map[string]int32) error {
	known := make(map[string]bool, len(topics))
	for _, t := range resp.Topics {
		if t.Topic == nil {
			continue
		}
		name := *t.Topic
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return fmt.Errorf("topic %s: %w", name, err)
		}
		if int32(len(t.Partitions)) < topics[name] {
			return fmt.Errorf("topic %s: %d of %d partitions known", name, len(t.Partitions), topics[name])
		}
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil || p.Leader < 0 {
				return fmt.Errorf("topic %s partition %d: no leader yet (%v)", name, p.Partition, err)
			}
		}
		known[name] = true
	}
	for name := range topics {
		if !known[name] {
			return fmt.Errorf("topic %s: not in the metadata yet", name)
		}
	}
	return nil
}

// setTopicConfig sets one config of a topic. A topic another process has
// just created may not be known yet to the broker that answers: that is
// asked again for a few seconds.
func setTopicConfig(ctx context.Context, adm *kadm.Client, topic, key string, value *string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var backoff fault.Backoff
	for {
		resps, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: key, Value: value}}, topic)
		if err == nil {
			var r kadm.AlterConfigsResponse
			if r, err = resps.On(topic, nil); err == nil {
				err = r.Err
			}
		}
		if err == nil || !errors.Is(err, kerr.UnknownTopicOrPartition) || !fault.Sleep(ctx, backoff.Next()) {
			return err
		}
	}
}

// Header returns the value of the record header named key, or "".
func Header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// ContentTypeJSON marks a record whose value is protojson instead of binary
// protobuf.
const ContentTypeJSON = "application/json"

// IsJSON reports whether the record declares a JSON value: a content-type
// header (any case) of application/json, parameters (charset) and case
// aside, as HTTP reads the header.
func IsJSON(r *kgo.Record) bool {
	for _, h := range r.Headers {
		if strings.EqualFold(h.Key, "content-type") {
			// A malformed parameter ("charset" without a value) leaves
			// the type readable.
			mt, _, err := mime.ParseMediaType(string(h.Value))
			return (err == nil || errors.Is(err, mime.ErrInvalidMediaParameter)) && mt == ContentTypeJSON
		}
	}
	return false
}

// ProcessSpan starts the span of a stage processing r. Its parent is the
// record's receive span (so the record's trace continues), and the returned
// context derives from ctx, so stopping the stage cancels the work.
func ProcessSpan(ctx context.Context, tr *Tracer, r *kgo.Record) (context.Context, trace.Span) {
	parent := r.Context
	if parent == nil {
		parent = context.Background()
	}
	r.Context = trace.ContextWithSpan(ctx, trace.SpanFromContext(parent))
	return tr.WithProcessSpan(r)
}

// BatchSpan starts the span of a stage applying several records of topic
// at once, as OpenTelemetry's messaging conventions have it for batch
// processing: a span of its own trace, linked to each record's process
// span (rcs, the records' contexts), parenting what the batch does in
// common (its database statements). What the stage writes for one record
// — a change, its outbox row — continues that record's trace instead
// (contract.RecordContext). A batch of one needs no span of its own: the
// record's process span is the batch's.
func (t *Tracer) BatchSpan(ctx context.Context, topic string, rcs []context.Context) (context.Context, trace.Span) {
	links := make([]trace.Link, 0, len(rcs))
	for _, rc := range rcs {
		if sc := trace.SpanContextFromContext(rc); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	return t.batches.Start(ctx, topic+" process",
		trace.WithNewRoot(),
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", topic),
			attribute.Int("messaging.batch.message_count", len(rcs)),
		))
}

// quietLogger passes franz-go's warnings and errors on, and its info lines
// (a line per transaction, per commit, per join) only when the process logs
// at debug level: at info they would drown the platform's own lines.
type quietLogger struct{ kgo.Logger }

func (l quietLogger) Level() kgo.LogLevel {
	if lvl := l.Logger.Level(); lvl < kgo.LogLevelDebug {
		return min(lvl, kgo.LogLevelWarn)
	}
	return kgo.LogLevelDebug
}

// SeedGroup gives group, when it has committed no offset of topic, the
// offsets the groups from have all reached: per partition the lowest they
// committed (a partition one of them has not committed is left to the
// group's reset offset). A stage that takes over the work of others (the
// benefit and tag stages run by one worker) then starts where they left
// off instead of at the start of the topic; what one of them had applied
// and the other had not is read again, and skipped by the first's
// processed-event records. A group that has commits, or members, is left
// alone. It returns the offsets it committed.
func SeedGroup(ctx context.Context, cl *kgo.Client, group, topic string, from ...string) (kadm.Offsets, error) {
	adm := kadm.NewClient(cl)
	own, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return nil, fmt.Errorf("offsets of %s: %w", group, err)
	}
	if len(own.Offsets()[topic]) > 0 {
		return nil, nil
	}
	seed := kadm.Offsets{}
	for i, g := range from {
		got, err := adm.FetchOffsets(ctx, g)
		if err != nil {
			return nil, fmt.Errorf("offsets of %s: %w", g, err)
		}
		next := kadm.Offsets{}
		for p, o := range got.Offsets()[topic] {
			if o.At < 0 {
				continue
			}
			if i > 0 {
				prev, ok := seed.Lookup(topic, p)
				if !ok {
					continue
				}
				if prev.At < o.At {
					o = prev
				}
			}
			o.LeaderEpoch, o.Metadata = -1, ""
			next.Add(o)
		}
		seed = next
	}
	if len(seed) == 0 {
		return nil, nil
	}
	committed, err := adm.CommitOffsets(ctx, group, seed)
	if err != nil {
		return nil, fmt.Errorf("seed %s from %v: %w", group, from, err)
	}
	if err := committed.Error(); err != nil {
		if errors.Is(err, kerr.UnknownMemberID) || errors.Is(err, kerr.IllegalGeneration) || errors.Is(err, kerr.RebalanceInProgress) {
			return nil, nil // the group has members: they own its offsets
		}
		return nil, fmt.Errorf("seed %s from %v: %w", group, from, err)
	}
	return seed, nil
}
