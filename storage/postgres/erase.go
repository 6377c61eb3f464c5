package postgres

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// LockErasable locks the row of member (which must be canonical: active,
// not merged) and of every member merged into it, directly or through
// others, and returns the ids of the merged ones. An erased or unknown
// member is ErrNotFound.
func LockErasable(ctx context.Context, tx pgx.Tx, member uuid.UUID) ([]uuid.UUID, error) {
	var status string
	if err := tx.QueryRow(ctx, `SELECT status FROM members WHERE member_id = $1`+lockMemberRow, member).Scan(&status); err != nil {
		if err == pgx.ErrNoRows {
			return nil, fmt.Errorf("member %s: %w", member, ErrNotFound)
		}
		return nil, fmt.Errorf("lock member: %w", err)
	}
	if status == "merged" { // by a transaction that held the lock first
		return nil, fmt.Errorf("member %s: %w", member, ErrMemberMoved)
	}
	if status != "active" {
		return nil, fmt.Errorf("member %s is %s: %w", member, status, ErrNotFound)
	}
	rows, err := tx.Query(ctx, `
		WITH RECURSIVE folded(member_id, depth) AS (
		    SELECT member_id, 0 FROM members WHERE merged_into = $1
		  UNION ALL
		    SELECT m.member_id, f.depth + 1 FROM members m JOIN folded f ON m.merged_into = f.member_id WHERE f.depth < 100)
		SELECT m.member_id FROM members m WHERE m.member_id IN (SELECT member_id FROM folded)
		ORDER BY m.member_id`+lockMemberRow, member)
	return collectAll(rows, err, pgx.RowTo[uuid.UUID], "lock merged members")
}

// erasure is what EraseMembers does, table by table: every statement takes
// the members as $1. Kept: the members rows (emptied), the ledger, lots,
// accounts, orders, coupons, campaign usage, activity, tier and benefit
// history, adjustment approvals and the operator audit — accounting records
// under an id that, once this has run, identifies no one.
var erasure = []struct{ table, sql string }{
	// Identifiers: keyed hashes, ciphertexts, masked values.
	{"member_identifiers", `DELETE FROM member_identifiers WHERE member_id = ANY($1) OR origin_member_id = ANY($1)`},
	{"member_code_secrets", `DELETE FROM member_code_secrets WHERE member_id = ANY($1)`},
	{"member_code_uses", `DELETE FROM member_code_uses WHERE member_id = ANY($1)`},
	{"device_members", `DELETE FROM device_members WHERE member_id = ANY($1)`},
	// What described the person: consents, behaviour, labels.
	{"member_consents", `DELETE FROM member_consents WHERE member_id = ANY($1)`},
	{"member_features", `DELETE FROM member_features WHERE member_id = ANY($1)`},
	{"member_label_sets", `DELETE FROM member_label_sets WHERE member_id = ANY($1)`},
	{"profile_exports", `DELETE FROM profile_exports WHERE member_id = ANY($1)`},
	{"benefit_label_checks", `DELETE FROM benefit_label_checks WHERE member_id = ANY($1)`},
	// The record of a migrated member's legacy changes (keyed hashes of its
	// legacy rows' keys, identifier values among them).
	{"legacy_changes", `DELETE FROM legacy_changes WHERE member_id = ANY($1)`},
	// The changes already published (they carry masked values); those not
	// yet published go out in order, before the erasure's own change.
	{"outbox", `DELETE FROM outbox o WHERE o.member_id = ANY($1) AND ` + outboxPublished},
	// Records that keep their place but lose what identified the member.
	{"members", `UPDATE members SET attributes = '{}'::jsonb, status = 'erased' WHERE member_id = ANY($1)`},
	{"ingested_events", `UPDATE ingested_events SET resolution = ''::bytea, fingerprint = NULL WHERE member_id = ANY($1) AND (resolution <> ''::bytea OR fingerprint IS NOT NULL)`},
	{"identity_audit", `UPDATE identity_audit SET identifiers = '[]'::jsonb, before = '{}'::jsonb, after = '{}'::jsonb
		WHERE (member_id = ANY($1) OR other_member_id = ANY($1)) AND (identifiers <> '[]'::jsonb OR before <> '{}'::jsonb OR after <> '{}'::jsonb)`},
	{"identity_conflicts", `UPDATE identity_conflicts SET identifiers = '[]'::jsonb WHERE member_ids && $1::uuid[] AND identifiers <> '[]'::jsonb`},
	{"merges", `UPDATE merges SET snapshot = snapshot - 'filled' WHERE (source_member_id = ANY($1) OR target_member_id = ANY($1)) AND snapshot ? 'filled'`},
	// Recorded responses of calls about the members (profiles, resolutions:
	// masked values). No member column: found by the member id in the bytes.
	{"idempotency_keys", `DELETE FROM idempotency_keys k WHERE EXISTS (SELECT 1 FROM unnest($1::uuid[]) AS m(id)
		WHERE position(convert_to(m.id::text, 'UTF8') IN k.response) > 0)`},
}

