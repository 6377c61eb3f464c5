package identity_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/identity/identitytest"
)

// authEpoch is 5 s into a 30 s step, so ±N s stays clear of step edges.
var authEpoch = time.Unix(1_700_000_010+5, 0).UTC()

type authFixture struct {
	svc   *identity.Service
	srv   *identity.Server
	pool  *pgxpool.Pool
	clock *clocktest.Clock // stands still; the auth tests move it by hand
}

func newAuthFixture(t *testing.T) authFixture {
	t.Helper()
	pool := pgtest.NewPool(t, nil)
	svc := identitytest.New(t, pool)
	clock := clocktest.Frozen(authEpoch)
	svc.SetClock(clock.Now)
	return authFixture{svc: svc, srv: identity.NewServer(svc), pool: pool, clock: clock}
}

// beginAuth opens a test: its auth fixture and the context of its calls.
func beginAuth(t *testing.T) (authFixture, context.Context) { return newAuthFixture(t), ctxT(t) }

// newMember creates a member the way a channel would: by resolving a phone
// number with create_if_missing.
func (f authFixture) newMember(t *testing.T, e164 string) uuid.UUID {
	t.Helper()
	resp, err := f.svc.Resolve(ctxT(t), &mcv1.ResolveRequest{
		Identifiers:     []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: e164}},
		Channel:         mcv1.Channel_CHANNEL_APP,
		CreateIfMissing: true,
		IdempotencyKey:  "create-" + e164,
	})
	if err != nil {
		t.Fatalf("create member %s: %v", e164, err)
	}
	if !resp.GetCreated() {
		t.Fatalf("member %s was not created: %v", e164, resp)
	}
	return uuid.MustParse(resp.GetMemberId())
}

func (f authFixture) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	if err := f.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// markMerged records member as merged into target, as a merge leaves it.
func (f authFixture) markMerged(t *testing.T, member, target uuid.UUID) {
	t.Helper()
	if _, err := f.pool.Exec(ctxT(t), `UPDATE members SET status = 'merged', merged_into = $2 WHERE member_id = $1`, member, target); err != nil {
		t.Fatal(err)
	}
}

// mergedMember is a new member recorded as merged into target.
func (f authFixture) mergedMember(t *testing.T, e164 string, target uuid.UUID) uuid.UUID {
	t.Helper()
	m := f.newMember(t, e164)
	f.markMerged(t, m, target)
	return m
}

// wantCount fails the test at once unless table holds want rows; msg
// formats the count it holds.
func (f authFixture) wantCount(t *testing.T, table string, want int, msg string) {
	t.Helper()
	if n := f.count(t, table); n != want {
		t.Fatalf(msg, n)
	}
}

func (f authFixture) memberNo(t *testing.T, id uuid.UUID) int64 {
	t.Helper()
	var no int64
	if err := f.pool.QueryRow(context.Background(), `SELECT member_no FROM members WHERE member_id = $1`, id).Scan(&no); err != nil {
		t.Fatal(err)
	}
	return no
}

func (f authFixture) issue(t *testing.T, id uuid.UUID, at time.Time) identity.MemberCode {
	t.Helper()
	f.clock.Set(at)
	c, err := f.svc.IssueMemberCode(ctxT(t), id)
	if err != nil {
		t.Fatalf("issue code: %v", err)
	}
	return c
}

// memberWithCode creates a member (newMember) and issues it a code at
// authEpoch.
func (f authFixture) memberWithCode(t *testing.T, e164 string) (uuid.UUID, identity.MemberCode) {
	t.Helper()
	member := f.newMember(t, e164)
	return member, f.issue(t, member, authEpoch)
}

func (f authFixture) verify(t *testing.T, code string, at time.Time) (uuid.UUID, error) {
	t.Helper()
	f.clock.Set(at)
	return f.svc.VerifyMemberCode(ctxT(t), code, identity.CodeUse{StoreID: "SH-001", TerminalID: "POS-01"})
}

// wantAccepted fails the test at once unless code, scanned at at, is
// accepted as member's; what names the scan.
func (f authFixture) wantAccepted(t *testing.T, code string, at time.Time, member uuid.UUID, what string) {
	t.Helper()
	if id, err := f.verify(t, code, at); err != nil || id != member {
		t.Fatalf("%s: %v, %v; want %s", what, id, err, member)
	}
}

