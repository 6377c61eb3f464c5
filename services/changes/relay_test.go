package changes_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/fault/faulttest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	"github.com/membercenter/membercenter/pipeline/relay"
	"github.com/membercenter/membercenter/services/changefeed"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/cmd/membercenter/membercentertest"
)

// anyInstant is the time of the changes these tests publish: any
// instant, only a valid one is asked for.
var anyInstant = time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC)

// telemetry is kafkatest's, with warnings logged to the test's log.
func telemetry(t *testing.T) kafka.Telemetry {
	tel := kafkatest.Telemetry()
	tel.Logger = slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return tel
}

type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// outbox writes changes as the services do: per member, sequences from 1.
type outbox struct {
	pool    *pgxpool.Pool
	members []uuid.UUID
	next    map[uuid.UUID]uint64
}

func newOutbox(t *testing.T, pool *pgxpool.Pool, members int) *outbox {
	o := &outbox{pool: pool, next: map[uuid.UUID]uint64{}}
	for range members {
		o.members = append(o.members, uuid.New())
	}
	return o
}

// write adds n changes to each member, in one transaction per round.
func (o *outbox) write(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	for range n {
		tx, err := o.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range o.members {
			o.next[m]++
			id := uuid.New()
			v, _ := proto.Marshal(&mcv1.MemberChange{MemberId: m.String(), Sequence: o.next[m], ChangeId: id.String(), OccurredAt: timestamppb.New(anyInstant),
				Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{Delta: 1, Balance: int64(o.next[m])}}})
			if err := postgres.InsertOutbox(ctx, tx, postgres.OutboxRow{MemberID: m, Sequence: int64(o.next[m]), ChangeID: id, Payload: v}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func (o *outbox) total() int {
	n := 0
	for _, s := range o.next {
		n += int(s)
	}
	return n
}

// published waits with wait (pgtest.Eventually, or the WaitFor of the
// loops that must keep running meanwhile) until every change is marked
// published.
func published(t *testing.T, ctx context.Context, pool *pgxpool.Pool, wait func(testing.TB, string, func() (bool, error))) {
	t.Helper()
	wait(t, "every change published", func() (bool, error) {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox_pending`).Scan(&left)
		return err == nil && left == 0, err
	})
}

// runRelay runs a relay of cfg on pool's outbox until the loops stop.
func runRelay(t *testing.T, ctx context.Context, cfg kafka.Config, pool *pgxpool.Pool) *pgtest.Loops {
	t.Helper()
	r, err := relay.New(cfg, telemetry(t), changes.Outbox{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return pgtest.StartLoops(ctx, r.Run)
}

// checkSequences fails unless got holds, per member, exactly the
// sequences 1..want[m] in order, each once.
func checkSequences(t *testing.T, what string, got []*mcv1.MemberChange, from map[string]uint64, want map[uuid.UUID]uint64) {
	t.Helper()
	last := map[string]uint64{}
	for k, v := range from {
		last[k] = v
	}
	bad := 0
	for _, c := range got {
		m := c.GetMemberId()
		if c.GetSequence() != last[m]+1 {
			if bad++; bad <= 5 {
				t.Errorf("%s: member %s got sequence %d after %d", what, m, c.GetSequence(), last[m])
			}
		}
		last[m] = max(last[m], c.GetSequence())
	}
	for m, n := range want {
		if last[m.String()] != n {
			t.Errorf("%s: member %s ends at sequence %d, want %d", what, m, last[m.String()], n)
		}
	}
}

// checkTopic fails unless the topic holds every change o wrote, once,
// each member's in order. It reads with kafkatest.ReadTopic, which appends
// a fence record to each partition: a hub following the topic would see
// them, so it comes after every check of a subscriber.
func checkTopic(t *testing.T, ctx context.Context, cfg kafka.Config, o *outbox) {
	t.Helper()
	var onTopic []*mcv1.MemberChange
	for _, r := range kafkatest.ReadTopic(t, ctx, cfg, cfg.Topics.MemberChanges) {
		c := &mcv1.MemberChange{}
		if err := proto.Unmarshal(r.Value, c); err != nil {
			t.Fatal(err)
		}
		onTopic = append(onTopic, c)
	}
	if len(onTopic) != o.total() {
		t.Errorf("%d changes on the topic, want %d", len(onTopic), o.total())
	}
	checkSequences(t, "topic", onTopic, nil, o.next)
}

// collector records what a subscription receives.
type collector struct {
	mu   sync.Mutex
	got  []*mcv1.MemberChange
	last changefeed.Position
}

func (c *collector) run(sub *changefeed.Subscription) {
	for {
		select {
		case <-sub.Ready():
			for _, d := range sub.Take(nil) {
				c.mu.Lock()
				c.got = append(c.got, d.Change)
				c.last = d.After
				c.mu.Unlock()
			}
		case <-sub.Done():
			return
		}
	}
}

func (c *collector) snapshot() ([]*mcv1.MemberChange, changefeed.Position) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*mcv1.MemberChange(nil), c.got...), c.last
}

// TestRelayCrashBetweenPublishAndMarkDuplicatesNothing: a relay process
// (built with the faults tag) is killed right after its first batch's
// Kafka transaction committed and before the batch was marked published in
// PostgreSQL, while a standby waits for leadership. The standby takes over
// within seconds, finds the batch committed and only marks it. The topic
// then holds every change once, each member's sequences consecutive; a live
// subscriber receives each change once, and so does one that resumed from
// a token taken between the crash and the takeover.
//
// The same holds when the relay dies with its transaction open (before the
// commit): the takeover aborts it and publishes the batch again.
func TestRelayCrashBetweenPublishAndMarkDuplicatesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin := membercentertest.Build(t, ctx, t.TempDir(), "faults")
	for _, fp := range []string{"relay-after-publish", "relay-before-commit"} {
		t.Run(fp, func(t *testing.T) { relayCrash(t, ctx, bin, fp) })
	}
}

func relayCrash(t *testing.T, ctx context.Context, bin, failpoint string) {
	pool := pgtest.NewPoolUnchecked(t, nil)
	dbURL := pool.Config().ConnString()
	cfg := kafkatest.Config(t)

	hub := changefeed.NewHub(cfg, telemetry(t))
	hubLoop := pgtest.StartLoops(ctx, hub.Run)
	defer hubLoop.Stop(t)
	<-hub.Ready()
	live, start, err := hub.Subscribe(ctx, changefeed.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	var liveGot collector
	go liveGot.run(live)

	// Relay A, the process that will crash, leads.
	var aLog bytes.Buffer
	a := exec.CommandContext(ctx, bin, "pipeline", "--stages=relay")
	a.Env = append(os.Environ(),
		"MC_PG_URL="+dbURL, "MC_KAFKA_BROKERS="+strings.Join(cfg.Brokers, ","), "MC_KAFKA_GROUP_PREFIX="+cfg.GroupPrefix,
		"MC_TOPIC_CHANNEL_EVENTS="+cfg.Topics.ChannelEvents, "MC_TOPIC_MEMBER_EVENTS="+cfg.Topics.MemberEvents,
		"MC_TOPIC_MEMBER_CHANGES="+cfg.Topics.MemberChanges, "MC_TOPIC_DLQ="+cfg.Topics.DLQ,
		"MC_INSTANCE_ID=relay-a", "MC_ADMIN_ADDR=127.0.0.1:0", "MC_FAILPOINTS="+failpoint+"=crash")
	a.Stdout, a.Stderr = &aLog, &aLog
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan error, 1)
	go func() { aDone <- a.Wait() }()
	defer func() {
		_ = a.Process.Kill()
		<-aDone
		if t.Failed() {
			t.Logf("relay A:\n%s", aLog.String())
		}
	}()
	pgtest.Eventually(t, "relay A leads", func() (bool, error) {
		var leader string
		err := pool.QueryRow(ctx, `SELECT leader FROM relay_leaders`).Scan(&leader)
		return leader == "relay-a", ignoreNoRows(err)
	})

	// Relay B, the standby, waits for the lock in this process.
	bCfg := cfg
	bCfg.InstanceID = "relay-b"
	b := runRelay(t, ctx, bCfg, pool)
	defer b.Stop(t)

	// 40 members × 3 changes: A's first batch commits, then A dies.
	o := newOutbox(t, pool, 40)
	o.write(t, ctx, 3)
	var died time.Time
	select {
	case err := <-aDone:
		died = time.Now()
		aDone <- err
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 86 {
			t.Fatalf("relay A ended with %v, want the failpoint's exit status 86", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("relay A's failpoint never fired")
	}
	// A subscriber leaves now, after the crashed batch's changes.
	atCrash, token := liveGot.snapshot()
	if token == nil {
		token = start
	}

	// B takes over: the batch in flight is settled, and B leads.
	b.WaitFor(t, "relay B leads with nothing in flight", func() (bool, error) {
		var leader string
		var inFlight int
		err := pool.QueryRow(ctx, `SELECT (SELECT leader FROM relay_leaders), (SELECT count(*) FROM relay_batches)`).Scan(&leader, &inFlight)
		return leader == "relay-b" && inFlight == 0, ignoreNoRows(err)
	})
	t.Logf("takeover: relay B led with the crashed batch settled %v after relay A was killed", time.Since(died).Round(time.Millisecond))
	o.write(t, ctx, 2)
	published(t, ctx, pool, b.WaitFor)
	t.Logf("every change published %v after relay A was killed", time.Since(died).Round(time.Millisecond))

	// The live subscriber: every change once, in order per member.
	pgtest.Eventually(t, "live subscriber has every change", func() (bool, error) {
		got, _ := liveGot.snapshot()
		return len(got) >= o.total(), nil
	})
	got, end := liveGot.snapshot()
	checkSequences(t, "live subscriber", got, nil, o.next)

	// The subscriber that left at the crash and resumes with its token.
	seen := map[string]uint64{}
	for _, c := range atCrash {
		seen[c.GetMemberId()] = c.GetSequence()
	}
	var resumed []*mcv1.MemberChange
	if err := hub.Replay(ctx, changefeed.Filter{}, token, end, func(d changefeed.Delivery) error {
		resumed = append(resumed, d.Change)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkSequences(t, "resumed subscriber", resumed, seen, o.next)

	// The topic: the same.
	checkTopic(t, ctx, cfg, o)
	if !strings.Contains(aLog.String(), "failpoint "+failpoint+": crash") {
		t.Errorf("relay A did not die at its failpoint:\n%s", aLog.String())
	}
}

func ignoreNoRows(err error) error {
	if err != nil && strings.Contains(err.Error(), "no rows") {
		return nil
	}
	return err
}

// TestRelayRidesOutPostgresAndKafkaRestarts: the relay keeps publishing
// across a PostgreSQL restart (every session of its database terminated,
// its leadership lock with them) and a Kafka outage (its connections cut
// and refused for a while), resumes by itself, and the topic holds every
// change once, in order per member.
func TestRelayRidesOutPostgresAndKafkaRestarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pool := pgtest.NewPoolUnchecked(t, nil)
	cfg := kafkatest.Config(t)
	proxy := faulttest.NewProxy(t, cfg.Brokers[0])
	viaProxy := cfg
	viaProxy.Dial = proxy.Dial
	// The relay must not end: every wait fails at once if it does.
	r := runRelay(t, ctx, viaProxy, pool)

	o := newOutbox(t, pool, 20)
	o.write(t, ctx, 2)
	published(t, ctx, pool, r.WaitFor)

	if n, err := pgtest.TerminateBackends(ctx, pool); err != nil || n == 0 {
		t.Fatalf("terminated %d sessions: %v", n, err)
	}
	o.write(t, ctx, 2)
	published(t, ctx, pool, r.WaitFor)

	proxy.Cut()
	o.write(t, ctx, 2)
	time.Sleep(2 * time.Second) // the outage lasts; nothing to wait for
	proxy.Restore()
	published(t, ctx, pool, r.WaitFor)
	r.Stop(t)
	checkTopic(t, ctx, cfg, o)
}
