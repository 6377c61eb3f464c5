package cli

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/membercenter/membercenter/pipeline/fault"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse/chbench"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"
)

// freshResult is the freshness run of a scenario: each path's distribution
// from the purchase's intended send time, and the purchases a path never
// showed within freshTimeout of the last send.
type freshResult struct {
	n                               int
	floor, points, profile, ch      Summary
	missPoints, missProfile, missCH int
	// resyncs counts the times the hub ended the stream (ResyncRequired:
	// the subscriber fell behind) and the checker resumed it with its
	// resume token.
	resyncs int
	// settled is how long the shoppers' unmeasured first purchases took
	// to be in everywhere (0 under --fresh-first).
	settled time.Duration
	// hops are the platform's stage latencies over the run.
	hops []hop
	// cpu is each process's CPU per 1,000 purchases from the first send to
	// the end of the last path's checker (this process's holds the
	// checkers'), span that time.
	cpu  cpuSeconds
	span time.Duration
}

const freshTimeout = 30 * time.Second

// freshEvent is one timed purchase.
type freshEvent struct {
	shopper int
	phone   string
	member  uuid.UUID
	// Before the purchase: the member's feature-state version and when
	// GetProfile said its labels were computed.
	version  int64
	computed time.Time
}

// freshness publishes r.o.freshEvents POS purchases of distinct preloaded
// shoppers (not the API scenarios' ones) open loop and times each to (a) its
// PointsChanged on an unfiltered Subscribe stream (cause id = event id); (b)
// GetProfile showing labels computed after the purchase: every versionPoll
// a connection reads the feature-state version of the pending members, and
// GetProfile is called for those with a new version, up to
// freshProfileCallers at once; (c) a new version of the member's row in
// ClickHouse's member_profiles, polled every chPoll. Unless --fresh-first,
// each shopper makes one purchase first (firstPurchases). Before, in the
// same run and at the same rate: a plain produce → consume round trip.
// versionPoll is how often the GetProfile checker reads the pending
// members' label versions, and chPoll how often the ClickHouse checker
// reads their profile rows' versions: a twentieth of the paths' targets
// (500 ms, 2 s). The polls share the platform's cores, and their cost
// grows with the members pending: polled every 5 and 10 ms, with 2,000
// purchases at 200/s, ClickHouse's CPU a purchase was 3.15 ms (1.63 at
// 100 ms) and the machine was the busier for it.
const (
	versionPoll = 25 * time.Millisecond
	chPoll      = 100 * time.Millisecond
)

// freshProfileCallers bounds the GetProfile calls the freshness checker
// has in flight at once.
const freshProfileCallers = 32

