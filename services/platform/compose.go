package platform

import (
	"context"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"google.golang.org/grpc"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/consumer"
	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/relay"
	"github.com/membercenter/membercenter/pipeline/sink"
	"github.com/membercenter/membercenter/pipeline/worker"
	"github.com/membercenter/membercenter/services/audit"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changefeed"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/facts"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/members"
	"github.com/membercenter/membercenter/services/profile"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/tags"
)

// domain is every domain service of a process, built once: the stages and
// the gRPC services share them.
type domain struct {
	identity *identity.Service
	benefits *benefits.Service
	tags     *tags.Service
	profile  *profile.Service
	// facts is ClickHouse, dialled once and lazily when anything selected
	// needs it (nil otherwise).
	facts driver.Conn
}

// parts is what starting a component adds to the process: loops to run in
// its errgroup, clients to close when it ends, readiness checks.
type parts struct {
	loops   []func(context.Context) error
	closers []func()
	checks  map[string]server.Check
	shared  map[string]bool
}

func (ps *parts) loop(fn func(context.Context) error) { ps.loops = append(ps.loops, fn) }
func (ps *parts) closer(fn func())                    { ps.closers = append(ps.closers, fn) }

// once adds a loop several components need (a document watcher) once.
func (ps *parts) once(name string, fn func(context.Context) error) {
	if !ps.shared[name] {
		ps.shared[name] = true
		ps.loop(fn)
	}
}

// The documents a process follows, reloaded every few seconds so a new
// version takes effect without a restart.
func (e env) watchProgramme(ps *parts) {
	ps.once("programme", func(ctx context.Context) error { return e.d.benefits.Watch(ctx, 5*time.Second) })
}

func (e env) watchCatalogue(ps *parts) {
	ps.once("catalogue", func(ctx context.Context) error { return e.d.tags.Watch(ctx, 5*time.Second) })
}

// startWorker starts a worker of stage that applies events with a. A
// worker that does the work of other stages (seedFrom) joins its group, the
// first time that group runs, where their groups all left off.
func (e env) startWorker(ps *parts, stage string, a worker.Applier, seedFrom ...string) error {
	if len(seedFrom) == 0 {
		w, err := worker.New(e.p.cfg.Kafka, e.ktel, stage, a)
		if err != nil {
			return err
		}
		ps.closer(w.Close)
		ps.loop(w.Run)
		return nil
	}
	ps.loop(func(ctx context.Context) error {
		if err := e.seedGroup(ctx, stage, seedFrom); err != nil {
			return err
		}
		w, err := worker.New(e.p.cfg.Kafka, e.ktel, stage, a)
		if err != nil {
			return err
		}
		defer w.Close()
		return w.Run(ctx)
	})
	return nil
}

// seedGroup commits to stage's group, if it has never committed, the
// member-event offsets the groups of from have all reached (retried until
// Kafka answers or ctx ends).
func (e env) seedGroup(ctx context.Context, stage string, from []string) error {
	cl, err := kafka.NewClient(e.p.cfg.Kafka, e.ktel, "")
	if err != nil {
		return err
	}
	defer cl.Close()
	kcfg := e.p.cfg.Kafka
	groups := make([]string, len(from))
	for i, f := range from {
		groups[i] = kcfg.Group(f)
	}
	log := e.p.tel.Logger.With("stage", stage)
	return consumer.Retry(ctx, log, "seed the group's offsets", func() error {
		seeded, err := kafka.SeedGroup(ctx, cl.Client, kcfg.Group(stage), kcfg.Topics.MemberEvents, groups...)
		if err == nil && len(seeded) > 0 {
			log.InfoContext(ctx, "group starts where the stages it takes over left off", "from", groups, "partitions", len(seeded[kcfg.Topics.MemberEvents]))
		}
		return err
	})
}

// env is what a component is started with.
type env struct {
	p    *Platform
	d    *domain
	ktel kafka.Telemetry
	now  func() time.Time
	// together is true when the process runs both the benefit and the tag
	// stage: one worker (package members) then applies member events for
	// both, in consumer group members.
	together bool
}