func TestMemberCodeRoundTrip(t *testing.T) {
	f, ctx := beginAuth(t)
	first := f.newMember(t, "+8613900000001")
	member := f.newMember(t, "+8613900000002")
	if a, b := f.memberNo(t, first), f.memberNo(t, member); a < 1 || b <= a {
		t.Fatalf("member numbers %d, %d: want positive and increasing", a, b)
	}

	// Numeric form, through the gRPC adapter.
	resp, err := f.srv.IssueMemberCode(ctx, &mcv1.IssueMemberCodeRequest{MemberId: member.String()})
	if err != nil {
		t.Fatal(err)
	}
	wantPrefix := fmt.Sprintf("%010d", f.memberNo(t, member))
	if len(resp.GetCode()) != 16 || !strings.HasPrefix(resp.GetCode(), wantPrefix) {
		t.Fatalf("code %q: want 16 digits starting with the member number %s", resp.GetCode(), wantPrefix)
	}
	if resp.GetQrPayload() != "MC1:"+resp.GetCode() {
		t.Fatalf("QR payload %q, want MC1: + %q", resp.GetQrPayload(), resp.GetCode())
	}
	stepEnd := time.Unix((authEpoch.Unix()/30+1)*30, 0)
	if got := resp.GetExpiresAt().AsTime(); !got.Equal(stepEnd) {
		t.Fatalf("expires_at %s, want the end of the step %s", got, stepEnd)
	}
	// Issuing again within the step gives the same code (one secret).
	if again := f.issue(t, member, authEpoch.Add(20*time.Second)); again.Code != resp.GetCode() {
		t.Fatalf("second issue in the same step gave %q, want %q", again.Code, resp.GetCode())
	}
	got, err := f.srv.VerifyMemberCode(ctx, &mcv1.VerifyMemberCodeRequest{Code: resp.GetCode(), StoreId: "SH-001", TerminalId: "POS-01"})
	if err != nil {
		t.Fatalf("verify numeric code: %v", err)
	}
	if got.GetMember().GetMemberId() != member.String() {
		t.Fatalf("verified member %s, want %s", got.GetMember().GetMemberId(), member)
	}

	// QR form, a step later.
	next := f.issue(t, member, authEpoch.Add(30*time.Second))
	if next.Code == resp.GetCode() {
		t.Fatal("the code did not change with the step")
	}
	f.wantAccepted(t, next.QRPayload, authEpoch.Add(31*time.Second), member, "verify QR payload")

	// The secret is stored encrypted (12-byte nonce + 32 + 16-byte tag) and
	// each use is recorded with where it happened.
	var cipher []byte
	var keyID string
	if err := f.pool.QueryRow(ctx, `SELECT secret_cipher, key_id FROM member_code_secrets WHERE member_id = $1`, member).Scan(&cipher, &keyID); err != nil {
		t.Fatal(err)
	}
	if len(cipher) != 12+32+16 || keyID != identity.MemberKeyID(member) {
		t.Fatalf("stored secret: %d bytes under key %q; want an AES-GCM ciphertext of 32 bytes under the member's data key", len(cipher), keyID)
	}
	f.wantCount(t, "member_code_secrets", 1, "%d code secrets, want 1 (only the member that was issued a code)")
	var uses int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM member_code_uses WHERE member_id = $1 AND store_id = 'SH-001' AND terminal_id = 'POS-01'`, member).Scan(&uses); err != nil {
		t.Fatal(err)
	}
	if uses != 2 {
		t.Fatalf("%d recorded uses, want 2", uses)
	}
}

func TestMemberCodeAcceptedOnce(t *testing.T) {
	f := newAuthFixture(t)
	_, c := f.memberWithCode(t, "+8613900000001")
	if _, err := f.verify(t, c.Code, authEpoch.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, form := range []string{c.Code, c.QRPayload} {
		if _, err := f.verify(t, form, authEpoch.Add(2*time.Second)); !errors.Is(err, identity.ErrCodeUsed) {
			t.Fatalf("second use of %q: %v, want ErrCodeUsed", form, err)
		}
	}
	f.wantCount(t, "member_code_uses", 1, "%d code uses, want 1")
}

func TestMemberCodeLaterCodeSpendsEarlier(t *testing.T) {
	f := newAuthFixture(t)
	member := f.newMember(t, "+8613900000001")
	older := f.issue(t, member, authEpoch)
	newer := f.issue(t, member, authEpoch.Add(30*time.Second))
	if _, err := f.verify(t, newer.Code, authEpoch.Add(31*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.verify(t, older.Code, authEpoch.Add(32*time.Second)); !errors.Is(err, identity.ErrCodeUsed) {
		t.Fatalf("code older than an accepted one: %v, want ErrCodeUsed", err)
	}
	f.wantCount(t, "member_code_uses", 1, "%d code uses, want 1")
}

func TestMemberCodeClockSkew(t *testing.T) {
	f := newAuthFixture(t)
	late := f.newMember(t, "+8613900000001")
	early := f.newMember(t, "+8613900000002")

	// Scanned up to one step after its own (the last second of the next step).
	c := f.issue(t, late, authEpoch)
	f.wantAccepted(t, c.Code, authEpoch.Add(54*time.Second), late, "code one step old")
	// The phone's clock is a step ahead of the server's.
	c = f.issue(t, early, authEpoch.Add(30*time.Second))
	f.wantAccepted(t, c.Code, authEpoch, early, "code one step ahead")
}

func TestMemberCodeRefusals(t *testing.T) {
	f, ctx := beginAuth(t)
	member := f.newMember(t, "+8613900000001")
	other := f.newMember(t, "+8613900000002")       // issued a code, valid, but not the one scanned
	neverIssued := f.newMember(t, "+8613900000003") // has a number but no secret
	merged := f.newMember(t, "+8613900000004")
	c := f.issue(t, member, authEpoch)
	f.issue(t, other, authEpoch)
	mergedCode := f.issue(t, merged, authEpoch)
	f.markMerged(t, merged, member)

	num, otp := c.Code[:10], c.Code[10:]
	tamper := func(s string, i int) string { return s[:i] + string('0'+(s[i]-'0'+1)%10) + s[i+1:] }
	cases := []struct {
		name string
		code string
		at   time.Time
	}{
		{"two steps old", c.Code, authEpoch.Add(60 * time.Second)},
		{"two steps ahead", c.Code, authEpoch.Add(-60 * time.Second)},
		{"tampered last digit", num + tamper(otp, 5), authEpoch},
		{"tampered first code digit", num + tamper(otp, 0), authEpoch},
		{"tampered QR", "MC1:" + num + tamper(otp, 3), authEpoch},
		{"code of another member number", fmt.Sprintf("%010d", f.memberNo(t, other)) + otp, authEpoch},
		{"unknown member number", "9999999999" + otp, authEpoch},
		{"member number zero", "0000000000" + otp, authEpoch},
		{"member never issued a code", fmt.Sprintf("%010d", f.memberNo(t, neverIssued)) + otp, authEpoch},
		{"merged member", mergedCode.Code, authEpoch},
		{"too short", c.Code[:15], authEpoch},
		{"too long", c.Code + "0", authEpoch},
		{"letters", num + "12a456", authEpoch},
		{"wrong scheme", "MC2:" + c.Code, authEpoch},
		{"scheme only", "MC1:", authEpoch},
		{"empty", "", authEpoch},
		{"sign", "+" + c.Code[1:], authEpoch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.verify(t, tc.code, tc.at)
			if !errors.Is(err, identity.ErrCodeInvalid) {
				t.Fatalf("verify %q: %v, want ErrCodeInvalid", tc.code, err)
			}
			// The caller learns nothing beyond "invalid or expired".
			if err.Error() != "verify member code: "+identity.ErrCodeInvalid.Error() && err != identity.ErrCodeInvalid {
				t.Fatalf("error %q says more than ErrCodeInvalid", err)
			}
		})
	}
	f.wantCount(t, "member_code_uses", 0, "refused codes wrote %d code uses")
	f.wantCount(t, "member_code_secrets", 3, "%d code secrets, want 3: verification never creates one")
	// Five of the refusals were wrong codes for the member's own number: it is
	// locked now, even for its valid code (TestMemberCodeLockAfterWrongCodes).
	if _, err := f.verify(t, c.Code, authEpoch); !errors.Is(err, identity.ErrCodeLocked) {
		t.Fatalf("valid code after five wrong ones: %v, want ErrCodeLocked", err)
	}
	// Once the failures age out (here: are removed), the valid code is good.
	if _, err := f.pool.Exec(ctx, `DELETE FROM member_code_failures WHERE member_no = $1`, f.memberNo(t, member)); err != nil {
		t.Fatal(err)
	}
	f.wantAccepted(t, c.Code, authEpoch, member, "valid code once the lock is cleared")
}

func TestIssueMemberCodeRefusals(t *testing.T) {
	f, ctx := beginAuth(t)
	target := f.newMember(t, "+8613900000001")
	merged := f.mergedMember(t, "+8613900000002", target)
	if _, err := f.svc.IssueMemberCode(ctx, uuid.Must(uuid.NewV7())); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("unknown member: %v, want ErrNotFound", err)
	}
	if _, err := f.svc.IssueMemberCode(ctx, merged); !errors.Is(err, identity.ErrMemberInactive) {
		t.Fatalf("merged member: %v, want ErrMemberInactive", err)
	}
	if _, err := f.srv.IssueMemberCode(ctx, &mcv1.IssueMemberCodeRequest{MemberId: "not-a-uuid"}); !errors.Is(err, identity.ErrBadID) {
		t.Fatalf("malformed member id: %v, want ErrBadID", err)
	}
	f.wantCount(t, "member_code_secrets", 0, "refused issues wrote %d code secrets")
}

func TestMemberCodeConcurrentScansAcceptOnce(t *testing.T) {
	f := newAuthFixture(t)
	_, c := f.memberWithCode(t, "+8613900000001")
	acceptedOnce(t, 8, "scans", identity.ErrCodeUsed, func(i int) error {
		_, err := f.svc.VerifyMemberCode(ctxT(t), c.Code, identity.CodeUse{TerminalID: fmt.Sprintf("POS-%d", i)})
		return err
	})
	f.wantCount(t, "member_code_uses", 1, "%d code uses, want 1")
}

// A scan that races an acceptance still in flight waits for it and is
// refused: the use row's primary key decides, not the earlier read.
func TestMemberCodeScanRacingUncommittedUse(t *testing.T) {
	f, ctx := beginAuth(t)
	member, c := f.memberWithCode(t, "+8613900000001")
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `INSERT INTO member_code_uses (member_id, step, used_at) VALUES ($1, $2, $3)`,
		member, authEpoch.Unix()/30, authEpoch); err != nil {
		t.Fatal(err)
	}
	const scans = 4
	errs := make(chan error, scans)
	for i := 0; i < scans; i++ {
		go func() {
			_, err := f.svc.VerifyMemberCode(ctx, c.Code, identity.CodeUse{})
			errs <- err
		}()
	}
	// The scans of one process take turns at a member number: the first
	// waits on the uncommitted use's row lock before it commits.
	pgtest.Eventually(t, "a scan to wait on the use's row lock", func() (bool, error) {
		waiting, err := lockWaiters(ctx, f.pool)
		return waiting >= 1, err
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < scans; i++ {
		if err := <-errs; !errors.Is(err, identity.ErrCodeUsed) {
			t.Errorf("scan racing an accepted use: %v, want ErrCodeUsed", err)
		}
	}
	f.wantCount(t, "member_code_uses", 1, "%d code uses, want 1")
}

// Wrong codes lock the member number for a while, even for the right code,
// so six digits cannot be guessed online; the lock lifts after the window.
func TestMemberCodeLockAfterWrongCodes(t *testing.T) {
	f := newAuthFixture(t)
	member, c := f.memberWithCode(t, "+8613900000077")
	wrong := c.Code[:10] + fmt.Sprintf("%06d", (mustAtoi(t, c.Code[10:])+1)%1_000_000)
	for i := 0; i < 5; i++ {
		if _, err := f.verify(t, wrong, authEpoch.Add(time.Duration(i)*time.Second)); !errors.Is(err, identity.ErrCodeInvalid) {
			t.Fatalf("wrong code %d: %v", i, err)
		}
	}
	if _, err := f.verify(t, c.Code, authEpoch.Add(6*time.Second)); !errors.Is(err, identity.ErrCodeLocked) {
		t.Fatalf("right code after five wrong ones: %v, want ErrCodeLocked", err)
	}
	f.wantCount(t, "member_code_uses", 0, "a locked number recorded %d code uses")
	later := authEpoch.Add(6 * time.Minute)
	fresh := f.issue(t, member, later)
	if got, err := f.verify(t, fresh.Code, later.Add(time.Second)); err != nil || got != member {
		t.Fatalf("after the lock window: %v, %v", got, err)
	}
}

// Guesses sent at once are held to the lock too: each counts as a failure
// before its code is checked (a probe sent 60 wrong codes for one number at
// once over one connection and all 60 were checked against the secret). A
// right code takes its failure back.
func TestConcurrentWrongCodesAreHeldToTheLock(t *testing.T) {
	f := newAuthFixture(t)
	_, c := f.memberWithCode(t, "+8613900000088")
	f.clock.Set(authEpoch)
	right := mustAtoi(t, c.Code[10:])
	const guesses = 12 // below the pool size: the fixture keeps data keys on the same pool
	errs := atOnce(guesses, func(i int) error {
		// Far from the right code: none of them can match a step.
		guess := c.Code[:10] + fmt.Sprintf("%06d", (right+500_000+i)%1_000_000)
		_, err := f.svc.VerifyMemberCode(ctxT(t), guess, identity.CodeUse{StoreID: "SH-001", TerminalID: fmt.Sprintf("POS-%d", i)})
		return err
	})
	evaluated, locked := 0, 0
	for _, err := range errs {
		switch {
		case errors.Is(err, identity.ErrCodeInvalid):
			evaluated++
		case errors.Is(err, identity.ErrCodeLocked):
			locked++
		default:
			t.Errorf("concurrent wrong code: %v, want ErrCodeInvalid or ErrCodeLocked", err)
		}
	}
	if evaluated != 5 || locked != guesses-5 {
		t.Fatalf("%d of %d concurrent wrong codes were checked against the secret and %d locked; the lock allows 5 a window",
			evaluated, guesses, locked)
	}
	f.wantCount(t, "member_code_failures", 5, "%d code failures recorded, want the 5 wrong codes checked")

	// A right code, and a replay of it, leave no failure behind.
	other, oc := f.memberWithCode(t, "+8613900000089")
	f.wantAccepted(t, oc.Code, authEpoch, other, "right code")
	if _, err := f.verify(t, oc.Code, authEpoch); !errors.Is(err, identity.ErrCodeUsed) {
		t.Fatalf("replayed code: %v, want ErrCodeUsed", err)
	}
	f.wantCount(t, "member_code_failures", 5, "%d code failures recorded after a right code and its replay, want 5")
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMemberCodeConcurrentFirstIssues: the app and a till ask for a new
// member's first code at the same moment; both get the member's one code
// (the loser of the race for the secret reads the winner's, it used to
// answer NotFound).
func TestMemberCodeConcurrentFirstIssues(t *testing.T) {
	f := newAuthFixture(t)
	f.clock.Set(authEpoch)
	const members, calls = 5, 8
	for m := 0; m < members; m++ {
		member := f.newMember(t, fmt.Sprintf("+86139000001%02d", m))
		codes := make([]string, calls)
		errs := atOnce(calls, func(i int) error {
			c, err := f.svc.IssueMemberCode(ctxT(t), member)
			codes[i] = c.Code
			return err
		})
		var first string
		for i, c := range codes {
			if errs[i] != nil {
				t.Errorf("member %d: concurrent first issue: %v", m, errs[i])
				continue
			}
			if first == "" {
				first = c
			}
			if c != first {
				t.Errorf("member %d: codes %s and %s at the same instant: two secrets", m, first, c)
			}
		}
	}
	if n := f.count(t, "member_code_secrets"); n != members {
		t.Errorf("%d code secrets for %d members", n, members)
	}
}

// acceptedOnce makes n calls at once and checks that exactly one is
// accepted and every other is refused with refusal.
func acceptedOnce(t *testing.T, n int, what string, refusal error, call func(i int) error) {
	t.Helper()
	accepted := 0
	for _, err := range atOnce(n, call) {
		switch {
		case err == nil:
			accepted++
		case !errors.Is(err, refusal):
			t.Errorf("concurrent %s: %v, want nil or %v", what, err, refusal)
		}
	}
	if accepted != 1 {
		t.Fatalf("%d concurrent %s accepted, want 1", accepted, what)
	}
}

// An erasure shreds the member's data key before its transaction commits:
// a code issued or verified meanwhile finds the member active and its key
// shredded, and the member is not found (as it is once the erasure
// commits), not an internal error.
func TestMemberCodesOfAMemberBeingErasedAreNotFound(t *testing.T) {
	f, ctx := beginService(t)
	with := uuid.MustParse(f.resolve(t, "a", phone("13922250001")).GetMemberId())
	without := uuid.MustParse(f.resolve(t, "b", phone("13922250002")).GetMemberId())
	code, err := f.svc.IssueMemberCode(ctx, with) // its secret exists
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.PII().Shred(ctx, []uuid.UUID{with, without}, f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	for _, m := range []uuid.UUID{with, without} {
		if _, err := f.svc.IssueMemberCode(ctx, m); !errors.Is(err, postgres.ErrNotFound) {
			t.Errorf("issue a code of %s, its key shredded: %v; want not found", m, err)
		}
	}
	if _, err := f.svc.VerifyMemberCode(ctx, code.Code, identity.CodeUse{TerminalID: "POS-01"}); !errors.Is(err, identity.ErrCodeInvalid) {
		t.Errorf("verify a code of a member whose key was shredded: %v; want ErrCodeInvalid", err)
	}
}