func (r *pipelineRun) freshness(ctx context.Context, floorTopic string) (freshResult, error) {
	n, rate := r.o.freshEvents, r.o.freshRate
	res := freshResult{n: n}
	if n <= 0 {
		return res, nil
	}
	if r.members-apiShoppers < n {
		return res, fmt.Errorf("%d members leave fewer than %d shoppers besides the API scenarios' %d", r.members, n, apiShoppers)
	}
	lb := &latencyBench{events: n, members: n, rate: rate}
	var err error
	if res.floor, err = lb.floor(ctx, r.kcfg, r.ktel, r.producer, r.adm, floorTopic); err != nil {
		return res, fmt.Errorf("floor: %w", err)
	}

	// The purchasers, resolved before their purchase (unmeasured).
	ids := mcv1.NewIdentityServiceClient(r.conn)
	profiles := mcv1.NewProfileServiceClient(r.conn)
	evs := make([]freshEvent, 0, n)
	byMember := map[uuid.UUID]int{}
	for _, k := range rand.Perm(r.members - apiShoppers)[:n] {
		sh := r.g.Shopper(apiShoppers + k)
		resp, err := ids.Resolve(ctx, &mcv1.ResolveRequest{
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: sh.Phone}},
			Channel:     mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: fmt.Sprintf("%s-fr-%d", r.run, k)})
		if err != nil {
			return res, fmt.Errorf("resolve shopper %d: %w", sh.Index, err)
		}
		m := uuid.MustParse(resp.GetMemberId())
		if _, dup := byMember[m]; dup {
			continue // two shoppers merged into one member: time it once
		}
		byMember[m] = len(evs)
		evs = append(evs, freshEvent{shopper: sh.Index, phone: sh.Phone, member: m})
	}
	n, res.n = len(evs), len(evs)
	members := make([]uuid.UUID, n)
	for i, ev := range evs {
		members[i] = ev.member
	}
	before, err := pgbench.FeatureVersions(ctx, r.p.Pool(), members)
	if err != nil {
		return res, err
	}
	for m, v := range before {
		evs[byMember[m]].version = v.Version
	}
	if !r.o.freshFirst {
		pipelineLogf("%d members: each of %d shoppers buys once first, unmeasured", r.members, n)
		if evs, res.settled, err = r.firstPurchases(ctx, evs); err != nil {
			return res, fmt.Errorf("the shoppers' first purchases: %w", err)
		}
		n, res.n = len(evs), len(evs)
		pipelineLogf("%d members: the first purchases settled in %s", r.members, res.settled.Round(100*time.Millisecond))
		if n == 0 {
			return res, errors.New("no shopper's labels changed with its first purchase: nothing to time")
		}
	}
	if err := labelsComputed(ctx, profiles, evs); err != nil {
		return res, err
	}

	// The stream has its own context: ending it at the timeout must not
	// cancel the other checkers mid-query.
	sctx, cancelStream := context.WithCancel(ctx)
	defer cancelStream()
	subscribe := func(token string) (*wireSubscription, error) { return subscribeWire(sctx, r.conn, token) }
	stream, err := subscribe("")
	if err != nil {
		return res, err
	}
	if m, err := stream.recv(); err != nil || !m.ready {
		return res, fmt.Errorf("subscribe: %v", err)
	}
	lc, err := pgbench.OpenVersionReader(ctx, r.url)
	if err != nil {
		return res, err
	}
	defer lc.Close()

	points, shown, inCH := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	var published atomic.Int64
	var sentAll atomic.Value // time.Time of the last send
	expired := func() bool {
		t, ok := sentAll.Load().(time.Time)
		return ok && time.Since(t) > freshTimeout
	}
	// pending lists the published events a path has not shown yet.
	pending := func(seen []time.Time) []int {
		var out []int
		for i := range int(published.Load()) {
			if seen[i].IsZero() {
				out = append(out, i)
			}
		}
		return out
	}
	prefix := r.run + "-fr-"
	// ClickHouse rows of the timed purchases have labels computed from
	// now on (the first purchases' rows, of lower versions, may share the
	// second).
	since := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	// Every checker is done before the listen connection closes, also when
	// publishing fails (ctx ended: the checkers end with it).
	defer func() {
		cancelStream()
		_ = g.Wait()
	}()
	g.Go(func() error { // (a) the change stream
		token := ""
		for got := 0; got < n; {
			msg, err := stream.recv()
			if err == nil && msg.resync {
				// A client that fell behind resumes after the last change
				// it got, as a channel would.
				res.resyncs++
				if stream, err = subscribe(token); err != nil {
					return fmt.Errorf("resubscribe: %w", err)
				}
				continue
			}
			if err != nil {
				if expired() {
					return nil
				}
				return fmt.Errorf("stream: %w", err)
			}
			if msg.token != "" {
				token = msg.token
			}
			i, err := strconv.Atoi(strings.TrimPrefix(msg.cause, prefix))
			if !msg.points || !strings.HasPrefix(msg.cause, prefix) || err != nil || i >= n || !points[i].IsZero() {
				continue
			}
			points[i] = time.Now()
			got++
		}
		return nil
	})
	g.Go(func() error { // (b) GetProfile
		for {
			idx := pending(shown)
			if int(published.Load()) == n && len(idx) == 0 || expired() {
				return nil
			}
			if !fault.Sleep(gctx, versionPoll) {
				return nil
			}
			if len(idx) == 0 {
				continue
			}
			ms := make([]uuid.UUID, len(idx))
			for k, i := range idx {
				ms[k] = evs[i].member
			}
			versions, err := lc.FeatureVersions(gctx, ms)
			if err != nil {
				return err
			}
			// The members with a new version are asked at once, as many
			// clients would: asked one after another, the checker's own
			// round trips queued behind each other and it reported seconds
			// for labels committed a few hundred milliseconds after ingest.
			var asks errgroup.Group
			asks.SetLimit(freshProfileCallers)
			for _, i := range idx {
				if versions[evs[i].member].Version <= evs[i].version {
					continue
				}
				asks.Go(func() error {
					p, err := profiles.GetProfile(gctx, &mcv1.GetProfileRequest{MemberId: evs[i].member.String()})
					if err != nil {
						return fmt.Errorf("GetProfile: %w", err)
					}
					if p.GetProfile().GetLabelsComputedAt().AsTime().After(evs[i].computed) {
						shown[i] = time.Now() // i is this call's alone
					}
					return nil
				})
			}
			if err := asks.Wait(); err != nil {
				return err
			}
		}
	})
	g.Go(func() error { // (c) ClickHouse
		t := time.NewTicker(chPoll)
		defer t.Stop()
		for {
			idx := pending(inCH)
			if int(published.Load()) == n && len(idx) == 0 || expired() {
				return nil
			}
			if len(idx) > 0 {
				ms := make([]string, len(idx))
				for k, i := range idx {
					ms[k] = evs[i].member.String()
				}
				versions, err := chbench.LatestVersions(gctx, r.ch, ms, since)
				if err != nil {
					return fmt.Errorf("ClickHouse poll: %w", err)
				}
				now := time.Now()
				for _, i := range idx {
					if int64(versions[evs[i].member.String()]) > evs[i].version {
						inCH[i] = now
					}
				}
			}
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	// Where the timed purchases' time went, by the platform's own
	// histograms (the first purchases left out).
	hopsBefore, err := scrapeHistograms(ctx, r.admin)
	if err != nil {
		return res, err
	}
	pipelineLogf("%d members: timing %d purchases at %d/s", r.members, n, rate)
	stopProfile, err := startCPUProfile(r.profileOf("fresh"))
	if err != nil {
		return res, err
	}
	defer stopProfile()
	cpuBefore := sampleCPU()
	intended, err := lb.openLoop(ctx, n, func(i int) {
		r.producer.Produce(ctx, r.purchase(prefix, i, evs[i]), nil)
		published.Add(1)
	})
	if err != nil {
		return res, err
	}
	sentAll.Store(time.Now())
	// The stream's Recv has no deadline of its own: end it once the time
	// is up (Wait cancels gctx when every path is done).
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for range t.C {
			if expired() || gctx.Err() != nil {
				cancelStream()
				return
			}
		}
	}()
	if err := g.Wait(); err != nil {
		return res, err
	}
	cpuAfter := sampleCPU()
	stopProfile()
	hopsAfter, err := scrapeHistograms(ctx, r.admin)
	if err != nil {
		return res, err
	}
	res.hops = hopsBetween(hopsBefore, hopsAfter)
	res.cpu, res.span = cpuPer(cpuBefore, cpuAfter, float64(n)/1000), cpuAfter.at.Sub(cpuBefore.at)
	pipelineLogf("%d members: the timed purchases are in (%s from the first send)", r.members, res.span.Round(time.Millisecond))
	dist := func(seen []time.Time, miss *int) Summary {
		var ds []time.Duration
		last := intended[0]
		for i, t := range seen {
			if t.IsZero() {
				*miss++
				continue
			}
			ds = append(ds, t.Sub(intended[i]))
			if t.After(last) {
				last = t
			}
		}
		if len(ds) == 0 {
			return Summary{}
		}
		return summarize(ds, last.Sub(intended[0]))
	}
	res.points, res.profile, res.ch = dist(points, &res.missPoints), dist(shown, &res.missProfile), dist(inCH, &res.missCH)
	return res, nil
}

// purchase is the POS purchase of ev's shopper under event id prefix+i.
func (r *pipelineRun) purchase(prefix string, i int, ev freshEvent) *kgo.Record {
	total, items := benchItems()
	ce := &mcv1.ChannelEvent{
		EventId: prefix + strconv.Itoa(i), Channel: mcv1.Channel_CHANNEL_POS, StoreId: r.g.Shopper(ev.shopper).HomeStore,
		OccurredAt:  timestamppb.Now(),
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: ev.phone}},
		Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{
			OrderId: "O-" + prefix + strconv.Itoa(i), Total: cny(total), Items: items}},
	}
	v, _ := proto.Marshal(ce)
	return &kgo.Record{Topic: r.kcfg.Topics.ChannelEvents, Key: []byte(ev.phone), Value: v}
}