// group is the consumer group a selected stage reads in.
func (e env) group(stage string) string {
	if e.together && (stage == benefits.Stage || stage == tags.Stage) {
		stage = members.Stage
	}
	return e.p.cfg.Kafka.Group(stage)
}

// LabelCheckInterval is how often the benefit stage looks for members
// whose labels a benefit depends on changed.
const LabelCheckInterval = 100 * time.Millisecond

// KeyShredInterval is how often a serve process looks for data keys of
// erased members an erasure queued and did not shred (its process ended
// between its commit and the shredding).
const KeyShredInterval = 10 * time.Second

// OutboxPruneBatch is how many published changes one statement deletes
// from the outbox once their retention (MC_OUTBOX_RETENTION) passed.
const OutboxPruneBatch = 10_000

// stage is a pipeline stage the pipeline command can run.
type stage struct {
	name string
	// group is false for a stage without a consumer group (the relay).
	group bool
	// clickhouse is true for a stage that writes ClickHouse.
	clickhouse bool
	start      func(e env, ps *parts) error
}

// stages are the pipeline's stages, in the order they start.
var stages = []stage{
	{name: ingest.Stage, group: true, start: func(e env, ps *parts) error {
		o := e.p.cfg.Ingest.Options()
		o.Now = e.now
		// What the benefit stage would refuse is refused here, so an event
		// reaches every stage or none.
		o.Checks = append(o.Checks, e.d.benefits.CheckEvent)
		e.watchProgramme(ps)
		st, err := ingest.New(e.p.cfg.Kafka, e.ktel, e.d.identity, o)
		if err != nil {
			return err
		}
		ps.closer(st.Close)
		ps.loop(st.Run)
		return nil
	}},
	{name: benefits.Stage, group: true, start: func(e env, ps *parts) error {
		if !e.together { // else the tag stage starts the members' worker
			if err := e.startWorker(ps, benefits.Stage, e.d.benefits); err != nil {
				return err
			}
		}
		e.watchProgramme(ps)
		// Expiry and month starts for members without new events.
		ps.loop(func(ctx context.Context) error { return e.d.benefits.RunScheduler(ctx, time.Minute) })
		// Benefits that follow labels, once the tag worker changed them.
		ps.loop(func(ctx context.Context) error { return e.d.benefits.RunLabelChecks(ctx, LabelCheckInterval) })
		return nil
	}},
	{name: tags.Stage, group: true, clickhouse: true, start: func(e env, ps *parts) error {
		var err error
		if e.together {
			err = e.startWorker(ps, members.Stage, members.Applier{Tags: e.d.tags, Benefits: e.d.benefits}, benefits.Stage, tags.Stage)
		} else {
			err = e.startWorker(ps, tags.Stage, e.d.tags)
		}
		if err != nil {
			return err
		}
		e.watchCatalogue(ps)
		// The labels benefits depend on are the programme's.
		e.watchProgramme(ps)
		// Windows that end and days that pass, for members without new
		// events.
		ps.loop(func(ctx context.Context) error { return e.d.tags.RunSweeper(ctx, time.Second) })
		// Current profiles to ClickHouse.
		schema := clickhouse.NewSchema(e.p.cfg.ClickHouse, e.d.facts, clickhouse.WithTracerProvider(e.p.tel.Tracers))
		ps.loop(e.d.tags.NewExporter(e.d.facts, schema).Run)
		return nil
	}},
	{name: relay.Stage, start: func(e env, ps *parts) error {
		r, err := relay.New(e.p.cfg.Kafka, e.ktel, changes.Outbox{Pool: e.p.pool})
		if err != nil {
			return err
		}
		ps.closer(r.Close)
		ps.loop(r.Run)
		// Published changes leave the outbox after the retention.
		if keep := e.p.cfg.Postgres.OutboxRetention; keep > 0 {
			log := e.p.tel.Logger.With("stage", relay.Stage)
			ps.loop(func(ctx context.Context) error {
				fault.Drain(ctx, log, "outbox retention", OutboxPruneBatch, time.Minute, func(ctx context.Context, n int) (int, error) {
					pruned, err := postgres.PruneOutbox(ctx, e.p.pool, keep, n)
					if pruned > 0 {
						// The oldest changes may hold one kept before
						// older ones (a change is aged from its
						// transaction's start, not from its place in the
						// outbox): go on while any leave.
						return n, err
					}
					return 0, err
				})
				return nil
			})
		}
		return nil
	}},
	{name: sink.Stage, group: true, clickhouse: true, start: func(e env, ps *parts) error {
		schema := clickhouse.NewSchema(e.p.cfg.ClickHouse, e.d.facts, clickhouse.WithTracerProvider(e.p.tel.Tracers))
		s, err := sink.New(e.p.cfg.Kafka, e.ktel, facts.Writer{W: clickhouse.NewWriter(e.d.facts), E: schema, Erased: facts.ErasedIn(e.p.pool)})
		if err != nil {
			return err
		}
		ps.closer(s.Close)
		ps.loop(s.Run)
		// The operator and configuration audit, beside the facts.
		ps.loop(audit.NewExporter(e.p.pool, clickhouse.NewWriter(e.d.facts), e.p.tel.Logger).Run)
		ps.checks["clickhouse"] = e.d.facts.Ping
		return nil
	}},
}

