package identity

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
)

// Dynamic member codes: RFC 6238 TOTP (HMAC-SHA256) over a per-member
// secret, prefixed with the member's public number so a scanner needs no
// other input. A POS verifies a code once; the app shows a new one every
// CodeStep.
const (
	// CodeStep is how long one code is current.
	CodeStep = 30 * time.Second
	// CodeQRPrefix starts a QR payload; the numeric form follows it.
	CodeQRPrefix = "MC1:"

	codeDigits     = 6
	memberNoDigits = 10
	maxMemberNo    = 9_999_999_999
	// Steps accepted either side of the server's current one, for the
	// clocks of phones and scanners and the time a scan takes.
	codeSkewSteps   = 1
	codeSecretBytes = 32
)

// MemberCode is a member's current dynamic code.
type MemberCode struct {
	// Numeric form for manual entry and barcodes: the member number
	// zero-padded to 10 digits, then the 6 TOTP digits.
	Code string
	// QR payload: CodeQRPrefix + Code.
	QRPayload string
	// End of the code's step; the app should show the next one then.
	ExpiresAt time.Time
}

// SetClock replaces the service's clock. It is for tests and simulations
// only, and must be called before the service handles requests.
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// TOTP returns the 6-digit RFC 6238 code of secret at a time: HMAC-SHA256,
// 30-second steps counted from the Unix epoch.
func TOTP(secret []byte, at time.Time) string { return totp(secret, codeStepAt(at)) }

func codeStepAt(t time.Time) int64 {
	sec := t.Unix()
	step := int64(CodeStep / time.Second)
	if sec < 0 {
		return (sec - step + 1) / step // floor, not truncation
	}
	return sec / step
}

func stepEnd(step int64) time.Time {
	return time.Unix((step+1)*int64(CodeStep/time.Second), 0).UTC()
}

// totp is RFC 4226 HOTP over the step counter, as RFC 6238 defines it.
func totp(secret []byte, step int64) string {
	var counter [8]byte
	binary.BigEndian.PutUint64(counter[:], uint64(step))
	m := hmac.New(sha256.New, secret)
	m.Write(counter[:])
	sum := m.Sum(nil)
	off := sum[len(sum)-1] & 0x0f
	bin := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	return fmt.Sprintf("%0*d", codeDigits, bin%1_000_000)
}

// IssueMemberCode returns the member's current code, creating the member's
// code secret the first time. An unknown member is postgres.ErrNotFound, a
// merged one ErrMemberInactive.
func (s *Service) IssueMemberCode(ctx context.Context, memberID uuid.UUID) (MemberCode, error) {
	now := s.now()
	var code MemberCode
	err := postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		m, err := postgres.GetMemberNo(ctx, tx, memberID)
		if err != nil {
			return err
		}
		if err := erasedNotFound(memberID, m.Status); err != nil {
			return err
		}
		if !activeByNo(m) {
			return fmt.Errorf("%w: %s was merged into %s; issue codes for that member", ErrMemberInactive, memberID, mergedIntoByNo(m))
		}
		if m.MemberNo < 1 || m.MemberNo > maxMemberNo {
			return fmt.Errorf("member %s has number %d, which does not fit %d digits", memberID, m.MemberNo, memberNoDigits)
		}
		secret, err := s.codeSecret(ctx, tx, memberID, now, true)
		if err != nil {
			return err
		}
		step := codeStepAt(now)
		numeric := fmt.Sprintf("%0*d%s", memberNoDigits, m.MemberNo, totp(secret, step))
		code = MemberCode{Code: numeric, QRPayload: CodeQRPrefix + numeric, ExpiresAt: stepEnd(step)}
		return nil
	})
	if err != nil {
		return MemberCode{}, fmt.Errorf("issue member code: %w", err)
	}
	return code, nil
}

// CodeUse says where a code was scanned, for the record of its use.
type CodeUse struct {
	StoreID    string
	TerminalID string
}

