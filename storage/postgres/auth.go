package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// MemberNoRow is what authentication needs of a member: its public number
// and whether it is still active.
type MemberNoRow struct {
	MemberID   uuid.UUID
	MemberNo   int64
	Status     string
	MergedInto *uuid.UUID
}

// GetMemberNo returns a member's number and status, or ErrNotFound.
func GetMemberNo(ctx context.Context, q Querier, memberID uuid.UUID) (MemberNoRow, error) {
	r, err := scanMemberNo(q.QueryRow(ctx, `
		SELECT member_id, member_no, status, merged_into FROM members WHERE member_id = $1`, memberID))
	return r, rowErr(err, "get member number", "member %s", memberID)
}

// GetMemberByNo returns the member with a public number, or ErrNotFound.
func GetMemberByNo(ctx context.Context, q Querier, memberNo int64) (MemberNoRow, error) {
	r, err := scanMemberNo(q.QueryRow(ctx, `
		SELECT member_id, member_no, status, merged_into FROM members WHERE member_no = $1`, memberNo))
	return r, rowErr(err, "get member by number", "member number %d", memberNo)
}

func scanMemberNo(row pgx.Row) (MemberNoRow, error) {
	var r MemberNoRow
	err := row.Scan(&r.MemberID, &r.MemberNo, &r.Status, &r.MergedInto)
	return r, err
}

// CodeSecretRow is a member's encrypted dynamic-code secret.
type CodeSecretRow struct {
	MemberID  uuid.UUID
	Cipher    []byte // AES-GCM ciphertext of the secret
	KeyID     string // encryption key the ciphertext was written with
	CreatedAt time.Time
}

// GetCodeSecret returns a member's code secret, or ErrNotFound when none
// was created yet.
func GetCodeSecret(ctx context.Context, q Querier, memberID uuid.UUID) (CodeSecretRow, error) {
	r := CodeSecretRow{MemberID: memberID}
	err := q.QueryRow(ctx, `
		SELECT secret_cipher, key_id, created_at FROM member_code_secrets WHERE member_id = $1`, memberID).
		Scan(&r.Cipher, &r.KeyID, &r.CreatedAt)
	return r, rowErr(err, "get code secret", "code secret of %s", memberID)
}

// InsertCodeSecret stores a member's code secret unless one exists. It
// reports false when a secret was already there (a concurrent first issue):
// the caller must then read and use that one.
func InsertCodeSecret(ctx context.Context, q Querier, r CodeSecretRow) (bool, error) {
	affected, err := execRows(ctx, q, "insert code secret", `
		INSERT INTO member_code_secrets (member_id, secret_cipher, key_id, created_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (member_id) DO NOTHING`,
		r.MemberID, r.Cipher, r.KeyID, r.CreatedAt)
	return affected == 1, err
}

// CodeUse is one accepted dynamic code: a member's time step and where it
// was scanned.
type CodeUse struct {
	MemberID   uuid.UUID
	Step       int64
	UsedAt     time.Time
	StoreID    string
	TerminalID string
}

// InsertCodeUse records an accepted code. It reports false, writing nothing,
// when the member's step was used before (a replay).
func InsertCodeUse(ctx context.Context, q Querier, u CodeUse) (bool, error) {
	affected, err := execRows(ctx, q, "insert code use", `
		INSERT INTO member_code_uses (member_id, step, used_at, store_id, terminal_id) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (member_id, step) DO NOTHING`,
		u.MemberID, u.Step, u.UsedAt, u.StoreID, u.TerminalID)
	return affected == 1, err
}

// LastCodeStep returns the latest step of a member's accepted codes; ok is
// false when none was accepted yet.
func LastCodeStep(ctx context.Context, q Querier, memberID uuid.UUID) (step int64, ok bool, err error) {
	var last *int64
	if err := q.QueryRow(ctx, `SELECT max(step) FROM member_code_uses WHERE member_id = $1`, memberID).Scan(&last); err != nil {
		return 0, false, fmt.Errorf("last code step: %w", err)
	}
	if last == nil {
		return 0, false, nil
	}
	return *last, true, nil
}

// TerminalRow is a registered store device.
type TerminalRow struct {
	TerminalID   string
	StoreID      string
	PublicKey    []byte // raw Ed25519 public key, 32 bytes
	Description  string
	RegisteredAt time.Time
	RevokedAt    *time.Time // nil while the terminal is active
	RevokeReason string
}

const terminalColumns = `terminal_id, store_id, public_key, description, registered_at, revoked_at, coalesce(revoke_reason, '')`

func scanTerminal(row pgx.Row) (TerminalRow, error) {
	var r TerminalRow
	err := row.Scan(&r.TerminalID, &r.StoreID, &r.PublicKey, &r.Description, &r.RegisteredAt, &r.RevokedAt, &r.RevokeReason)
	return r, err
}

// GetTerminal returns a terminal, revoked or not, or ErrNotFound.
func GetTerminal(ctx context.Context, q Querier, terminalID string) (TerminalRow, error) {
	r, err := scanTerminal(q.QueryRow(ctx, `SELECT `+terminalColumns+` FROM terminals WHERE terminal_id = $1`, terminalID))
	return r, rowErr(err, "get terminal", "terminal %q", terminalID)
}

