package profile_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/fault"
)

// holdUnmerge starts an unmerge of requester, merged into other (committed
// first), as the identity service runs one: it holds both members' rows
// and has made requester a member of its own again, uncommitted. The test
// commits it.
func (f fixture) holdUnmerge(t *testing.T, c context.Context, requester, other string) pgx.Tx {
	t.Helper()
	if _, err := f.pool.Exec(c, `UPDATE members SET status = 'merged', merged_into = $2 WHERE member_id = $1`, requester, other); err != nil {
		t.Fatal(err)
	}
	tx, err := f.pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) }) // committed by the test
	if _, err := tx.Exec(c, `SELECT 1 FROM members WHERE member_id = ANY($1::uuid[]) ORDER BY member_id FOR NO KEY UPDATE`, []string{requester, other}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(c, `UPDATE members SET status = 'active', merged_into = NULL WHERE member_id = $1`, requester); err != nil {
		t.Fatal(err)
	}
	return tx
}

// eraseWaitingOn asks the erasure of member while tx (an unmerge) holds
// the lock it needs, waits until it waits for it, commits tx and returns
// the erasure's answer.
func (f fixture) eraseWaitingOn(t *testing.T, c context.Context, tx pgx.Tx, member string) (*mcv1.EraseMemberResponse, error) {
	t.Helper()
	type answer struct {
		resp *mcv1.EraseMemberResponse
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := f.srv.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: member, Reason: "DSR-unmerge", IdempotencyKey: "racing-unmerge-erase"})
		done <- answer{resp, err}
	}()
	waitLockWaiters(t, c, f.pool, "the erasure waits for the unmerge's lock", 1)
	if err := tx.Commit(c); err != nil {
		t.Fatal(err)
	}
	a := <-done
	return a.resp, a.err
}

// statusOf is a member's status.
func (f fixture) statusOf(t *testing.T, c context.Context, m string) string {
	t.Helper()
	return pgtest.Values[string](t, c, f.pool, `SELECT status FROM members WHERE member_id = $1`, uuid.MustParse(m))[0]
}

// liveKeys counts the members' data keys not shredded.
func (f fixture) liveKeys(t *testing.T, c context.Context, members ...string) int {
	t.Helper()
	return pgtest.Values[int](t, c, f.pool, `SELECT count(*)::int FROM member_keys WHERE member_id::text = ANY($1) AND wrapped IS NOT NULL`, members)[0]
}

