package e2e_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/changefeed"
)

// TestResumeTokenDeliversExactlyTheMissedChanges: a subscriber that
// disconnects and comes back with the token of the last message it got
// receives every change it missed, once, in order, then Ready.
func TestResumeTokenDeliversExactlyTheMissedChanges(t *testing.T) {
	e, ctx := startWithin(t, 90*time.Second)
	const phone, card = "13600000077", "c-resume"
	member := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "resume-create", phone, card)
	sync := mcv1.NewSyncServiceClient(e.conn)

	// First connection: follow the member through one purchase.
	sctx, disconnect := context.WithCancel(ctx)
	stream, err := sync.Subscribe(sctx, &mcv1.SubscribeRequest{MemberIds: []string{member}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetReady() == nil || first.GetResumeToken() == "" {
		t.Fatalf("first message %v, %v; want Ready with a token", first, err)
	}
	e.publishEvent(t, ctx, phone, posTransaction("resume-1", phone, card, 10_000))
	token, lastSeq := "", uint64(0)
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetResumeToken() == "" {
			t.Fatalf("message without a resume token: %v", m)
		}
		token, lastSeq = m.GetResumeToken(), m.GetChange().GetSequence()
		if m.GetChange().GetPointsChanged() != nil {
			break
		}
	}
	disconnect()

	// While away: two more purchases.
	for _, id := range []string{"resume-2", "resume-3"} {
		e.publishEvent(t, ctx, phone, posTransaction(id, phone, card, 20_000))
	}
	var want uint64
	eventually(t, "both purchases applied and every change published", func() (bool, error) {
		var processed, unpublished int
		err := e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM processed_events WHERE event_id IN ('resume-2', 'resume-3')),
			(SELECT count(*) FROM outbox_pending WHERE member_id = $1), (SELECT change_seq FROM members WHERE member_id = $1)`,
			member).Scan(&processed, &unpublished, &want)
		return processed == 4 && unpublished == 0, err // benefits and tags, twice
	})

	// Back with the token: exactly the changes after lastSeq, in order,
	// each once. What the hub had read when the stream started is
	// replayed before Ready; the rest (the hub may still be reading what
	// the relay published) follows live.
	stream, err = sync.Subscribe(ctx, &mcv1.SubscribeRequest{MemberIds: []string{member}, ResumeToken: token})
	if err != nil {
		t.Fatal(err)
	}
	next, ready := lastSeq+1, false
	for !ready || next <= want {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("resumed stream at sequence %d of %d (ready: %v): %v", next-1, want, ready, err)
		}
		if m.GetReady() != nil {
			if ready {
				t.Fatal("a second Ready")
			}
			ready = true
			continue
		}
		c := m.GetChange()
		if c.GetMemberId() != member || c.GetSequence() != next {
			t.Fatalf("resumed change %d of %s, want %d of %s", c.GetSequence(), c.GetMemberId(), next, member)
		}
		next++
	}

	// A token older than what the change log keeps: retention deleted the
	// records after it.
	adm := kadm.NewClient(e.kafka.Client)
	ends, err := adm.ListEndOffsets(ctx, e.cfg.Kafka.Topics.MemberChanges)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.DeleteRecords(ctx, ends.Offsets()); err != nil {
		t.Fatal(err)
	}
	old, err := sync.Subscribe(ctx, &mcv1.SubscribeRequest{MemberIds: []string{member}, ResumeToken: first.GetResumeToken()})
	if err == nil {
		_, err = old.Recv()
	}
	if status.Code(err) != codes.OutOfRange || !strings.Contains(err.Error(), "take a snapshot") {
		t.Errorf("token behind the log's start: %v; want OutOfRange telling to take a snapshot", err)
	}

	// Bad tokens and filters say what to do.
	for _, tc := range []struct {
		name  string
		req   *mcv1.SubscribeRequest
		code  codes.Code
		words string
	}{
		{"malformed token", &mcv1.SubscribeRequest{ResumeToken: "not-a-token"}, codes.InvalidArgument, "take a snapshot"},
		{"tampered token", &mcv1.SubscribeRequest{ResumeToken: token[:len(token)-2] + flip(token[len(token)-2:])}, codes.InvalidArgument, "take a snapshot"},
		{"token ahead of the log", &mcv1.SubscribeRequest{ResumeToken: changefeed.EncodeToken(changefeed.Position{0: 1 << 40})}, codes.OutOfRange, "take a snapshot"},
		{"unknown label", &mcv1.SubscribeRequest{LabelId: "no_such_label"}, codes.InvalidArgument, "ListLabels"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := sync.Subscribe(ctx, tc.req)
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.words) {
				t.Errorf("error %v; want %s mentioning %q", err, tc.code, tc.words)
			}
		})
	}
}

func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

// TestDisconnectingSubscribersLeaveNothingBehind: streams cancelled
// mid-way leave no goroutine behind, on the server (the Subscribe handler,
// its hub subscription) or in the client's stream.
//
// It counts the goroutines of subscriptions only: the process also runs the
// whole platform, whose Kafka and PostgreSQL clients start and end
// goroutines of their own at any time, so a process-wide count cannot tell
// a leak from a broker connection opened meanwhile.
func TestDisconnectingSubscribersLeaveNothingBehind(t *testing.T) {
	e, ctx := startWithin(t, 60*time.Second)
	sync := mcv1.NewSyncServiceClient(e.conn)
	open := func() {
		sctx, stop := context.WithCancel(ctx)
		s, err := sync.Subscribe(sctx, &mcv1.SubscribeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		stop()
	}
	open() // warm up connections
	eventually(t, "the warm-up stream gone", func() (bool, error) {
		return subscriptionGoroutines() == 0, nil
	})
	for range 50 {
		open()
	}
	eventually(t, "no goroutine of the 50 cancelled streams left", func() (bool, error) {
		if n := subscriptionGoroutines(); n > 0 {
			return false, fmt.Errorf("%d left", n)
		}
		return true, nil
	})
}

// subscriptionGoroutines counts the goroutines serving or reading a
// SyncService.Subscribe stream.
func subscriptionGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "changefeed.(*Server).Subscribe") ||
			strings.Contains(g, "_SyncService_Subscribe_Handler") ||
			strings.Contains(g, "syncServiceSubscribeClient") ||
			strings.Contains(g, "newClientStreamWithParams") {
			count++
		}
	}
	return count
}
