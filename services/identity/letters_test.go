package identity_test

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/identity/identitytest"
)

// A dead letter of a member's record (the member topics are keyed by
// member id) is sealed under the member's data key: it opens with the
// platform's keys until the member is erased, and never after — nor does
// one written after the erasure (an event in flight); a letter of a record
// keyed otherwise (a channel event keyed by a phone) stays under the
// platform key.
func TestDeadLettersOfAMemberAreShreddedWithIt(t *testing.T) {
	ctx := ctxT(t)
	pool := pgtest.NewPool(t, nil)
	at := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	keys := identitytest.Keys(t, pool)
	member := uuid.Must(uuid.NewV7())
	letter := func(key string, offset int64) dlq.Letter {
		src := &kgo.Record{Topic: "member.events.v1", Partition: 1, Offset: offset, Key: []byte(key), Value: []byte("payload of " + key)}
		return dlq.Parse(dlq.Record("dlq.v1", "benefits", src, errors.New("refused"), at, dlq.SealerFor(ctx, keys, src)))
	}
	before, byPhone := letter(member.String(), 1), letter("13811112222", 2)
	if before.SealedKeyID != identity.MemberKeyID(member) || identity.IsMemberKey(byPhone.SealedKeyID) {
		t.Fatalf("sealed under %q and %q; want the member's key and a platform key", before.SealedKeyID, byPhone.SealedKeyID)
	}
	opened := before
	if err := opened.Open(keys); err != nil || string(opened.Record.Value) != "payload of "+member.String() {
		t.Fatalf("the member's letter before the erasure: %v %q", err, opened.Record.Value)
	}
	if _, err := keys.Shred(ctx, []uuid.UUID{member}, at); err != nil {
		t.Fatal(err)
	}
	after := letter(member.String(), 3)
	for _, l := range []dlq.Letter{before, after} {
		fresh := identitytest.Keys(t, pool)
		for _, k := range []*identity.PII{keys, fresh} {
			if err := l.Open(k); !errors.Is(err, postgres.ErrKeyShredded) {
				t.Errorf("letter @%d of the erased member: %v; want it unreadable", l.Offset, err)
			}
		}
	}
	if err := byPhone.Open(keys); err != nil || string(byPhone.Record.Value) != "payload of 13811112222" {
		t.Errorf("the letter keyed by a phone: %v %q", err, byPhone.Record.Value)
	}
}