// EraseMembers deletes or blanks, in tx, what identifies or describes the
// members (erasure) and returns the rows touched per table. The caller
// holds their rows' locks (LockErasable).
func EraseMembers(ctx context.Context, tx pgx.Tx, members []uuid.UUID) (map[string]int64, error) {
	// Lets this transaction blank identity_audit records (migration 00020).
	if _, err := tx.Exec(ctx, `SELECT set_config('membercenter.erasure', 'on', true)`); err != nil {
		return nil, fmt.Errorf("erase: %w", err)
	}
	b := &pgx.Batch{}
	for _, e := range erasure {
		b.Queue(e.sql, members)
	}
	res := tx.SendBatch(ctx, b)
	out := make(map[string]int64, len(erasure))
	for _, e := range erasure {
		tag, err := res.Exec()
		if err != nil {
			_ = res.Close()
			return nil, fmt.Errorf("erase %s: %w", e.table, err)
		}
		out[e.table] = tag.RowsAffected()
	}
	if err := res.Close(); err != nil {
		return nil, fmt.Errorf("erase: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('membercenter.erasure', 'off', true)`); err != nil {
		return nil, fmt.Errorf("erase: %w", err)
	}
	return out, nil
}

// ErasedAmong returns which of the members are erased.
func ErasedAmong(ctx context.Context, q Querier, members []uuid.UUID) ([]string, error) {
	return queryValues[string](ctx, q, "erased members", `SELECT member_id::text FROM members WHERE member_id = ANY($1) AND status = 'erased'`, members)
}

// OthersOutboxNaming returns, locked, the outbox rows of members other
// than members whose payload names one of them: an identity change of a
// merge, unmerge, refusal or conflict with one of them (their audit
// records name them as other_member_id), which lists the identifiers that
// moved — theirs. The caller blanks what the rows hold of them
// (SetOutboxPayload), published or not.
func OthersOutboxNaming(ctx context.Context, tx pgx.Tx, members []uuid.UUID) ([]OutboxRow, error) {
	rows, err := tx.Query(ctx, `
		SELECT `+outboxColumns+` FROM outbox o
		 WHERE o.member_id IN (SELECT a.member_id FROM identity_audit a
		                        WHERE a.other_member_id = ANY($1) AND NOT a.member_id = ANY($1))
		   AND EXISTS (SELECT FROM unnest($1::uuid[]) AS m(id) WHERE position(convert_to(m.id::text, 'UTF8') IN o.payload) > 0)
		 ORDER BY o.outbox_id FOR UPDATE OF o`, members)
	if err != nil {
		return nil, fmt.Errorf("outbox rows naming erased members: %w", err)
	}
	return collectOutbox(rows)
}

// SetOutboxPayload replaces the payload of member's outbox row id.
func SetOutboxPayload(ctx context.Context, tx pgx.Tx, member uuid.UUID, id int64, payload []byte) error {
	return exec(ctx, tx, "set outbox payload", `UPDATE outbox SET payload = $3 WHERE member_id = $1 AND outbox_id = $2`, member, id, payload)
}

// OutboxOf returns, locked, the members' outbox rows: after EraseMembers,
// those that were waiting for the relay (and any it published since).
func OutboxOf(ctx context.Context, tx pgx.Tx, members []uuid.UUID) ([]OutboxRow, error) {
	rows, err := tx.Query(ctx, `
		SELECT `+outboxColumns+` FROM outbox o WHERE o.member_id = ANY($1) ORDER BY o.outbox_id FOR UPDATE OF o`, members)
	if err != nil {
		return nil, fmt.Errorf("outbox rows of erased members: %w", err)
	}
	return collectOutbox(rows)
}
