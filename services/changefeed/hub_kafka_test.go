package changefeed_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/fault/faulttest"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	"github.com/membercenter/membercenter/services/changefeed"
)

// signal is a log handler that signals on ch when a message contains msg.
type signal struct {
	msg string
	ch  chan struct{}
}

func (s signal) Enabled(context.Context, slog.Level) bool { return true }
func (s signal) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, s.msg) {
		select {
		case s.ch <- struct{}{}:
		default:
		}
	}
	return nil
}
func (s signal) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s signal) WithGroup(string) slog.Handler      { return s }

// runHub runs a hub until the test ends; ended receives what Run returned.
func runHub(t *testing.T, cfg kafka.Config) (*changefeed.Hub, chan error) {
	t.Helper()
	return runHubWith(t, cfg, kafkatest.Telemetry())
}

func runHubWith(t *testing.T, cfg kafka.Config, tel kafka.Telemetry) (*changefeed.Hub, chan error) {
	t.Helper()
	h := changefeed.NewHub(cfg, tel)
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan error, 1)
	go func() { ended <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ended; err != nil {
			t.Errorf("hub: %v", err)
		}
	})
	return h, ended
}

func waitReady(t *testing.T, h *changefeed.Hub, ended chan error) {
	t.Helper()
	select {
	case <-h.Ready():
	case err := <-ended:
		ended <- err // for the cleanup
		t.Fatalf("hub ended before following the topic: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("hub not ready within 2 minutes")
	}
}

// TestHubWaitsForAChangeLogStillBeingCreated: a hub started before its
// topic exists (or while its metadata propagates) waits and follows it
// once it is there, instead of failing the platform's start with
// "list end offsets of <topic>: UNKNOWN_TOPIC_OR_PARTITION".
func TestHubWaitsForAChangeLogStillBeingCreated(t *testing.T) {
	cfg := kafkatest.Config(t)
	cfg.Topics.MemberChanges += ".late"
	waiting := make(chan struct{}, 100)
	tel := kafkatest.Telemetry()
	tel.Logger = slog.New(signal{"waiting for the change log", waiting})
	h, ended := runHubWith(t, cfg, tel)

	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The hub has asked at least once and found no topic.
	select {
	case <-h.Ready():
		t.Fatal("hub ready without a topic")
	case err := <-ended:
		ended <- err
		t.Fatalf("hub ended: %v", err)
	case <-waiting:
	case <-time.After(2 * time.Minute):
		t.Fatal("the hub never said it waits for the topic")
	}
	if _, err := adm.CreateTopic(ctx, 3, 1, nil, cfg.Topics.MemberChanges); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), cfg.Topics.MemberChanges) })
	waitReady(t, h, ended)
}

// anyInstant is the time of the changes these tests publish: any
// instant, only a valid one is asked for.
var anyInstant = time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC)

// change is a serialized MemberChange, as the relay publishes one, of the
// member named m with sequence seq; store tells the copies apart.
func change(t *testing.T, topic, name string, seq uint64, store string) *kgo.Record {
	t.Helper()
	m := uuid.NewSHA1(uuid.NameSpaceOID, []byte(name)).String()
	v, err := proto.Marshal(&mcv1.MemberChange{MemberId: m, Sequence: seq, StoreId: store, ChangeId: uuid.NewString(), OccurredAt: timestamppb.New(anyInstant),
		Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{Delta: 1, Balance: int64(seq)}}})
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: topic, Partition: 0, Key: []byte(m), Value: v}
}

// TestHubDeliversCommittedChangesOnlyFromTheCommittedEnd: the hub starts
// at the end of what is committed, so a transaction open when it starts
// is delivered once committed; an aborted transaction is never delivered,
// while the committed copy that follows it is; a replay up to the live
// position ends (the log ends with a transaction marker) with the same
// changes; and a broker outage on the hub's connections only delays
// delivery.
func TestHubDeliversCommittedChangesOnlyFromTheCommittedEnd(t *testing.T) {
	cfg := kafkatest.Config(t)
	topic := cfg.Topics.MemberChanges
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tx, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.TransactionalID(cfg.InstanceID+"-hub-test"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	publish := func(commit bool, recs ...*kgo.Record) {
		t.Helper()
		if err := tx.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := tx.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := tx.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	publish(true, change(t, topic, "m0", 1, "before the hub"))

	// A transaction open while the hub starts.
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := tx.ProduceSync(ctx, change(t, topic, "m", 1, "open at start")).FirstErr(); err != nil {
		t.Fatal(err)
	}

	proxy := faulttest.NewProxy(t, cfg.Brokers[0])
	viaProxy := cfg
	viaProxy.Dial = proxy.Dial
	h, ended := runHub(t, viaProxy)
	waitReady(t, h, ended)
	sub, from, err := h.Subscribe(ctx, changefeed.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := tx.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	publish(false, change(t, topic, "m", 2, "aborted"))
	publish(true, change(t, topic, "m", 2, "committed"))

	var got []string
	var queued []changefeed.Delivery
	next := func() changefeed.Delivery {
		t.Helper()
		for len(queued) == 0 {
			select {
			case <-sub.Ready():
				queued = sub.Take(queued)
			case err := <-ended:
				ended <- err
				t.Fatalf("hub ended: %v", err)
			case <-time.After(90 * time.Second):
				t.Fatalf("no delivery within 90s after %q", got)
			}
		}
		d := queued[0]
		queued = queued[1:]
		got = append(got, d.Change.GetStoreId())
		return d
	}
	next()
	next()
	if got[0] != "open at start" || got[1] != "committed" {
		t.Fatalf("delivered %q; want the change open at start, then the committed copy of sequence 2", got)
	}

	// The position the hub reached includes the last commit marker; a
	// replay up to it ends and sees the same changes.
	adm := kadm.NewClient(tx)
	var live changefeed.Position
	deadline := time.Now().Add(90 * time.Second)
	for {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		end, _ := ends.Lookup(topic, 0)
		s, at, err := h.Subscribe(ctx, changefeed.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if at[0] == end.Offset {
			live = at
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hub at %v, log ends at %d", at, end.Offset)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var replayed []string
	if err := h.Replay(ctx, changefeed.Filter{}, from, live, func(d changefeed.Delivery) error {
		replayed = append(replayed, d.Change.GetStoreId())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(replayed) != 2 || replayed[0] != "open at start" || replayed[1] != "committed" {
		t.Errorf("replayed %q", replayed)
	}

	// The broker goes away from the hub for a while; a change committed
	// meanwhile arrives once it is back.
	proxy.Cut()
	publish(true, change(t, topic, "m", 3, "during the outage"))
	time.Sleep(500 * time.Millisecond) // the outage lasts; nothing to wait for
	proxy.Restore()
	if d := next(); d.Change.GetSequence() != 3 {
		t.Errorf("after the outage: %v", d.Change)
	}
}
