package postgres

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// LockIdentifiers takes transaction-scoped advisory locks on the keys, in a
// fixed order, so concurrent resolutions of the same identifiers run one
// after another: the second sees what the first created.
func LockIdentifiers(ctx context.Context, q Querier, keys []IdentifierKey) error {
	ids := make([]int64, 0, len(keys))
	for _, k := range keys {
		var b [8]byte
		copy(b[:], k.Hash)
		ids = append(ids, int64(binary.BigEndian.Uint64(b[:]))^int64(k.Type)<<56)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	// One statement: a function scan of the array yields its elements in
	// order, so the locks are taken in that order.
	return execLater(ctx, q, "lock identifiers", `SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS t(k)`, ids)
}

// LockMembers locks member rows (lockMemberRow), in id order (no
// deadlocks), and returns them.
func LockMembers(ctx context.Context, q Querier, ids ...uuid.UUID) (map[uuid.UUID]MemberRow, error) {
	sorted := slices.SortedFunc(slices.Values(ids), CompareMemberIDs)
	out := map[uuid.UUID]MemberRow{}
	for _, id := range sorted {
		var m MemberRow
		err := q.QueryRow(ctx, `
			SELECT member_id, created_at, status, merged_into, change_seq, attributes, merge_count
			  FROM members WHERE member_id = $1`+lockMemberRow, id).
			Scan(&m.MemberID, &m.CreatedAt, &m.Status, &m.MergedInto, &m.ChangeSeq, &m.Attributes, &m.MergeCount)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("member %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("lock member: %w", err)
		}
		out[id] = m
	}
	return out, nil
}

// CanonicalMember follows merged_into from id to the member that holds the
// data now.
func CanonicalMember(ctx context.Context, q Querier, id uuid.UUID) (uuid.UUID, error) {
	var out uuid.UUID
	err := q.QueryRow(ctx, `
		WITH RECURSIVE chain(member_id, merged_into, depth) AS (
		    SELECT member_id, merged_into, 0 FROM members WHERE member_id = $1
		  UNION ALL
		    SELECT m.member_id, m.merged_into, c.depth + 1
		      FROM members m JOIN chain c ON m.member_id = c.merged_into
		     WHERE c.depth < 100)
		SELECT c.member_id FROM chain c JOIN members m USING (member_id)
		 WHERE c.merged_into IS NULL AND m.status <> 'erased'`, id).Scan(&out)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.Nil, fmt.Errorf("member %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return uuid.Nil, fmt.Errorf("canonical member: %w", err)
	}
	return out, nil
}

// CountIdentifiers returns how many identifiers a member holds, by type.
func CountIdentifiers(ctx context.Context, q Querier, memberID uuid.UUID) (map[int16]int, error) {
	rows, err := q.Query(ctx, `SELECT id_type, count(*) FROM member_identifiers WHERE member_id = $1 GROUP BY id_type`, memberID)
	if err != nil {
		return nil, fmt.Errorf("count identifiers: %w", err)
	}
	out := map[int16]int{}
	var t int16
	var n int
	_, err = pgx.ForEachRow(rows, []any{&t, &n}, func() error { out[t] = n; return nil })
	return out, err
}

// DeleteIdentifier unlinks one identifier from a member. It reports false
// when the member did not hold it.
func DeleteIdentifier(ctx context.Context, q Querier, memberID uuid.UUID, k IdentifierKey) (bool, error) {
	affected, err := execRows(ctx, q, "delete identifier", `
		DELETE FROM member_identifiers WHERE member_id = $1 AND id_type = $2 AND scope = $3 AND value_hash = $4`,
		memberID, k.Type, k.Scope, k.Hash)
	return affected > 0, err
}

// MoveIdentifiers re-points identifiers of from to to. With origins set, only
// identifiers whose origin is one of them move.
func MoveIdentifiers(ctx context.Context, q Querier, from, to uuid.UUID, origins []uuid.UUID) (int64, error) {
	return execRows(ctx, q, "move identifiers", `
		UPDATE member_identifiers SET member_id = $2
		 WHERE member_id = $1 AND ($3::uuid[] IS NULL OR origin_member_id = ANY($3))`, from, to, origins)
}

// MoveLots re-points open and spent lots of from to to, like MoveIdentifiers.
func MoveLots(ctx context.Context, q Querier, from, to uuid.UUID, origins []uuid.UUID) error {
	return exec(ctx, q, "move lots", `
		UPDATE point_lots SET member_id = $2
		 WHERE member_id = $1 AND ($3::uuid[] IS NULL OR origin_member_id = ANY($3))`, from, to, origins)
}

// LotTotals sums a member's lots of the given origins (all when nil):
// remaining points already available, remaining points still pending at
// now, and points earned since (lots of kind earn: as the accounts'
// lifetime points count them, not those adjusted or restored) — those of
// lots created after the lot id afterLot, or, when afterLot is negative
// (a merge recorded before lot ids were), earned after since.
func LotTotals(ctx context.Context, q Querier, memberID uuid.UUID, origins []uuid.UUID, now, since time.Time, afterLot int64) (available, pending, earnedSince int64, err error) {
	err = q.QueryRow(ctx, `
		SELECT coalesce(sum(remaining) FILTER (WHERE available_at <= $3), 0),
		       coalesce(sum(remaining) FILTER (WHERE available_at > $3), 0),
		       coalesce(sum(earned) FILTER (WHERE kind = 'earn' AND CASE WHEN $5::bigint < 0 THEN earned_at > $4 ELSE lot_id > $5 END), 0)
		  FROM point_lots
		 WHERE member_id = $1 AND ($2::uuid[] IS NULL OR origin_member_id = ANY($2))`,
		memberID, origins, now, since, afterLot).Scan(&available, &pending, &earnedSince)
	if err != nil {
		err = fmt.Errorf("lot totals: %w", err)
	}
	return available, pending, earnedSince, err
}

// LastLotOf is the id of the members' last lot (0 for none): a lot made
// for them afterwards has a larger one (they are locked: one being made
// before was committed), whatever time it is dated.
func LastLotOf(ctx context.Context, q Querier, members ...uuid.UUID) (int64, error) {
	var id int64
	err := q.QueryRow(ctx, `SELECT coalesce(max(lot_id), 0) FROM point_lots WHERE member_id = ANY($1)`, members).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("last lot: %w", err)
	}
	return id, nil
}