// TestAnErasureRacingAnUnmergeErasesTheRequester: EraseMember of a member
// merged into another when the call starts, which an unmerge separates
// while the erasure waits for the survivor's lock, erases the requester (a
// member of its own again) and leaves the other member — another person
// since the unmerge — as it was, its data key included. Before, the
// erasure followed the requester to the survivor once and erased it, and
// the requester stayed active (found by a black-box probe: Unmerge and
// EraseMember 4 ms apart).
func TestAnErasureRacingAnUnmergeErasesTheRequester(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	requester, other := f.member(t), f.member(t)
	for _, m := range []string{requester, other} {
		if _, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "name-" + m,
			Attributes: map[string]string{"name": "Person " + m[len(m)-4:]}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := f.eraseWaitingOn(t, c, f.holdUnmerge(t, c, requester, other), requester)
	if err != nil || resp.GetMemberId() != requester || len(resp.GetMergedMemberIds()) != 0 {
		t.Fatalf("EraseMember: %v, %v; want the requester erased alone", resp, err)
	}
	if st := f.statusOf(t, c, requester); st != "erased" {
		t.Errorf("the requester is %s", st)
	}
	if st, keys := f.statusOf(t, c, other), f.liveKeys(t, c, other); st != "active" || keys != 1 {
		t.Errorf("the member the unmerge separated is %s with %d data keys; want it active with its key", st, keys)
	}
	if keys := f.liveKeys(t, c, requester); keys != 0 {
		t.Errorf("the requester keeps %d data keys", keys)
	}
}

// TestWritesRacingAnUnmergeStayWithTheirMember: SetConsent and
// UpdateAttributes of a member merged into another, which an unmerge
// separates while they wait for the survivor's lock, write to the member
// named, not to the other (a person it is no longer linked to).
func TestWritesRacingAnUnmergeStayWithTheirMember(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	requester, other := f.member(t), f.member(t)
	tx := f.holdUnmerge(t, c, requester, other)
	for _, err := range f.writesWaitingOn(t, c, tx, "the unmerge", requester, map[string]string{"city": "Suzhou"}) {
		if err != nil {
			t.Errorf("a write that waited on the unmerge: %v", err)
		}
	}
	f.checkWrittenTo(t, c, requester, "the requester's")
}

// TestChangesPendingAtAnErasureAreBlanked: changes of the member still
// waiting for the relay when it is erased go out blanked (in order, so
// the stream stays gap-free), and once published hold nothing of the
// member in the outbox. Before, they went out and stayed as written (the
// attributes, the identifiers' keyed hashes) for the outbox's retention.
func TestChangesPendingAtAnErasureAreBlanked(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	if _, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "attrs-before-erasure",
		Attributes: map[string]string{"name": "Pending Person", "city": "Suzhou"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := f.srv.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: m, Reason: "DSR", IdempotencyKey: "erase-with-pending"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPostgresRows()["outbox_pending"] < 1 {
		t.Errorf("changes blanked: %v; want the attributes' change among them", resp.GetPostgresRows())
	}
	// The relay publishes what was pending: in order, the erasure last.
	var seqs []int64
	for _, p := range pgtest.Values[[]byte](t, c, f.pool, `SELECT o.payload FROM outbox o JOIN outbox_pending USING (outbox_id) ORDER BY o.outbox_id`) {
		var ch mcv1.MemberChange
		if err := proto.Unmarshal(p, &ch); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, int64(ch.GetSequence()))
		if a := ch.GetAttributesChanged(); a != nil && len(a.GetAttributes()) != 0 {
			t.Errorf("change %d goes out with the erased member's attributes %v", ch.GetSequence(), a.GetAttributes())
		}
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Errorf("pending sequences %v; want them gap-free, the erasure's last", seqs)
		}
	}
	tx, err := f.pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := postgres.MarkPublished(c, tx, pgtest.Values[int64](t, c, f.pool, `SELECT outbox_id FROM outbox_pending`)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(c); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"Suzhou", "Pending Person"} {
		if n := pgtest.Values[int](t, c, f.pool, `SELECT count(*)::int FROM outbox WHERE member_id = $1 AND position(convert_to($2, 'UTF8') IN payload) > 0`,
			uuid.MustParse(m), s)[0]; n != 0 {
			t.Errorf("the erased member's published outbox holds %q in %d changes", s, n)
		}
	}
}

// failOn makes statements on table fail (a trigger raising an error)
// until the returned function is called.
func (f fixture) failOn(t *testing.T, c context.Context, table, ops string) func() {
	t.Helper()
	for _, q := range []string{
		`CREATE OR REPLACE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$`,
		`CREATE TRIGGER test_fail BEFORE ` + ops + ` ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION test_fail()`,
	} {
		if _, err := f.pool.Exec(c, q); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		if _, err := f.pool.Exec(c, `DROP TRIGGER test_fail ON `+table); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAFailedErasureShredsNoKey: an erasure whose transaction fails leaves
// the member as it was, its data key included, so its data is readable;
// the erasure asked again erases it. Before, the keys were shredded first,
// in the key store, and stayed shredded: a failed or retried attempt
// (one that found other members, after an unmerge) left members it did
// not erase with their data unreadable.
func TestAFailedErasureShredsNoKey(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	if _, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "name",
		Attributes: map[string]string{"name": "Kept Readable"}}); err != nil {
		t.Fatal(err)
	}
	allow := f.failOn(t, c, "operator_audit", "INSERT")
	req := &mcv1.EraseMemberRequest{MemberId: m, Reason: "DSR", IdempotencyKey: "erase-failing"}
	if _, err := f.srv.EraseMember(c, req); err == nil {
		t.Fatal("the erasure succeeded although its audit record could not be written")
	}
	if st, keys := f.statusOf(t, c, m), f.liveKeys(t, c, m); st != "active" || keys != 1 {
		t.Fatalf("after a failed erasure the member is %s with %d data keys; want it active with its key", st, keys)
	}
	p, err := f.getProfile(t, c, m)
	if err != nil || p.GetProfile().GetAttributes()["name"] == "" {
		t.Errorf("the member's profile after a failed erasure: %v, %v; want its name readable", p, err)
	}
	allow()
	if _, err := f.srv.EraseMember(c, req); err != nil {
		t.Fatal(err)
	}
	if st, keys := f.statusOf(t, c, m), f.liveKeys(t, c, m); st != "erased" || keys != 0 {
		t.Errorf("after the erasure asked again the member is %s with %d data keys", st, keys)
	}
}

