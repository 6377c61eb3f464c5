package profile_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity/identitytest"
	"github.com/membercenter/membercenter/services/profile"
	"github.com/membercenter/membercenter/services/tags"
)

type fixture struct {
	pool *pgxpool.Pool
	tags *tags.Service
	svc  *profile.Service
	srv  *profile.Server
}

func newFixture(t testing.TB) fixture {
	t.Helper()
	pool := pgtest.NewPool(t, nil)
	ts := tags.New(pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	svc := profile.New(pool, ts, changes.Writer{})
	svc.SetAttributes(attributes.Default(), identitytest.Keys(t, pool))
	return fixture{pool: pool, tags: ts, svc: svc, srv: profile.NewServer(svc)}
}

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func (f fixture) member(t testing.TB) string {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(context.Background(), f.pool, id, time.Now()); err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// getProfile calls GetProfile and returns its answer as a client receives
// it: marshalled and unmarshalled (the server sends the stored labels as
// they are, so only the wire form holds them as labels).
func (f fixture) getProfile(t testing.TB, c context.Context, member string) (*mcv1.GetProfileResponse, error) {
	t.Helper()
	resp, err := f.srv.GetProfile(c, &mcv1.GetProfileRequest{MemberId: member})
	if err != nil {
		return nil, err
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	got := &mcv1.GetProfileResponse{}
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatal(err)
	}
	return got, nil
}

// counts are what a refused request must leave alone.
func (f fixture) counts(t *testing.T) [4]int {
	t.Helper()
	var c [4]int
	if err := f.pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM member_consents),
		(SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM members WHERE attributes <> '{}'::jsonb)`).Scan(&c[0], &c[1], &c[2], &c[3]); err != nil {
		t.Fatal(err)
	}
	return c
}

func labelMap(p *mcv1.Profile) map[string]string {
	out := map[string]string{}
	for _, l := range p.GetLabels() {
		switch v := l.GetValue().(type) {
		case *mcv1.LabelValue_BoolValue:
			out[l.GetLabelId()] = map[bool]string{true: "true", false: "false"}[v.BoolValue]
		case *mcv1.LabelValue_EnumValue:
			out[l.GetLabelId()] = v.EnumValue
		case *mcv1.LabelValue_NumberValue:
			out[l.GetLabelId()] = tags.FormatValue(v.NumberValue)
		}
	}
	return out
}

func TestUpdateAttributesRecomputesDemographicLabels(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	req := &mcv1.UpdateAttributesRequest{MemberId: m, Attributes: map[string]string{"birth_date": "1990-05-01", "gender": "F", "city": "Beijing"}, IdempotencyKey: "k1"}
	resp, err := f.srv.UpdateAttributes(c, req)
	if err != nil {
		t.Fatal(err)
	}
	p := resp.GetProfile()
	if p.GetAttributes()["city"] != "Beijing" {
		t.Errorf("attributes %v", p.GetAttributes())
	}
	demo := 0
	for _, l := range p.GetLabels() {
		if lab := f.tags.Catalog().Label(l.GetLabelId()); lab != nil && lab.Group == "demographics" {
			demo++
		}
	}
	if demo < 3 {
		t.Errorf("%d demographic labels after setting birth date, gender and city: %v", demo, labelMap(p))
	}
	// A retry with the same key answers the same and changes nothing.
	before := f.counts(t)
	again, err := f.srv.UpdateAttributes(c, req)
	if err != nil {
		t.Fatal(err)
	}
	if again.GetProfile().GetSequence() != p.GetSequence() || f.counts(t) != before {
		t.Errorf("retry changed something: sequence %d → %d, rows %v → %v", p.GetSequence(), again.GetProfile().GetSequence(), before, f.counts(t))
	}
	got, err := f.getProfile(t, c, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetProfile().GetLabels()) != len(p.GetLabels()) || got.GetProfile().GetTier() == "" {
		t.Errorf("GetProfile labels %d (update said %d), tier %q", len(got.GetProfile().GetLabels()), len(p.GetLabels()), got.GetProfile().GetTier())
	}
}

func TestBadProfileRequestsChangeNothing(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	before := f.counts(t)
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"birth date not a date", func() error {
			_, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, Attributes: map[string]string{"birth_date": "01/05/1990"}, IdempotencyKey: "b1"})
			return err
		}, "attributes[birth_date]"},
		{"birth date in the future", func() error {
			_, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, Attributes: map[string]string{"birth_date": "2999-01-01"}, IdempotencyKey: "b2"})
			return err
		}, "in the future"},
		{"unknown consent purpose", func() error {
			_, err := f.srv.SetConsent(c, &mcv1.SetConsentRequest{MemberId: m, Purpose: mcv1.ConsentPurpose(42), IdempotencyKey: "c1"})
			return err
		}, "purpose"},
		{"unknown member", func() error {
			_, err := f.srv.SetConsent(c, &mcv1.SetConsentRequest{MemberId: uuid.NewString(), Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING, IdempotencyKey: "c2"})
			return err
		}, "not found"},
		{"segment with an unknown label", func() error {
			_, err := f.srv.CountSegment(c, &mcv1.CountSegmentRequest{Expression: "lifecycle_stage == \"loyal\" && spend_30dd > 10",
				Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING})
			if status.Code(err) != codes.InvalidArgument {
				return errors.New("not InvalidArgument: " + err.Error())
			}
			return err
		}, `1:31: unknown label "spend_30dd"`},
		{"segment without a purpose", func() error {
			_, err := f.srv.CountSegment(c, &mcv1.CountSegmentRequest{Expression: "lifecycle_stage == \"loyal\""})
			if status.Code(err) != codes.InvalidArgument {
				return errors.New("not InvalidArgument: " + err.Error())
			}
			return err
		}, "what the segment is for is required"},
		{"segment for an unknown purpose", func() error {
			_, err := f.srv.CountSegment(c, &mcv1.CountSegmentRequest{Expression: "lifecycle_stage == \"loyal\"", Purpose: mcv1.ConsentPurpose(42)})
			if status.Code(err) != codes.InvalidArgument {
				return errors.New("not InvalidArgument: " + err.Error())
			}
			return err
		}, "purpose"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if after := f.counts(t); after != before {
		t.Errorf("refused requests changed rows: %v → %v", before, after)
	}
}

func TestWithdrawingProfilingConsentWithholdsBehaviouralLabels(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	if _, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, Attributes: map[string]string{"birth_date": "1990-05-01"}, IdempotencyKey: "a"}); err != nil {
		t.Fatal(err)
	}
	ev := &mcv1.MemberEvent{EventId: "e1", MemberId: m, Channel: mcv1.Channel_CHANNEL_POS, OccurredAt: timestampNow(),
		Payload: &mcv1.MemberEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O1", Total: &mcv1.Money{Currency: "CNY", AmountMinor: 9900}}}}
	if err := f.tags.Apply(c, ev); err != nil {
		t.Fatal(err)
	}
	behavioural := func() (b, d int) {
		p, err := f.getProfile(t, c, m)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range p.GetProfile().GetLabels() {
			if f.tags.Catalog().Label(l.GetLabelId()).IsBehavioural() {
				b++
			} else {
				d++
			}
		}
		return b, d
	}
	if b, _ := behavioural(); b == 0 {
		t.Fatal("no behavioural labels after a purchase")
	}
	resp, err := f.srv.SetConsent(c, &mcv1.SetConsentRequest{MemberId: m, Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING, Granted: false, IdempotencyKey: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetConsent().GetGranted() {
		t.Fatal("consent still granted")
	}
	if b, d := behavioural(); b != 0 || d == 0 {
		t.Errorf("after withdrawal: %d behavioural, %d demographic labels; want 0 and some", b, d)
	}
	if _, err := f.srv.SetConsent(c, &mcv1.SetConsentRequest{MemberId: m, Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING, Granted: true, IdempotencyKey: "g"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := behavioural(); b == 0 {
		t.Error("behavioural labels did not come back with consent")
	}
}

func timestampNow() *timestamppb.Timestamp { return timestamppb.New(time.Now().Add(-time.Minute)) }

// TestGetProfileSendsTheStoredLabels: GetProfile's answer, as a client
// reads it, is the profile Get returns, every label included with its
// value (the labels go out in their stored encoding, not decoded and
// encoded again); a profile whose stored labels do not decode is an error,
// not a profile without labels.
func TestGetProfileSendsTheStoredLabels(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	ev := &mcv1.MemberEvent{EventId: "e1", MemberId: m, Channel: mcv1.Channel_CHANNEL_POS, OccurredAt: timestampNow(),
		Payload: &mcv1.MemberEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O1", Total: &mcv1.Money{Currency: "CNY", AmountMinor: 9900}}}}
	if err := f.tags.Apply(c, ev); err != nil {
		t.Fatal(err)
	}
	want, err := f.svc.Get(c, uuid.MustParse(m))
	if err != nil {
		t.Fatal(err)
	}
	if len(want.GetLabels()) < 100 {
		t.Fatalf("Get: %d labels; want the catalogue's", len(want.GetLabels()))
	}
	got, err := f.getProfile(t, c, m)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.GetProfile(), want) {
		t.Fatalf("GetProfile as sent:\n%v\nGet:\n%v", got.GetProfile(), want)
	}

	if _, err := f.pool.Exec(c, `UPDATE member_features SET labels_pb = '\x0a05ffffffff'::bytea WHERE member_id = $1`, m); err != nil {
		t.Fatal(err)
	}
	if resp, err := f.getProfile(t, c, m); err == nil {
		t.Fatalf("GetProfile with undecodable stored labels: %d labels, no error", len(resp.GetProfile().GetLabels()))
	}
}

// A consent or attribute change that found the member just before its
// erasure committed waits for the erasure's row lock and is then NotFound:
// it neither writes a consent, attributes or a change for the erased member
// (a ConsentChanged after MemberErased on the stream) nor fails Internal
// sealing under a shredded key.
func TestWritesWaitingOnAnErasureAreNotFound(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	id := uuid.MustParse(m)
	tx, err := f.pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(c) //nolint:errcheck // committed below
	if _, err := postgres.LockErasable(c, tx, id); err != nil {
		t.Fatal(err)
	}
	// As EraseMember does: the data key shredded (in the key store, at
	// once), then the rows, committed after.
	if _, err := identitytest.Keys(t, f.pool).Shred(c, []uuid.UUID{id}, clocktest.Start()); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.EraseMembers(c, tx, []uuid.UUID{id}); err != nil {
		t.Fatal(err)
	}
	for _, err := range f.writesWaitingOn(t, c, tx, "the erasure", m, map[string]string{"name": "Wang Wu", "city": "Suzhou"}) {
		if !errors.Is(err, postgres.ErrNotFound) {
			t.Errorf("a write that waited on the erasure: %v; want not found", err)
		}
	}
	left := pgtest.Values[string](t, c, f.pool, `SELECT 'consents' FROM member_consents WHERE member_id = $1
		UNION ALL SELECT 'attributes' FROM members WHERE member_id = $1 AND attributes <> '{}'::jsonb
		UNION ALL SELECT 'outbox' FROM outbox WHERE member_id = $1`, id)
	if len(left) != 0 {
		t.Errorf("the erased member has %v", left)
	}
}

// TestConsentAndAttributesRacingAMergeGoToTheSurvivor: SetConsent and
// UpdateAttributes of a member that a merge absorbs while they wait for its
// lock follow it to the survivor: the consent and the attributes are the
// survivor's, and nothing is written to the absorbed member. Before, they
// were written to the absorbed member, whose consent no one reads.
func TestConsentAndAttributesRacingAMergeGoToTheSurvivor(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	absorbed, survivor := f.member(t), f.member(t)
	tx := f.holdMerge(t, c, absorbed, survivor)
	for _, err := range f.writesWaitingOn(t, c, tx, "the merge", absorbed, map[string]string{"city": "Suzhou"}) {
		if err != nil {
			t.Errorf("a write that waited on the merge: %v", err)
		}
	}
	f.checkWrittenTo(t, c, survivor, "the survivor's")
}

// checkWrittenTo checks that the consent and the city writesWaitingOn
// made are member's, and no other member's.
func (f fixture) checkWrittenTo(t *testing.T, c context.Context, member, whose string) {
	t.Helper()
	got := pgtest.Values[string](t, c, f.pool, `SELECT 'consent of ' || member_id FROM member_consents
		UNION ALL SELECT 'city of ' || member_id FROM members WHERE attributes ? 'city'`)
	want := []string{"consent of " + member, "city of " + member}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("written: %v; want %v (%s)", got, want, whose)
	}
}

// waitLockWaiters waits until n sessions of pool's database wait for a
// lock.
func waitLockWaiters(t *testing.T, c context.Context, pool *pgxpool.Pool, what string, n int) {
	t.Helper()
	pgtest.Eventually(t, what, func() (bool, error) {
		got, err := pgtest.LockWaiters(c, pool)
		return got == n, err
	})
}

// TestAnErasureRacingAMergeErasesTheSurvivor: an erasure of a member that
// a merge absorbs while the erasure waits for its lock follows it to the
// survivor, which holds the person's data now, and erases it (with the
// absorbed member). Before, it answered NotFound and erased nothing.
func TestAnErasureRacingAMergeErasesTheSurvivor(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	absorbed, survivor := f.member(t), f.member(t)
	tx := f.holdMerge(t, c, absorbed, survivor)
	type answer struct {
		resp *mcv1.EraseMemberResponse
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := f.srv.EraseMember(c, &mcv1.EraseMemberRequest{MemberId: absorbed, Reason: "DSR-1", IdempotencyKey: "racing-erase"})
		done <- answer{resp, err}
	}()
	waitLockWaiters(t, c, f.pool, "the erasure waits for the merge's lock", 1)
	if err := tx.Commit(c); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.err != nil || a.resp.GetMemberId() != survivor || !slices.Equal(a.resp.GetMergedMemberIds(), []string{absorbed}) {
		t.Fatalf("an erasure that waited on the merge: %v, %v; want the survivor %s erased with %s", a.resp, a.err, survivor, absorbed)
	}
	if st := pgtest.Values[string](t, c, f.pool, `SELECT status FROM members WHERE member_id = $1`, survivor); st[0] != "erased" {
		t.Errorf("the survivor is %s, want erased", st[0])
	}
}

// holdMerge is a transaction that has done to absorbed's row what a merge
// into survivor does, holding its lock until the caller commits it.
func (f fixture) holdMerge(t *testing.T, c context.Context, absorbed, survivor string) pgx.Tx {
	t.Helper()
	tx, err := f.pool.Begin(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) }) // committed by the test
	if _, err := tx.Exec(c, `UPDATE members SET status = 'merged', merged_into = $2 WHERE member_id = $1`, absorbed, survivor); err != nil {
		t.Fatal(err)
	}
	return tx
}

// writesWaitingOn makes a SetConsent and an UpdateAttributes (attrs) of
// member while tx (what) holds the member's lock, waits until both wait for
// it, commits tx and returns both calls' errors.
func (f fixture) writesWaitingOn(t *testing.T, c context.Context, tx pgx.Tx, what, member string, attrs map[string]string) []error {
	t.Helper()
	errs := make(chan error, 2)
	go func() {
		_, err := f.srv.SetConsent(c, &mcv1.SetConsentRequest{MemberId: member, Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING,
			Granted: true, IdempotencyKey: "racing-consent"})
		errs <- err
	}()
	go func() {
		_, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: member, IdempotencyKey: "racing-attrs", Attributes: attrs})
		errs <- err
	}()
	waitLockWaiters(t, c, f.pool, "both calls wait for "+what+"'s lock", 2)
	if err := tx.Commit(c); err != nil {
		t.Fatal(err)
	}
	return []error{<-errs, <-errs}
}