// SetMergedInto marks a member merged into another (or active again when
// into is nil) and adjusts the merge count of the survivor.
func SetMergedInto(ctx context.Context, q Querier, member uuid.UUID, into *uuid.UUID) error {
	status := "active"
	if into != nil {
		status = "merged"
	}
	return exec(ctx, q, "set merged", `UPDATE members SET status = $2, merged_into = $3 WHERE member_id = $1`, member, status, into)
}

// AddMergeCount adds delta to a member's merge count.
func AddMergeCount(ctx context.Context, q Querier, member uuid.UUID, delta int) error {
	return exec(ctx, q, "merge count", `UPDATE members SET merge_count = merge_count + $2 WHERE member_id = $1`, member, delta)
}

// SetAttributes replaces a member's attributes.
func SetAttributes(ctx context.Context, q Querier, member uuid.UUID, attrs map[string]string) error {
	if attrs == nil {
		attrs = map[string]string{}
	}
	return exec(ctx, q, "set attributes", `UPDATE members SET attributes = $2 WHERE member_id = $1`, member, attrs)
}

// SetAccount overwrites a member's balance (merge and unmerge recompute it
// from the lots they move; the ledger records the movement).
func SetAccount(ctx context.Context, q Querier, a Account) error {
	return exec(ctx, q, "set account", `
		INSERT INTO points_accounts AS p (member_id, balance, lifetime_earned, updated_at)
		VALUES ($1, $2, $3, now())
		ON CONFLICT (member_id) DO UPDATE
		   SET balance = EXCLUDED.balance, lifetime_earned = EXCLUDED.lifetime_earned, updated_at = now()`,
		a.MemberID, a.Balance, a.LifetimeEarned)
}

