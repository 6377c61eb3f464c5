package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/identity"
)

// TestDLQReplayReplaysEachLetterOnceAndSaysWhatItDid: `dlq replay` run
// twice re-publishes the letters once (before: 2, then 4, then 8 records,
// its own letters included), records it in PostgreSQL, and says what it
// did and what it could not do.
func TestDLQReplayReplaysEachLetterOnceAndSaysWhatItDid(t *testing.T) {
	ctx := onPlatform(t, 3*time.Minute)
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(os.Getenv("MC_KAFKA_BROKERS"), ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	events, letters := os.Getenv("MC_TOPIC_CHANNEL_EVENTS"), os.Getenv("MC_TOPIC_DLQ")
	// Two letters, and one whose original was too large to keep whole.
	for i, v := range [][]byte{[]byte("bad"), []byte("bad"), bytes.Repeat([]byte("x"), dlq.MaxOriginalBytes+1)} {
		src := &kgo.Record{Topic: events, Partition: 0, Offset: int64(i), Key: []byte("k"), Value: v}
		if err := cl.ProduceSync(ctx, dlq.Record(letters, "ingest", src, errors.New("broken"), clocktest.Start(), nil)).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	replay := func(args ...string) string {
		t.Helper()
		var out, log bytes.Buffer
		if err := Execute(ctx, append([]string{"dlq", "replay", "--since", "1h"}, args...), &out, &log); err != nil {
			t.Fatalf("dlq replay %v: %v\n%s", args, err, log.String())
		}
		return out.String()
	}
	for _, cmd := range []string{"list", "replay"} {
		var u *UsageError
		if err := Execute(ctx, []string{"dlq", cmd, "--since", "-1h"}, io.Discard, io.Discard); !errors.As(err, &u) {
			t.Errorf("dlq %s --since -1h: %v; want a usage error", cmd, err)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--stage", "benefits"}, "replayed 0, skipped 0 already replayed, 3 not matching the filter, 0 that cannot be replayed"},
		{nil, "replayed 2, skipped 0 already replayed, 0 not matching the filter, 1 that cannot be replayed"},
		{nil, "replayed 0, skipped 2 already replayed, 0 not matching the filter, 1 that cannot be replayed"},
		{[]string{"--force"}, "replayed 2, skipped 0 already replayed, 0 not matching the filter, 1 that cannot be replayed"},
	} {
		out := replay(tc.args...)
		if !strings.Contains(out, tc.want) {
			t.Errorf("dlq replay %v said:\n%s\nwant %q", tc.args, out, tc.want)
		}
		if strings.Contains(tc.want, "1 that cannot") && !strings.Contains(out, "kept by reference only") {
			t.Errorf("dlq replay %v does not say why a letter cannot be replayed:\n%s", tc.args, out)
		}
	}
	// What reached the source topic: two records per unforced-plus-forced run.
	src, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(os.Getenv("MC_KAFKA_BROKERS"), ",")...),
		kgo.ConsumeTopics(events), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	n := 0
	for n < 4 {
		fs := src.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("%d replayed records on %s, want 4", n, events)
		}
		n += fs.NumRecords()
	}
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	defer pcancel()
	if extra := src.PollFetches(pctx).NumRecords(); extra > 0 {
		t.Errorf("%d more records on %s than the 4 replays", extra, events)
	}
}

// TestDLQReplayOpensALetterSealedUnderAMembersKey: a dead letter of a
// member topic's record is sealed under the member's data key (shredded
// with the member); `dlq replay` finds the key in the key store and
// re-publishes the original. Before, it said "no key store" and replayed
// nothing (exit 0).
func TestDLQReplayOpensALetterSealedUnderAMembersKey(t *testing.T) {
	ctx := onPlatform(t, 3*time.Minute)
	pool := platformPool(t, ctx)
	member := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(ctx, pool, member, clocktest.Start()); err != nil {
		t.Fatal(err)
	}
	pii, err := identity.NewPII(identity.KeyConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pii.UseKeyStore(pool)
	events, letters := os.Getenv("MC_TOPIC_MEMBER_EVENTS"), os.Getenv("MC_TOPIC_DLQ")
	src := &kgo.Record{Topic: events, Partition: 0, Offset: 7, Key: []byte(member.String()), Value: []byte("a member event")}
	letter := dlq.Record(letters, "members", src, errors.New("refused"), clocktest.Start(), dlq.SealerFor(ctx, pii, src))
	if l := dlq.Parse(letter); !l.Sealed || l.SealedKeyID != identity.MemberKeyID(member) {
		t.Fatalf("the letter is sealed under %q (sealed %v); want the member's key %q", l.SealedKeyID, l.Sealed, identity.MemberKeyID(member))
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(os.Getenv("MC_KAFKA_BROKERS"), ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, letter).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var out, log bytes.Buffer
	if err := Execute(ctx, []string{"dlq", "replay", "--since", "1h"}, &out, &log); err != nil {
		t.Fatalf("dlq replay: %v\n%s", err, log.String())
	}
	if !strings.Contains(out.String(), "replayed 1,") || !strings.Contains(out.String(), "0 that cannot be replayed") {
		t.Fatalf("dlq replay said:\n%s\nwant the letter replayed", out.String())
	}
	back, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(os.Getenv("MC_KAFKA_BROKERS"), ",")...),
		kgo.ConsumeTopics(events), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	for {
		fs := back.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal("the replayed original did not reach", events)
		}
		for _, r := range fs.Records() {
			if string(r.Value) == "a member event" && string(r.Key) == member.String() {
				return
			}
		}
	}
}
