package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// LegacyMember is a legacy record brought over by a migration.
type LegacyMember struct {
	Source, LegacyID string
	MemberID         uuid.UUID
	RowSHA256        []byte
	ImportedAt       time.Time
	// Erased at the member's request since (EraseMember).
	Erased bool
}

// FindLegacyMember returns the member a legacy record became; found false
// when it was not imported.
func FindLegacyMember(ctx context.Context, q Querier, source, legacyID string) (LegacyMember, bool, error) {
	l := LegacyMember{Source: source, LegacyID: legacyID}
	err := q.QueryRow(ctx, `SELECT member_id, row_sha256, imported_at, erased FROM legacy_members WHERE legacy_id = $1 AND source = $2`,
		legacyID, source).Scan(&l.MemberID, &l.RowSHA256, &l.ImportedAt, &l.Erased)
	if errors.Is(err, pgx.ErrNoRows) {
		return l, false, nil
	}
	if err != nil {
		return l, false, fmt.Errorf("find legacy member: %w", err)
	}
	return l, true, nil
}

// InsertLegacyMember records what a legacy record became.
func InsertLegacyMember(ctx context.Context, q Querier, l LegacyMember) error {
	return exec(ctx, q, "insert legacy member", `INSERT INTO legacy_members (source, legacy_id, member_id, row_sha256, imported_at)
		VALUES ($1, $2, $3, $4, $5)`, l.Source, l.LegacyID, l.MemberID, l.RowSHA256, l.ImportedAt)
}

// LockLegacyID serialises imports of one legacy record (two runs at once
// import it once).
func LockLegacyID(ctx context.Context, tx pgx.Tx, source, legacyID string) error {
	return exec(ctx, tx, "lock legacy id", `SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))`, source, legacyID)
}

// LegacyMembersOf returns the members the records of source became, by
// legacy id.
func LegacyMembersOf(ctx context.Context, q Querier, source string) (map[string]uuid.UUID, error) {
	rows, err := q.Query(ctx, `SELECT legacy_id, member_id FROM legacy_members WHERE source = $1 AND NOT erased`, source)
	if err != nil {
		return nil, fmt.Errorf("legacy members: %w", err)
	}
	defer rows.Close()
	out := map[string]uuid.UUID{}
	for rows.Next() {
		var id string
		var m uuid.UUID
		if err := rows.Scan(&id, &m); err != nil {
			return nil, fmt.Errorf("legacy members: %w", err)
		}
		out[id] = m
	}
	return out, rows.Err()
}

// LegacyRecordsOf returns the legacy records the members came from.
func LegacyRecordsOf(ctx context.Context, q Querier, members []uuid.UUID) ([]LegacyMember, error) {
	rows, err := q.Query(ctx, `SELECT source, legacy_id, member_id FROM legacy_members WHERE member_id = ANY($1) AND NOT erased`, members)
	if err != nil {
		return nil, fmt.Errorf("legacy records: %w", err)
	}
	defer rows.Close()
	var out []LegacyMember
	for rows.Next() {
		var l LegacyMember
		if err := rows.Scan(&l.Source, &l.LegacyID, &l.MemberID); err != nil {
			return nil, fmt.Errorf("legacy records: %w", err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// MarkLegacyErased keeps an erased member's legacy record as key (a keyed
// hash of its legacy id), linked to no member.
func MarkLegacyErased(ctx context.Context, q Querier, source, legacyID, key string) error {
	return exec(ctx, q, "mark legacy record erased", `UPDATE legacy_members SET legacy_id = $3, member_id = '00000000-0000-0000-0000-000000000000',
		row_sha256 = ''::bytea, erased = true WHERE source = $1 AND legacy_id = $2`, source, legacyID, key)
}

// ClaimLegacyChange records, in tx, position as the last change applied to
// a legacy row (source, rowKey), unless a change at or after it was
// applied before: fresh is false then, and nothing is written. The row is
// locked until tx ends, so two runs applying the same change apply it once.
func ClaimLegacyChange(ctx context.Context, tx pgx.Tx, source string, rowKey []byte, position []int64, at time.Time) (fresh bool, err error) {
	err = tx.QueryRow(ctx, `INSERT INTO legacy_changes AS c (source, row_key, position, applied_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (row_key, source) DO UPDATE SET position = EXCLUDED.position, applied_at = EXCLUDED.applied_at
		WHERE c.position < EXCLUDED.position
		RETURNING true`, source, rowKey, position, at).Scan(&fresh)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim legacy change: %w", err)
	}
	return fresh, nil
}

// LegacyChangesOf counts the legacy rows of source a catch-up applied
// changes to.
func LegacyChangesOf(ctx context.Context, q Querier, source string) (int, error) {
	var n int
	if err := q.QueryRow(ctx, `SELECT count(*) FROM legacy_changes WHERE source = $1`, source).Scan(&n); err != nil {
		return 0, fmt.Errorf("count legacy changes: %w", err)
	}
	return n, nil
}

// SetLegacyChangeMember records which member a legacy row's claimed change
// applied to (an erasure deletes the record: EraseMembers).
func SetLegacyChangeMember(ctx context.Context, tx pgx.Tx, source string, rowKey []byte, member uuid.UUID) error {
	return exec(ctx, tx, "legacy change member", `UPDATE legacy_changes SET member_id = $3 WHERE row_key = $2 AND source = $1`, source, rowKey, member)
}

// ForgetLegacyChange deletes the record of a legacy row's change (claimed
// in tx for a member that turned out to be erased: nothing is kept of it).
func ForgetLegacyChange(ctx context.Context, tx pgx.Tx, source string, rowKey []byte) error {
	return exec(ctx, tx, "forget legacy change", `DELETE FROM legacy_changes WHERE row_key = $2 AND source = $1`, source, rowKey)
}

// LegacyChangeStale reports whether a change at or after position was
// applied to the legacy row (source, rowKey) (ClaimLegacyChange), without
// locking anything: for a change whose effect is written elsewhere first
// (an order, to ClickHouse).
func LegacyChangeStale(ctx context.Context, q Querier, source string, rowKey []byte, position []int64) (bool, error) {
	var stale bool
	err := q.QueryRow(ctx, `SELECT position >= $3 FROM legacy_changes WHERE row_key = $2 AND source = $1`, source, rowKey, position).Scan(&stale)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("legacy change position: %w", err)
	}
	return stale, nil
}