// FindTerminalByKey returns the terminal registered with a public key, or
// ErrNotFound.
func FindTerminalByKey(ctx context.Context, q Querier, publicKey []byte) (TerminalRow, error) {
	r, err := scanTerminal(q.QueryRow(ctx, `SELECT `+terminalColumns+` FROM terminals WHERE public_key = $1`, publicKey))
	return r, rowErr(err, "find terminal by key", "terminal with this public key")
}

// InsertTerminal registers a terminal. A unique violation (see
// IsUniqueViolation) means its id or key was registered concurrently.
func InsertTerminal(ctx context.Context, q Querier, r TerminalRow) error {
	return exec(ctx, q, "insert terminal", `
		INSERT INTO terminals (terminal_id, store_id, public_key, description, registered_at) VALUES ($1, $2, $3, $4, $5)`,
		r.TerminalID, r.StoreID, r.PublicKey, r.Description, r.RegisteredAt)
}

// RevokeTerminal marks an active terminal revoked and returns it. It
// returns ErrNotFound when no active terminal has the id: it is unknown or
// already revoked.
func RevokeTerminal(ctx context.Context, q Querier, terminalID string, at time.Time, reason string) (TerminalRow, error) {
	r, err := scanTerminal(q.QueryRow(ctx, `
		UPDATE terminals SET revoked_at = $2, revoke_reason = $3
		 WHERE terminal_id = $1 AND revoked_at IS NULL
		RETURNING `+terminalColumns, terminalID, at, reason))
	return r, rowErr(err, "revoke terminal", "active terminal %q", terminalID)
}

// AssertionNonce is the nonce of an accepted device assertion.
type AssertionNonce struct {
	TerminalID string
	Nonce      []byte
	AssertedAt time.Time
	SeenAt     time.Time
}

// InsertAssertionNonce records an accepted assertion's nonce. It reports
// false, writing nothing, when the terminal used the nonce before (a replay).
func InsertAssertionNonce(ctx context.Context, q Querier, n AssertionNonce) (bool, error) {
	affected, err := execRows(ctx, q, "insert assertion nonce", `
		INSERT INTO assertion_nonces (terminal_id, nonce, asserted_at, seen_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (terminal_id, nonce) DO NOTHING`,
		n.TerminalID, n.Nonce, n.AssertedAt, n.SeenAt)
	return affected == 1, err
}

// CodeAttempt is an attempt at a member number's dynamic code.
type CodeAttempt struct {
	MemberNo   int64
	At         time.Time
	StoreID    string
	TerminalID string
}

// codeAttemptLocks is the namespace of the advisory locks that serialise
// the attempts at one member number (the two-key form, apart from the
// identifiers' one-key locks).
const codeAttemptLocks = 5

// ReserveCodeAttempt records attempt a as a failure, before its code is
// checked, unless max failures of its member number since are recorded
// already: then it records nothing and reports false with their count. The
// attempts at a number are serialised, so guesses sent at once cannot all
// pass the count; an attempt that turns out not to be a wrong code takes
// its failure back (ForgiveCodeAttempt). The lock is held only for the
// count and the insert, in a transaction of its own: the code's check
// needs other connections (data keys), which attempts waiting for the
// lock with theirs could otherwise starve.
func ReserveCodeAttempt(ctx context.Context, db Beginner, a CodeAttempt, since time.Time, max int) (reserved bool, failures int, err error) {
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashint8($2))`, codeAttemptLocks, a.MemberNo); err != nil {
			return err
		}
		// A statement of its own: its snapshot is taken after the lock, so
		// it sees the failures the attempts before this one recorded.
		return tx.QueryRow(ctx, `
			WITH n AS (SELECT count(*) AS failures FROM member_code_failures WHERE member_no = $1 AND failed_at > $2),
			     r AS (INSERT INTO member_code_failures (member_no, failed_at, store_id, terminal_id)
			           SELECT $1, $3, $4, $5 FROM n WHERE n.failures < $6 RETURNING 1)
			SELECT EXISTS (SELECT FROM r), (SELECT failures FROM n)`,
			a.MemberNo, since, a.At, a.StoreID, a.TerminalID, max).Scan(&reserved, &failures)
	})
	if err != nil {
		return false, 0, fmt.Errorf("reserve code attempt: %w", err)
	}
	return reserved, failures, nil
}

// ForgiveCodeAttempt takes back the failure ReserveCodeAttempt recorded for
// attempt a.
func ForgiveCodeAttempt(ctx context.Context, q Querier, a CodeAttempt) error {
	return exec(ctx, q, "forgive code attempt", `
		DELETE FROM member_code_failures WHERE member_no = $1 AND ctid = (
		  SELECT ctid FROM member_code_failures
		   WHERE member_no = $1 AND failed_at = $2 AND store_id = $3 AND terminal_id = $4 LIMIT 1)`,
		a.MemberNo, a.At, a.StoreID, a.TerminalID)
}