// firstPurchases gives each timed shopper one purchase first, unmeasured,
// and waits until the platform is idle again: every purchase ingested and
// applied by both member stages, every change published and in the sink's
// hands (every stage's offsets committed), the profile export queue empty
// and each member whose labels changed in ClickHouse at its new version.
// The preload stores identifiers only, so a preloaded member has no
// labels, and its first purchase gives every label of the catalogue its
// first value (a LabelsChanged of about 230 labels, and as many ClickHouse
// rows); a retailer's existing members have theirs (the legacy import
// computes them, docs/migration.md), and a purchase of theirs changes the
// few its features move. evs' versions are updated to the new ones. A
// member whose labels this purchase did not change (its
// behavioural labels withheld: profiling consent withdrawn in an earlier
// pass) would not show a timed purchase's labels either, and is left out
// of the returned events. It also returns how long it took.
func (r *pipelineRun) firstPurchases(ctx context.Context, evs []freshEvent) ([]freshEvent, time.Duration, error) {
	start := time.Now()
	prefix := r.run + "-fw-"
	for i, ev := range evs {
		r.producer.Produce(ctx, r.purchase(prefix, i, ev), nil)
	}
	if err := r.producer.Flush(ctx); err != nil {
		return nil, 0, err
	}
	members := make([]uuid.UUID, len(evs))
	ids := make([]string, len(evs))
	for i, ev := range evs {
		members[i], ids[i] = ev.member, ev.member.String()
	}
	n := len(evs)
	wait := newProgress()
	var versions map[uuid.UUID]pgbench.FeatureVersion
	for {
		p, err := pgbench.ProgressOf(ctx, r.p.Pool(), prefix+"%")
		if err != nil {
			return nil, 0, err
		}
		queued, _, err := pgbench.ExportBacklog(ctx, r.p.Pool())
		if err != nil {
			return nil, 0, err
		}
		checks, err := pgbench.LabelChecksQueued(ctx, r.p.Pool())
		if err != nil {
			return nil, 0, err
		}
		// What is left: purchases not yet through a stage, changes not
		// published, members queued for export or for a label check of
		// their benefits, members whose new labels are not in ClickHouse
		// yet, and a stage with offsets to commit.
		left := 3*n - p.Ingested - p.Benefits - p.Tags + p.Unpublished + queued + checks
		if left == 0 {
			if versions, err = pgbench.FeatureVersions(ctx, r.p.Pool(), members); err != nil {
				return nil, 0, err
			}
			inCH, err := chbench.LatestVersions(ctx, r.ch, ids, start)
			if err != nil {
				return nil, 0, err
			}
			for _, ev := range evs {
				if v := versions[ev.member].Version; v > ev.version && int64(inCH[ev.member.String()]) < v {
					left++
				}
			}
			if left == 0 && !caughtUp(ctx, r.adm, r.kcfg) {
				left = 1
			}
		}
		if left == 0 {
			break
		}
		if wait.stalled(left) {
			return nil, 0, fmt.Errorf("no progress for %s: %d purchases, changes or profile rows still on their way (%+v, %d queued for export, %d for a label check; the platform's log, %s, says why)", stallAfter, left, p, queued, checks, r.o.logPath)
		}
		if !fault.Sleep(ctx, 100*time.Millisecond) {
			return nil, 0, ctx.Err()
		}
	}
	kept := evs[:0]
	for _, ev := range evs {
		if v := versions[ev.member].Version; v > ev.version {
			ev.version = v
			kept = append(kept, ev)
		}
	}
	if len(kept) < n {
		pipelineLogf("%d members: %d of %d shoppers' labels did not change with their purchase (behavioural labels withheld); left out", r.members, n-len(kept), n)
	}
	return kept, time.Since(start), nil
}

// labelsComputed reads when GetProfile says each member's labels were
// computed, before the timed purchases, up to freshProfileCallers calls at
// once.
func labelsComputed(ctx context.Context, profiles mcv1.ProfileServiceClient, evs []freshEvent) error {
	var asks errgroup.Group
	asks.SetLimit(freshProfileCallers)
	for i := range evs {
		asks.Go(func() error {
			p, err := profiles.GetProfile(ctx, &mcv1.GetProfileRequest{MemberId: evs[i].member.String()})
			if err != nil {
				return err
			}
			evs[i].computed = p.GetProfile().GetLabelsComputedAt().AsTime()
			return nil
		})
	}
	return asks.Wait()
}