// service is a gRPC service the serve command can run.
type service struct {
	name       string
	clickhouse bool
	register   func(e env, srv *grpc.Server, ps *parts) (health string, hub *changefeed.Hub)
}

// services are the gRPC services, in the order they register.
var services = []service{
	{name: "identity", register: func(e env, srv *grpc.Server, _ *parts) (string, *changefeed.Hub) {
		mcv1.RegisterIdentityServiceServer(srv, identity.NewServer(e.d.identity))
		return mcv1.IdentityService_ServiceDesc.ServiceName, nil
	}},
	{name: "profile", clickhouse: true, register: func(e env, srv *grpc.Server, ps *parts) (string, *changefeed.Hub) {
		e.d.profile.SetFacts(e.d.facts) // segments
		e.watchCatalogue(ps)            // the catalogue the profile reads
		// Data keys of erased members a process that ended left to shred.
		ps.loop(func(ctx context.Context) error {
			return e.d.profile.RunKeyShreds(ctx, e.p.tel.Logger, KeyShredInterval)
		})
		mcv1.RegisterProfileServiceServer(srv, profile.NewServer(e.d.profile))
		return mcv1.ProfileService_ServiceDesc.ServiceName, nil
	}},
	{name: "benefits", clickhouse: true, register: func(e env, srv *grpc.Server, ps *parts) (string, *changefeed.Hub) {
		e.d.benefits.SetFacts(e.d.facts) // campaign simulation
		e.watchProgramme(ps)
		mcv1.RegisterBenefitsServiceServer(srv, benefits.NewServer(e.d.benefits))
		return mcv1.BenefitsService_ServiceDesc.ServiceName, nil
	}},
	{name: "sync", register: func(e env, srv *grpc.Server, ps *parts) (string, *changefeed.Hub) {
		hub := changefeed.NewHub(e.p.cfg.Kafka, e.ktel)
		ps.loop(hub.Run)
		e.watchCatalogue(ps) // label filters name catalogue labels
		mcv1.RegisterSyncServiceServer(srv, changefeed.NewServer(hub, e.d.profile, e.d.tags, e.p.tel.Tracers))
		return mcv1.SyncService_ServiceDesc.ServiceName, hub
	}},
}

func stageNames() []string {
	out := make([]string, len(stages))
	for i, s := range stages {
		out[i] = s.name
	}
	return out
}

func serviceNames() []string {
	out := make([]string, len(services))
	for i, s := range services {
		out[i] = s.name
	}
	return out
}
