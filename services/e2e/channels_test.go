package e2e_test

import (
	"bufio"
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/pipeline/relay"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/platform"
)

// TestEveryChannelSeesTheSameChangesInOrder: a POS transaction, an app
// coupon claim and a mini-program profile update for one member reach a POS
// subscriber, an app subscriber and a mini-program back end's server-sent
// event stream in the same order with consecutive sequence numbers. The
// outbox relay is killed after the purchase and restarted after the other
// two; the app subscriber disconnects in the middle and resumes with its
// token. Nothing is lost, duplicated or reordered.
func TestEveryChannelSeesTheSameChangesInOrder(t *testing.T) {
	var stages []string
	for _, s := range platform.AllStages {
		if s != relay.Stage {
			stages = append(stages, s)
		}
	}
	e := startWith(t, stages) // the relay runs here, so it can be killed
	ctx := within(t, 120*time.Second)
	ktel := kafka.Telemetry{Tracers: e.tel.Tracers, Meters: e.tel.Meters, Propagator: e.tel.Propagator, Logger: e.tel.Logger}
	startRelay := func() func() {
		r, err := relay.New(e.cfg.Kafka, ktel, changes.Outbox{Pool: e.pool})
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		return func() {
			stop()
			if err := <-done; err != nil && rctx.Err() == nil {
				t.Errorf("relay: %v", err)
			}
			r.Close()
		}
	}
	killRelay := startRelay()

	const phone, card = "13400000099", "c-channels"
	member := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "channels-create", phone, card)
	sync := mcv1.NewSyncServiceClient(e.conn)
	grpcSub := func(c context.Context, token string) mcv1.SyncService_SubscribeClient {
		s, err := sync.Subscribe(c, &mcv1.SubscribeRequest{MemberIds: []string{member}, ResumeToken: token})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	pos := grpcSub(ctx, "")
	actx, disconnectApp := context.WithCancel(ctx)
	app := grpcSub(actx, "")
	for _, s := range []mcv1.SyncService_SubscribeClient{pos, app} {
		if m, err := s.Recv(); err != nil || m.GetReady() == nil {
			t.Fatalf("first message %v, %v", m, err)
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.http+"/v1/sync/subscribe?member_ids="+member, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("SSE subscribe: %v %v", resp, err)
	}
	defer resp.Body.Close()
	sse := bufio.NewReader(resp.Body)
	if ev := readEvent(t, sse); ev.kind != "ready" {
		t.Fatalf("first event %+v", ev)
	}

	// 1. POS purchase through Kafka; the app subscriber sees its first
	// change, then disconnects.
	e.publishEvent(t, ctx, phone, posTransaction("channels-1", phone, card, 30_000))
	var appSeqs []uint64
	m, err := app.Recv()
	if err != nil {
		t.Fatal(err)
	}
	appSeqs = append(appSeqs, m.GetChange().GetSequence())
	appToken := m.GetResumeToken()
	disconnectApp()
	eventually(t, "the purchase applied by both workers", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(ctx, `SELECT count(*) FROM processed_events WHERE event_id = 'channels-1'`).Scan(&n)
		return n == 2, err
	})
	// 2. The relay dies; the app claims a coupon and the mini-program
	// updates the profile meanwhile.
	killRelay()
	if _, err := mcv1.NewBenefitsServiceClient(e.conn).ClaimCoupon(ctx, &mcv1.ClaimCouponRequest{MemberId: member, TemplateId: "C10", IdempotencyKey: "channels-claim"}); err != nil {
		t.Fatal(err)
	}
	if code, out := postJSON(t, ctx, e.http+"/membercenter.v1.ProfileService/UpdateAttributes",
		`{"memberId":"`+member+`","attributes":{"city":"Hangzhou","birth_date":"1995-02-03"},"idempotencyKey":"channels-attrs"}`); code != http.StatusOK {
		t.Fatalf("UpdateAttributes over HTTP: %d %v", code, out)
	}
	var final uint64
	if err := e.pool.QueryRow(ctx, `SELECT change_seq FROM members WHERE member_id = $1`, member).Scan(&final); err != nil {
		t.Fatal(err)
	}
	// 3. A new relay publishes what the dead one left.
	defer startRelay()()

	read := func(next func() *mcv1.MemberChange, seqs []uint64) []uint64 {
		for len(seqs) == 0 || seqs[len(seqs)-1] < final {
			c := next()
			if c.GetMemberId() != member {
				t.Fatalf("change of another member: %v", c)
			}
			seqs = append(seqs, c.GetSequence())
		}
		return seqs
	}
	posSeqs := read(func() *mcv1.MemberChange {
		m, err := pos.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return m.GetChange()
	}, nil)
	app = grpcSub(ctx, appToken)
	appSeqs = read(func() *mcv1.MemberChange {
		for {
			m, err := app.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if m.GetReady() == nil {
				return m.GetChange()
			}
		}
	}, appSeqs)
	sseSeqs := read(func() *mcv1.MemberChange {
		ev := readEvent(t, sse)
		msg := &mcv1.SubscribeResponse{}
		if err := protojson.Unmarshal([]byte(ev.data), msg); err != nil || ev.kind != "change" {
			t.Fatalf("event %+v: %v", ev, err)
		}
		return msg.GetChange()
	}, nil)

	// The member's creation (sequence 1, from the Resolve before the
	// subscriptions) may reach the hub before or after each subscriber
	// joined; the scenario's changes start at 2.
	scenario := func(seqs []uint64) []uint64 {
		return slices.DeleteFunc(slices.Clone(seqs), func(s uint64) bool { return s < 2 })
	}
	posSeqs, appSeqs, sseSeqs = scenario(posSeqs), scenario(appSeqs), scenario(sseSeqs)
	first := uint64(2)
	for i, s := range posSeqs {
		if s != first+uint64(i) {
			t.Fatalf("POS subscriber's sequences %v are not consecutive", posSeqs)
		}
	}
	if !slices.Equal(appSeqs, posSeqs) || !slices.Equal(sseSeqs, posSeqs) {
		t.Errorf("subscribers disagree:\n POS %v\n app %v (resumed after its first change)\n SSE %v", posSeqs, appSeqs, sseSeqs)
	}
	if len(posSeqs) < 4 {
		t.Errorf("only %d changes for a purchase, a coupon and a profile update: %v", len(posSeqs), posSeqs)
	}
}