// TestKeysAnErasureLeftQueuedAreShredded: when the data keys cannot be
// shredded after the erasure committed (the key store down, the process
// ended), the call answers Unavailable, the keys stay queued, and they are
// shredded when the erasure is asked again — or by the sweep every serve
// process runs, for an erasure no one asks again.
func TestKeysAnErasureLeftQueuedAreShredded(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	a, b := f.member(t), f.member(t)
	for _, m := range []string{a, b} {
		if _, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "name-" + m,
			Attributes: map[string]string{"name": "Person " + m[len(m)-4:]}}); err != nil {
			t.Fatal(err)
		}
	}
	allow := f.failOn(t, c, "member_keys", "UPDATE OR INSERT")
	for _, m := range []string{a, b} {
		_, err := f.srv.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: m, Reason: "DSR", IdempotencyKey: "erase-" + m})
		if !fault.IsTransient(err) {
			t.Errorf("EraseMember with the key store refusing: %v; want a transient error (Unavailable)", err)
		}
		if st, keys := f.statusOf(t, c, m), f.liveKeys(t, c, m); st != "erased" || keys != 1 {
			t.Errorf("the member is %s with %d data keys; want it erased with its key queued", st, keys)
		}
	}
	allow()
	// a: asked again, with the same key: the recorded answer, and the key shredded.
	if resp, err := f.srv.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: a, Reason: "DSR", IdempotencyKey: "erase-" + a}); err != nil ||
		resp.GetMemberId() != a || f.liveKeys(t, c, a) != 0 {
		t.Errorf("the erasure of a asked again: %v, %v, %d keys left", resp, err, f.liveKeys(t, c, a))
	}
	// b: by the sweep.
	ctx, cancel := context.WithCancel(c)
	done := make(chan error, 1)
	go func() { done <- f.svc.RunKeyShreds(ctx, slog.New(slog.DiscardHandler), 10*time.Millisecond) }()
	pgtest.Eventually(t, "the sweep shreds b's key", func() (bool, error) {
		n := pgtest.Values[int](t, c, f.pool, `SELECT count(*)::int FROM member_key_shreds`)[0]
		return n == 0 && f.liveKeys(t, c, b) == 0, nil
	})
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("RunKeyShreds: %v", err)
	}
}

// TestAnErasureRacingAnUnmergeAndTheSurvivorsErasure: when the survivor
// an erasure waits for is unmerged from the requester and erased itself
// meanwhile, the erasure of the requester erases the requester; before,
// it answered NotFound (the survivor's state), and the requester stayed.
func TestAnErasureRacingAnUnmergeAndTheSurvivorsErasure(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	requester, other := f.member(t), f.member(t)
	tx := f.holdUnmerge(t, c, requester, other)
	if _, err := tx.Exec(c, `UPDATE members SET status = 'erased' WHERE member_id = $1`, other); err != nil {
		t.Fatal(err)
	}
	if _, err := f.eraseWaitingOn(t, c, tx, requester); err != nil {
		t.Fatalf("EraseMember of the requester: %v", err)
	}
	if st := f.statusOf(t, c, requester); st != "erased" {
		t.Errorf("the requester is %s", st)
	}
}