// MergeRow is a recorded merge.
type MergeRow struct {
	MergeID       uuid.UUID
	Source        uuid.UUID
	Target        uuid.UUID
	Reason        string
	CauseID       string
	Actor         string
	Channel       string
	MergedAt      time.Time
	Snapshot      json.RawMessage
	UnmergedAt    *time.Time
	UnmergeReason *string
}

const mergeColumns = `merge_id, source_member_id, target_member_id, reason, cause_id, actor, channel, merged_at, snapshot, unmerged_at, unmerge_reason`

func scanMerge(row pgx.CollectableRow) (MergeRow, error) {
	var m MergeRow
	err := row.Scan(&m.MergeID, &m.Source, &m.Target, &m.Reason, &m.CauseID, &m.Actor, &m.Channel, &m.MergedAt, &m.Snapshot, &m.UnmergedAt, &m.UnmergeReason)
	return m, err
}

// InsertMerge records a merge.
func InsertMerge(ctx context.Context, q Querier, m MergeRow) error {
	return exec(ctx, q, "insert merge", `INSERT INTO merges (merge_id, source_member_id, target_member_id, reason, cause_id, actor, channel, merged_at, snapshot)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, m.MergeID, m.Source, m.Target, m.Reason, m.CauseID, m.Actor, m.Channel, m.MergedAt, m.Snapshot)
}

// GetMergeForUpdate returns a merge, locked, or ErrNotFound.
func GetMergeForUpdate(ctx context.Context, q Querier, id uuid.UUID) (MergeRow, error) {
	rows, err := q.Query(ctx, `SELECT `+mergeColumns+` FROM merges WHERE merge_id = $1 FOR UPDATE`, id)
	return collectOne(rows, err, scanMerge, "get merge", "merge %s", id)
}

// MarkUnmerged closes a merge.
func MarkUnmerged(ctx context.Context, q Querier, id uuid.UUID, reason string, at time.Time) error {
	return exec(ctx, q, "mark unmerged", `UPDATE merges SET unmerged_at = $2, unmerge_reason = $3 WHERE merge_id = $1`, id, at, reason)
}

// ListMerges returns the merges a member took part in, oldest first.
func ListMerges(ctx context.Context, q Querier, member uuid.UUID) ([]MergeRow, error) {
	rows, err := q.Query(ctx, `SELECT `+mergeColumns+` FROM merges
		WHERE source_member_id = $1 OR target_member_id = $1 ORDER BY merged_at, merge_id`, member)
	return collectAll(rows, err, scanMerge, "list merges")
}

// FoldedInto returns member and every member whose open merges lead into it,
// transitively: the members whose data travels with it.
func FoldedInto(ctx context.Context, q Querier, member uuid.UUID) ([]uuid.UUID, error) {
	rows, err := q.Query(ctx, `
		WITH RECURSIVE folded(member_id, depth) AS (
		    SELECT $1::uuid, 0
		  UNION
		    SELECT m.source_member_id, f.depth + 1
		      FROM merges m JOIN folded f ON m.target_member_id = f.member_id
		     WHERE m.unmerged_at IS NULL AND f.depth < 100)
		SELECT member_id FROM folded`, member)
	return collectAll(rows, err, pgx.RowTo[uuid.UUID], "folded members")
}

// ConflictRow is an identity conflict waiting for (or past) review.
type ConflictRow struct {
	ConflictID       uuid.UUID
	MemberIDs        []uuid.UUID
	Identifiers      json.RawMessage
	Reason           string
	CauseID          string
	Channel          string
	CreatedAt        time.Time
	ResolvedAt       *time.Time
	Resolution       *string
	ResolvedMemberID *uuid.UUID
}

const conflictColumns = `conflict_id, member_ids, identifiers, reason, cause_id, channel, created_at, resolved_at, resolution, resolved_member_id`

func scanConflict(row pgx.CollectableRow) (ConflictRow, error) {
	var c ConflictRow
	err := row.Scan(&c.ConflictID, &c.MemberIDs, &c.Identifiers, &c.Reason, &c.CauseID, &c.Channel, &c.CreatedAt, &c.ResolvedAt, &c.Resolution, &c.ResolvedMemberID)
	return c, err
}

// InsertConflict records a conflict.
func InsertConflict(ctx context.Context, q Querier, c ConflictRow) error {
	return exec(ctx, q, "insert conflict", `INSERT INTO identity_conflicts (conflict_id, member_ids, identifiers, reason, cause_id, channel, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, c.ConflictID, c.MemberIDs, c.Identifiers, c.Reason, c.CauseID, c.Channel, c.CreatedAt)
}

// ListOpenConflicts pages through unresolved conflicts, oldest first, after
// the cursor (zero values for the first page).
func ListOpenConflicts(ctx context.Context, q Querier, afterAt time.Time, afterID uuid.UUID, limit int) ([]ConflictRow, error) {
	rows, err := q.Query(ctx, `SELECT `+conflictColumns+` FROM identity_conflicts
		WHERE resolved_at IS NULL AND (created_at, conflict_id) > ($1, $2)
		ORDER BY created_at, conflict_id LIMIT $3`, afterAt, afterID, limit)
	return collectAll(rows, err, scanConflict, "list conflicts")
}

// GetConflictForUpdate returns a conflict, locked, or ErrNotFound.
func GetConflictForUpdate(ctx context.Context, q Querier, id uuid.UUID) (ConflictRow, error) {
	rows, err := q.Query(ctx, `SELECT `+conflictColumns+` FROM identity_conflicts WHERE conflict_id = $1 FOR UPDATE`, id)
	return collectOne(rows, err, scanConflict, "get conflict", "conflict %s", id)
}

// ResolveConflictRow records how a conflict was settled.
func ResolveConflictRow(ctx context.Context, q Querier, id uuid.UUID, resolution string, member *uuid.UUID, at time.Time) error {
	return exec(ctx, q, "resolve conflict", `UPDATE identity_conflicts SET resolved_at = $2, resolution = $3, resolved_member_id = $4 WHERE conflict_id = $1`,
		id, at, resolution, member)
}

// AuditRow is one identity audit record.
type AuditRow struct {
	AuditID       uuid.UUID
	At            time.Time
	Action        string
	Actor         string
	Channel       string
	CauseID       string
	MemberID      uuid.UUID
	OtherMemberID *uuid.UUID
	Identifiers   json.RawMessage
	Before        json.RawMessage
	After         json.RawMessage
	Reason        string
}

// InsertAudit appends an audit record.
func InsertAudit(ctx context.Context, q Querier, a AuditRow) error {
	if a.Identifiers == nil {
		a.Identifiers = json.RawMessage("[]")
	}
	if a.Before == nil {
		a.Before = json.RawMessage("{}")
	}
	if a.After == nil {
		a.After = json.RawMessage("{}")
	}
	return execLater(ctx, q, "insert audit", `INSERT INTO identity_audit (audit_id, at, action, actor, channel, cause_id, member_id, other_member_id, identifiers, before, after, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
		a.AuditID, a.At, a.Action, a.Actor, a.Channel, a.CauseID, a.MemberID, a.OtherMemberID, a.Identifiers, a.Before, a.After, a.Reason)
}

// ListAudit returns a member's audit records, oldest first.
func ListAudit(ctx context.Context, q Querier, member uuid.UUID) ([]AuditRow, error) {
	rows, err := q.Query(ctx, `SELECT audit_id, at, action, actor, channel, cause_id, member_id, other_member_id, identifiers, before, after, reason
		FROM identity_audit WHERE member_id = $1 ORDER BY at, audit_id`, member)
	return collectAll(rows, err, func(row pgx.CollectableRow) (AuditRow, error) {
		var a AuditRow
		err := row.Scan(&a.AuditID, &a.At, &a.Action, &a.Actor, &a.Channel, &a.CauseID, &a.MemberID, &a.OtherMemberID, &a.Identifiers, &a.Before, &a.After, &a.Reason)
		return a, err
	}, "list audit")
}

// SealedRow is a ciphertext to re-encrypt: an identifier's display value
// (ID is identifier_id) or a member's code secret (ID is zero).
type SealedRow struct {
	ID int64
	// The member whose data key it belongs under: a code secret's member,
	// an identifier's origin (the member it came through, which an unmerge
	// gives it back to), not the member holding it through a merge.
	MemberID uuid.UUID
	Hash     []byte // additional data of identifier ciphertexts
	Cipher   []byte
	KeyID    string
}

// underPlatformKey selects ciphertexts written under a platform key of
// MC_PII_ENC_KEYS rather than a member's data key (key ids "m/<member>").
const underPlatformKey = `key_id NOT LIKE 'm/%'`

// CountPlatformSealed counts the ciphertexts under platform keys.
func CountPlatformSealed(ctx context.Context, q Querier) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM member_identifiers WHERE value_cipher IS NOT NULL AND `+underPlatformKey+`) +
		(SELECT count(*) FROM member_code_secrets WHERE `+underPlatformKey+`)`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count ciphertexts: %w", err)
	}
	return n, nil
}

// ClaimIdentifierCiphers locks up to limit identifier ciphertexts under
// platform keys, each with its origin member.
func ClaimIdentifierCiphers(ctx context.Context, tx pgx.Tx, limit int) ([]SealedRow, error) {
	rows, err := tx.Query(ctx, `SELECT identifier_id, origin_member_id, value_hash, value_cipher, key_id FROM member_identifiers
		WHERE value_cipher IS NOT NULL AND `+underPlatformKey+` ORDER BY identifier_id LIMIT $1 FOR UPDATE SKIP LOCKED`, limit)
	return collectAll(rows, err, func(row pgx.CollectableRow) (SealedRow, error) {
		var r SealedRow
		err := row.Scan(&r.ID, &r.MemberID, &r.Hash, &r.Cipher, &r.KeyID)
		return r, err
	}, "claim identifier ciphertexts")
}

// UpdateIdentifierCipher stores a re-encrypted identifier ciphertext.
func UpdateIdentifierCipher(ctx context.Context, tx pgx.Tx, id int64, cipher []byte, keyID string) error {
	return exec(ctx, tx, "update identifier ciphertext", `UPDATE member_identifiers SET value_cipher = $2, key_id = $3 WHERE identifier_id = $1`, id, cipher, keyID)
}

// ClaimCodeSecretCiphers locks up to limit member code secrets under
// platform keys.
func ClaimCodeSecretCiphers(ctx context.Context, tx pgx.Tx, limit int) ([]SealedRow, error) {
	rows, err := tx.Query(ctx, `SELECT member_id, secret_cipher, key_id FROM member_code_secrets
		WHERE `+underPlatformKey+` ORDER BY member_id LIMIT $1 FOR UPDATE SKIP LOCKED`, limit)
	return collectAll(rows, err, func(row pgx.CollectableRow) (SealedRow, error) {
		var r SealedRow
		err := row.Scan(&r.MemberID, &r.Cipher, &r.KeyID)
		return r, err
	}, "claim code secrets")
}

// UpdateCodeSecretCipher stores a re-encrypted code secret.
func UpdateCodeSecretCipher(ctx context.Context, tx pgx.Tx, member uuid.UUID, cipher []byte, keyID string) error {
	return exec(ctx, tx, "update code secret", `UPDATE member_code_secrets SET secret_cipher = $2, key_id = $3 WHERE member_id = $1`, member, cipher, keyID)
}
