package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Batcher runs a batch of statements: a pool (one implicit transaction) or
// a transaction.
type Batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// ProfileRow is what a member's profile is read from.
type ProfileRow struct {
	CreatedAt  time.Time
	Sequence   int64
	Attributes map[string]string
	Merged     bool
	Balance    int64
	Tier       string
	// LabelsPB are the labels as stored since labels_pb; LabelsJSON those of
	// rows written before. LabelsAt is when they were computed (nil: never).
	LabelsPB   []byte
	LabelsJSON map[string]any
	LabelsAt   *time.Time
	Consents   []ConsentRow
}

// ConsentRow is a member's decision about one purpose.
type ConsentRow struct {
	Purpose   int16
	Granted   bool
	DecidedAt time.Time
}

// ReadProfile reads a member's profile in one round trip; ErrNotFound when
// the member does not exist.
func ReadProfile(ctx context.Context, q Batcher, id uuid.UUID) (ProfileRow, error) {
	var p ProfileRow
	found := false
	b := &pgx.Batch{}
	b.Queue(`SELECT m.created_at, m.change_seq, m.attributes, m.merged_into IS NOT NULL,
		       coalesce(a.balance, 0), coalesce(ls.state->>'tier', ''),
		       f.labels_pb, CASE WHEN f.labels_pb IS NULL THEN f.labels END, f.updated_at
		  FROM members m
		  LEFT JOIN points_accounts a ON a.member_id = m.member_id
		  LEFT JOIN loyalty_state ls ON ls.member_id = m.member_id
		  LEFT JOIN member_features f ON f.member_id = m.member_id
		 WHERE m.member_id = $1 AND m.status <> 'erased'`, id).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			found = true
			if err := rows.Scan(&p.CreatedAt, &p.Sequence, &p.Attributes, &p.Merged, &p.Balance, &p.Tier,
				&p.LabelsPB, &p.LabelsJSON, &p.LabelsAt); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	b.Queue(`SELECT purpose, granted, decided_at FROM member_consents WHERE member_id = $1 ORDER BY purpose`, id).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var c ConsentRow
				if err := rows.Scan(&c.Purpose, &c.Granted, &c.DecidedAt); err != nil {
					return err
				}
				p.Consents = append(p.Consents, c)
			}
			return rows.Err()
		})
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return p, fmt.Errorf("read profile: %w", err)
	}
	if !found {
		return p, fmt.Errorf("member %s: %w", id, ErrNotFound)
	}
	return p, nil
}

// ErrMemberMoved is LockMemberAttributes' answer for a member merged into
// another by a transaction that held the lock first, after the caller
// found it: look the survivor up again (CanonicalMember) and lock it.
var ErrMemberMoved = errors.New("merged into another member meanwhile")

// LockCanonicalMember locks the member id stands for now (CanonicalMember)
// and returns it with its attributes: one merged into another while this
// waited for its lock is followed to the survivor, locked in turn.
func LockCanonicalMember(ctx context.Context, tx pgx.Tx, id uuid.UUID) (uuid.UUID, map[string]string, error) {
	var attrs map[string]string
	member, err := FollowingMerges(ctx, tx, id, func(member uuid.UUID) (err error) {
		attrs, err = LockMemberAttributes(ctx, tx, member)
		return err
	})
	return member, attrs, err
}

// FollowingMerges runs lock on the member id stands for now
// (CanonicalMember) and returns that member; when lock finds it merged
// into another meanwhile (ErrMemberMoved: lock waited for the merge), the
// survivor is looked up and locked in turn. When id was merged into the
// member, it is looked up again once lock has waited for the member (and
// locked it, or found it erased): when an unmerge that held the lock
// meanwhile made id a member of its own again, the survivor — a person of
// its own since — is not id's, and ErrMemberSeparated restarts the
// caller's transaction (RetryTx), which lets go of the survivor's lock
// before it locks id (every writer locks members in id order). Once the
// survivor is locked, no unmerge can separate them.
func FollowingMerges(ctx context.Context, q Querier, id uuid.UUID, lock func(member uuid.UUID) error) (uuid.UUID, error) {
	for range 16 {
		member, err := CanonicalMember(ctx, q, id)
		if err != nil {
			return uuid.Nil, err
		}
		err = lock(member)
		if errors.Is(err, ErrMemberMoved) {
			continue
		}
		if member == id || err != nil && !errors.Is(err, ErrNotFound) {
			return member, err
		}
		now, cerr := CanonicalMember(ctx, q, id)
		if cerr != nil {
			return uuid.Nil, cerr
		}
		if now != member {
			return uuid.Nil, fmt.Errorf("member %s: %w from %s", id, ErrMemberSeparated, member)
		}
		return member, err
	}
	return uuid.Nil, fmt.Errorf("member %s: merged again and again while waiting for it", id)
}