// VerifyMemberCode checks a scanned code, in numeric or QR form, and returns
// its member. A code is accepted once, within one step of its own either
// way, and never after a later code of the same member was accepted.
// Refusals are ErrCodeInvalid (malformed, wrong, expired, unknown or merged
// member; the reason is logged, never returned) or ErrCodeUsed.
func (s *Service) VerifyMemberCode(ctx context.Context, code string, at CodeUse) (uuid.UUID, error) {
	memberNo, otp, ok := parseMemberCode(code)
	if !ok {
		return uuid.Nil, s.refuseCode(ctx, 0, "malformed code")
	}
	release, err := s.codeTurns.lock(ctx, memberNo)
	if err != nil {
		return uuid.Nil, fmt.Errorf("verify member code: %w", err)
	}
	defer release()
	now := s.now()
	current := codeStepAt(now)
	// The attempt counts as a failure before its code is checked, so that
	// guesses sent at once are held to the lock too; anything but a wrong
	// code takes it back below.
	attempt := postgres.CodeAttempt{MemberNo: memberNo, At: now, StoreID: at.StoreID, TerminalID: at.TerminalID}
	reserved, failures, err := postgres.ReserveCodeAttempt(ctx, s.pool, attempt, now.Add(-codeLockWindow), codeMaxFailures)
	if err != nil {
		return uuid.Nil, fmt.Errorf("verify member code: %w", err)
	}
	if !reserved {
		s.log.WarnContext(ctx, "member code locked", "member_no", memberNo, "failures", failures)
		return uuid.Nil, ErrCodeLocked
	}
	var member uuid.UUID
	wrong := false
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		m, err := postgres.GetMemberByNo(ctx, tx, memberNo)
		if errors.Is(err, postgres.ErrNotFound) {
			return s.refuseCode(ctx, memberNo, "unknown member number")
		}
		if err != nil {
			return err
		}
		if !activeByNo(m) {
			return s.refuseCode(ctx, memberNo, "member was merged")
		}
		secret, err := s.codeSecret(ctx, tx, m.MemberID, now, false)
		if errors.Is(err, postgres.ErrNotFound) {
			return s.refuseCode(ctx, memberNo, "no code was ever issued to the member")
		}
		if err != nil {
			return err
		}
		step, ok := matchStep(secret, otp, current)
		if !ok {
			wrong = true
			return s.refuseCode(ctx, memberNo, "wrong or expired code")
		}
		// RFC 6238 §5.2: once a code is accepted, earlier ones are spent too.
		last, used, err := postgres.LastCodeStep(ctx, tx, m.MemberID)
		if err != nil {
			return err
		}
		if used && step <= last {
			return s.replayedCode(ctx, memberNo, at)
		}
		inserted, err := postgres.InsertCodeUse(ctx, tx, postgres.CodeUse{
			MemberID: m.MemberID, Step: step, UsedAt: now, StoreID: at.StoreID, TerminalID: at.TerminalID,
		})
		if err != nil {
			return err
		}
		if !inserted {
			return s.replayedCode(ctx, memberNo, at)
		}
		member = m.MemberID
		return nil
	})
	if !wrong {
		// A right code, a replay, a number without a code or a failure of
		// the platform's is no wrong guess: its failure is taken back, even
		// when the caller has gone (the code may be spent already). Should
		// that fail, the attempt stays counted, and the answer stands.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if ferr := postgres.ForgiveCodeAttempt(fctx, s.pool, attempt); ferr != nil {
			s.log.ErrorContext(ctx, "member code attempt left counted as a failure", "member_no", memberNo, "err", ferr)
		}
		cancel()
	}
	if err != nil {
		return uuid.Nil, fmt.Errorf("verify member code: %w", err)
	}
	return member, nil
}

// A member number is locked for codeLockWindow after codeMaxFailures wrong
// codes within it: guessing six digits online takes ~10^5 tries, this allows
// five every five minutes.
const (
	codeMaxFailures = 5
	codeLockWindow  = 5 * time.Minute
)

func (s *Service) refuseCode(ctx context.Context, memberNo int64, reason string) error {
	s.log.InfoContext(ctx, "member code refused", "member_no", memberNo, "reason", reason)
	return ErrCodeInvalid
}

func (s *Service) replayedCode(ctx context.Context, memberNo int64, at CodeUse) error {
	s.log.WarnContext(ctx, "member code replayed", "member_no", memberNo, "store_id", at.StoreID, "terminal_id", at.TerminalID)
	return ErrCodeUsed
}

