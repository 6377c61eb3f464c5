package profile_test

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
)

// TestAnExportRacingAnErasureIsNotAnInternalError: ExportMemberData reads
// the member's rows in one repeatable-read snapshot and then opens their
// ciphertexts; an EraseMember that commits and shreds the member's data key
// in between makes the export fail with ErrKeyShredded, which the API
// answers Internal ("internal error"). The member is gone: the answer
// should be NotFound (or Unavailable, to retry into NotFound), as "every
// API answers NotFound for the member's ids" after an erasure. Found by a
// black-box probe: ExportMemberData and EraseMember sent 0-20 ms
// apart answered Internal in 24 of 30 runs, logging "export
// member_identifiers: value_cipher: decrypt: ... the member's data key was
// shredded".
func TestAnExportRacingAnErasureIsNotAnInternalError(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	ch, _ := chtest.NewDB(t)
	f.svc.SetFacts(ch)
	ids, err := identity.New(identity.Config{DefaultRegion: "CN"}, f.pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		r, err := ids.Resolve(c, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_APP, CreateIfMissing: true,
			IdempotencyKey: fmt.Sprintf("race-%d", i), Identifiers: []*mcv1.Identifier{
				{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: fmt.Sprintf("+86137123456%02d", i)}}})
		if err != nil {
			t.Fatal(err)
		}
		m := r.GetMemberId()
		exported := make(chan error, 1)
		go func() {
			_, err := f.srv.ExportMemberData(c, &mcv1.ExportMemberDataRequest{MemberId: m})
			exported <- err
		}()
		if _, err := f.srv.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: m, Reason: "request",
			IdempotencyKey: fmt.Sprintf("erase-%d", i)}); err != nil {
			t.Fatal(err)
		}
		if err := <-exported; err != nil && !errors.Is(err, postgres.ErrNotFound) {
			t.Fatalf("run %d: an export racing the erasure answered %v; want the document or NotFound", i, err)
		}
	}
}