// ErrMemberSeparated says that a member merged into another was unmerged
// from it while a writer waited for the survivor's lock: RetryTx runs the
// transaction again, which finds the member on its own.
var ErrMemberSeparated = errors.New("unmerged meanwhile")

// LockMemberAttributes locks a member's row for the rest of tx and returns
// its attributes. An unknown member is ErrNotFound, and so is one erased
// (by a transaction that held the lock first, after the caller found it);
// one merged meanwhile is ErrMemberMoved.
func LockMemberAttributes(ctx context.Context, tx pgx.Tx, member uuid.UUID) (map[string]string, error) {
	var attrs map[string]string
	var status string
	err := tx.QueryRow(ctx, `SELECT attributes, status FROM members WHERE member_id = $1`+lockMemberRow, member).Scan(&attrs, &status)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && status == "erased" {
		return nil, fmt.Errorf("member %s: %w", member, ErrNotFound)
	}
	if err == nil && status == "merged" {
		return nil, fmt.Errorf("member %s: %w", member, ErrMemberMoved)
	}
	if err != nil {
		return nil, fmt.Errorf("lock member: %w", err)
	}
	if attrs == nil {
		attrs = map[string]string{}
	}
	return attrs, nil
}

// attributesToSeal is the condition on a members row whose attributes hold
// a value of one of the PII attributes $1 that is not sealed, or a value
// sealed under a platform key rather than a member's data key (sealed
// values start "pii:v1:<key id>:", a member's key id "m/<member id>").
const attributesToSeal = `EXISTS (SELECT 1 FROM jsonb_each_text(m.attributes) e
	WHERE (e.key = ANY($1::text[]) AND left(e.value, 7) <> 'pii:v1:')
	   OR (left(e.value, 7) = 'pii:v1:' AND left(e.value, 9) <> 'pii:v1:m/'))`

// CountAttributesToSeal counts the members whose attributes need sealing
// or re-sealing (attributesToSeal).
func CountAttributesToSeal(ctx context.Context, q Querier, pii []string) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, `SELECT count(*) FROM members m WHERE `+attributesToSeal, pii).Scan(&n); err != nil {
		return 0, fmt.Errorf("count attributes to seal: %w", err)
	}
	return n, nil
}

// ClaimAttributesToSeal locks up to limit members after the member id after
// whose attributes need sealing or re-sealing, in member id order, skipping
// rows another transaction holds (a later pass takes them).
func ClaimAttributesToSeal(ctx context.Context, tx pgx.Tx, pii []string, after uuid.UUID, limit int) ([]uuid.UUID, []map[string]string, error) {
	rows, err := tx.Query(ctx, `SELECT member_id, attributes FROM members m WHERE member_id > $2 AND `+attributesToSeal+`
		ORDER BY member_id LIMIT $3`+lockMemberRow+` SKIP LOCKED`, pii, after, limit)
	if err != nil {
		return nil, nil, fmt.Errorf("claim attributes to seal: %w", err)
	}
	defer rows.Close()
	var ids []uuid.UUID
	var attrs []map[string]string
	for rows.Next() {
		var id uuid.UUID
		var a map[string]string
		if err := rows.Scan(&id, &a); err != nil {
			return nil, nil, fmt.Errorf("claim attributes to seal: %w", err)
		}
		ids, attrs = append(ids, id), append(attrs, a)
	}
	return ids, attrs, rows.Err()
}

// ConsentOf returns a member's decision for a purpose; nil when never made.
func ConsentOf(ctx context.Context, q Querier, member uuid.UUID, purpose int16) (*bool, error) {
	var granted *bool
	if err := q.QueryRow(ctx, `SELECT granted FROM member_consents WHERE member_id = $1 AND purpose = $2`,
		member, purpose).Scan(&granted); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read consent: %w", err)
	}
	return granted, nil
}

// SetConsent records a member's decision for a purpose.
func SetConsent(ctx context.Context, q Querier, member uuid.UUID, purpose int16, granted bool, at time.Time, cause string) error {
	return exec(ctx, q, "store consent", `INSERT INTO member_consents (member_id, purpose, granted, decided_at, cause) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (member_id, purpose) DO UPDATE SET granted = EXCLUDED.granted, decided_at = EXCLUDED.decided_at, cause = EXCLUDED.cause`,
		member, purpose, granted, at, cause)
}