// parseMemberCode splits a numeric code or QR payload into the member number
// and the TOTP digits.
func parseMemberCode(code string) (memberNo int64, otp string, ok bool) {
	code = strings.TrimPrefix(strings.TrimSpace(code), CodeQRPrefix)
	if len(code) != memberNoDigits+codeDigits {
		return 0, "", false
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return 0, "", false
		}
	}
	no, err := strconv.ParseInt(code[:memberNoDigits], 10, 64)
	if err != nil || no < 1 {
		return 0, "", false
	}
	return no, code[memberNoDigits:], true
}

// matchStep returns the step within the skew of current whose code is otp.
func matchStep(secret []byte, otp string, current int64) (int64, bool) {
	for d := int64(-codeSkewSteps); d <= codeSkewSteps; d++ {
		if hmac.Equal([]byte(totp(secret, current+d)), []byte(otp)) {
			return current + d, true
		}
	}
	return 0, false
}

// codeSecret returns the member's decrypted code secret. With create, a
// missing secret is made; otherwise it is ErrNotFound.
func (s *Service) codeSecret(ctx context.Context, tx pgx.Tx, memberID uuid.UUID, now time.Time, create bool) ([]byte, error) {
	ad := codeSecretAD(memberID)
	row, err := postgres.GetCodeSecret(ctx, tx, memberID)
	if errors.Is(err, postgres.ErrNotFound) && create {
		secret, won, cerr := s.newCodeSecret(ctx, tx, memberID, ad, now)
		if cerr != nil || won {
			return secret, shreddedNotFound(memberID, cerr)
		}
		// A concurrent first issue won; its secret is the member's. (This
		// lookup's error must replace the first one: the loser used to
		// return that NotFound.)
		row, err = postgres.GetCodeSecret(ctx, tx, memberID)
	}
	if err != nil {
		return nil, err
	}
	plain, err := s.pii.Reveal(ctx, row.Cipher, row.KeyID, ad)
	if err != nil {
		return nil, shreddedNotFound(memberID, fmt.Errorf("code secret of %s: %w", memberID, err))
	}
	return []byte(plain), nil
}

// shreddedNotFound is ErrNotFound for err when it is the member's data key
// found shredded: an erasure shreds the keys before its transaction
// commits, so a call that found the member active just before meets the
// shredded key instead of the erased row, and the member is no one all the
// same.
func shreddedNotFound(memberID uuid.UUID, err error) error {
	if errors.Is(err, postgres.ErrKeyShredded) {
		return fmt.Errorf("member %s was erased: %w", memberID, postgres.ErrNotFound)
	}
	return err
}

// newCodeSecret makes and stores a member's first code secret; won is false
// when a concurrent first issue stored one first.
func (s *Service) newCodeSecret(ctx context.Context, tx pgx.Tx, memberID uuid.UUID, ad []byte, now time.Time) (secret []byte, won bool, err error) {
	secret = make([]byte, codeSecretBytes)
	if _, err := rand.Read(secret); err != nil {
		return nil, false, fmt.Errorf("code secret: %w", err)
	}
	sealer, err := s.pii.SealerFor(ctx, memberID)
	if err != nil {
		return nil, false, fmt.Errorf("encrypt code secret: %w", err)
	}
	cipher, keyID, err := sealer.Encrypt(string(secret), ad)
	if err != nil {
		return nil, false, fmt.Errorf("encrypt code secret: %w", err)
	}
	won, err = postgres.InsertCodeSecret(ctx, tx, postgres.CodeSecretRow{MemberID: memberID, Cipher: cipher, KeyID: keyID, CreatedAt: now})
	if err != nil || !won {
		return nil, false, err
	}
	return secret, true, nil
}

// codeSecretAD binds a secret's ciphertext to its member, so it cannot be
// copied to another member's row. It is an unkeyed hash: rotating the PII
// lookup key must not make secrets unreadable.
func codeSecretAD(memberID uuid.UUID) []byte {
	sum := sha256.Sum256(append([]byte("membercenter member code secret\x00"), memberID[:]...))
	return sum[:]
}

func activeByNo(m postgres.MemberNoRow) bool { return m.Status == "active" && m.MergedInto == nil }

func mergedIntoByNo(m postgres.MemberNoRow) string {
	if m.MergedInto == nil {
		return "another member"
	}
	return m.MergedInto.String()
}
