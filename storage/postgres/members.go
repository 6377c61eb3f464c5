package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// IdentifierKey is how an identifier is looked up: its type, scope and the
// keyed hash of its normalised value.
type IdentifierKey struct {
	Type  int16
	Scope string
	Hash  []byte
}

// IdentifierRow is a stored identifier of a member.
type IdentifierRow struct {
	IdentifierKey
	MemberID uuid.UUID
	// The member the identifier was first linked to (see migration 00004).
	OriginMemberID uuid.UUID
	Unique         bool
	Cipher         []byte // AES-GCM ciphertext for display; phone and e-mail only
	KeyID          string
	Masked         string
	LinkedAt       time.Time
	CauseID        string
}

// MemberRow is a stored member.
type MemberRow struct {
	MemberID   uuid.UUID
	CreatedAt  time.Time
	Status     string
	MergedInto *uuid.UUID
	ChangeSeq  int64
	Attributes map[string]string
	MergeCount int
}

// HeldKey is the key of an identifier a member holds.
type HeldKey struct {
	Member uuid.UUID
	IdentifierKey
}

// KeysHeldBy returns the keys of every identifier the members hold, read
// by member (their rows sit together), not by key: a reconciliation of
// members against a source asks what each member holds, and a million
// members' keyed hashes probed one by one are that many random reads.
func KeysHeldBy(ctx context.Context, q Querier, members []uuid.UUID) ([]HeldKey, error) {
	rows, err := q.Query(ctx, `SELECT member_id, id_type, scope, value_hash FROM member_identifiers WHERE member_id = ANY($1)`, members)
	return collectAll(rows, err, func(row pgx.CollectableRow) (HeldKey, error) {
		var h HeldKey
		err := row.Scan(&h.Member, &h.Type, &h.Scope, &h.Hash)
		return h, err
	}, "identifiers held by members")
}

// FindIdentifiers returns the stored identifiers matching any of keys.
func FindIdentifiers(ctx context.Context, q Querier, keys []IdentifierKey) ([]IdentifierRow, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	rows, err := q.Query(ctx, findIdentifiersSQL, keyArrays(keys)...)
	return collectAll(rows, err, scanIdentifier, "find identifiers")
}

// findIdentifiersSQL probes, for each key, the index of unique
// identifiers and the (small) one of shared identifiers (migration 00032:
// a unique identifier is in one index, not two).
var findIdentifiersSQL = `
		SELECT i.* FROM unnest($1::smallint[], $2::text[], $3::bytea[]) AS k(id_type, scope, value_hash)
		 CROSS JOIN LATERAL (
		       SELECT ` + identifierColumns("u") + ` FROM member_identifiers u
		        WHERE u.is_unique AND u.id_type = k.id_type AND u.scope = k.scope AND u.value_hash = k.value_hash
		       UNION ALL
		       SELECT ` + identifierColumns("s") + ` FROM member_identifiers s
		        WHERE NOT s.is_unique AND s.id_type = k.id_type AND s.scope = k.scope AND s.value_hash = k.value_hash) i`

func keyArrays(keys []IdentifierKey) []any {
	types := make([]int16, len(keys))
	scopes := make([]string, len(keys))
	hashes := make([][]byte, len(keys))
	for i, k := range keys {
		types[i], scopes[i], hashes[i] = k.Type, k.Scope, k.Hash
	}
	return []any{types, scopes, hashes}
}

// queueFindIdentifiers queues FindIdentifiers' lookup of keys into a batch;
// found receives the rows.
func queueFindIdentifiers(b *pgx.Batch, keys []IdentifierKey, found *[]IdentifierRow) {
	b.Queue(findIdentifiersSQL, keyArrays(keys)...).Query(func(rows pgx.Rows) error {
		var err error
		*found, err = pgx.CollectRows(rows, scanIdentifier)
		return err
	})
}

// LookupIngest asks, in one round trip, whether an event was resolved before
// (prev is nil if not) and which stored identifiers match keys: the
// read-only fast path of ingest's resolution.
func LookupIngest(ctx context.Context, pool *pgxpool.Pool, eventID string, keys []IdentifierKey) (prev *IngestedEvent, found []IdentifierRow, err error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT member_id, created, resolution, fingerprint FROM ingested_events WHERE event_id = $1`, eventID).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			e := IngestedEvent{EventID: eventID}
			if err := rows.Scan(&e.MemberID, &e.Created, &e.Resolution, &e.Fingerprint); err != nil {
				return err
			}
			prev = &e
		}
		return rows.Err()
	})
	queueFindIdentifiers(b, keys, &found)
	if err := pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, fmt.Errorf("ingest lookup: %w", err)
	}
	return prev, found, nil
}

// InsertIngestedEventIfNew records an event's resolution unless a
// concurrent ingest already did; it reports whether this one did.
func InsertIngestedEventIfNew(ctx context.Context, q Querier, e IngestedEvent) (bool, error) {
	affected, err := execRows(ctx, q, "insert ingested event", `INSERT INTO ingested_events (event_id, member_id, created, resolution, fingerprint) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (event_id) DO NOTHING`, e.EventID, e.MemberID, e.Created, e.Resolution, e.Fingerprint)
	return affected == 1, err
}

// LookupIdempotent asks, in one round trip, whether an idempotency key was
// used in scope and which stored identifiers match keys: the read-only fast
// path of a resolution.
func LookupIdempotent(ctx context.Context, pool *pgxpool.Pool, scope, key string, keys []IdentifierKey) (keyUsed bool, found []IdentifierRow, err error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT EXISTS (SELECT FROM idempotency_keys WHERE scope = $1 AND key = $2)`, scope, key).
		QueryRow(func(row pgx.Row) error { return row.Scan(&keyUsed) })
	queueFindIdentifiers(b, keys, &found)
	if err := pool.SendBatch(ctx, b).Close(); err != nil {
		return false, nil, fmt.Errorf("resolve lookup: %w", err)
	}
	return keyUsed, found, nil
}

// ListIdentifiers returns a member's identifiers in the order they were linked.
func ListIdentifiers(ctx context.Context, q Querier, memberID uuid.UUID) ([]IdentifierRow, error) {
	rows, err := q.Query(ctx, `
		SELECT `+identifierColumns("i")+`
		  FROM member_identifiers i WHERE i.member_id = $1 ORDER BY i.identifier_id`, memberID)
	return collectAll(rows, err, scanIdentifier, "list identifiers")
}

func identifierColumns(t string) string {
	return strings.ReplaceAll(`t.member_id, t.origin_member_id, t.is_unique, t.id_type, t.scope, t.value_hash, t.value_cipher,
		coalesce(t.key_id, ''), t.masked, t.linked_at, t.cause_id`, "t.", t+".")
}

func scanIdentifier(row pgx.CollectableRow) (IdentifierRow, error) {
	var r IdentifierRow
	err := row.Scan(&r.MemberID, &r.OriginMemberID, &r.Unique, &r.Type, &r.Scope, &r.Hash, &r.Cipher, &r.KeyID, &r.Masked, &r.LinkedAt, &r.CauseID)
	return r, err
}

// LockMemberRows locks the members' rows as every writer of a member does
// (lockMemberRow), in id order, and returns nothing: in a Pipelined
// transaction it waits for the next statement. A transaction that will
// write several members takes them all at once this way, in the order the
// stages take theirs, so that it never holds one while waiting for another
// that a stage holds while waiting for the first.
func LockMemberRows(ctx context.Context, q Querier, ids []uuid.UUID) error {
	if len(ids) == 0 {
		return nil
	}
	return execLater(ctx, q, "lock members", `SELECT member_id FROM members WHERE member_id = ANY($1) ORDER BY member_id`+lockMemberRow, ids)
}

// InsertMember creates a member.
func InsertMember(ctx context.Context, q Querier, id uuid.UUID, at time.Time) error {
	return execLater(ctx, q, "insert member", `INSERT INTO members (member_id, created_at) VALUES ($1, $2)`, id, at)
}

// InsertIdentifier links an identifier to a member. A unique violation
// (see IsUniqueViolation) means another member already holds the value.
func InsertIdentifier(ctx context.Context, q Querier, r IdentifierRow) error {
	var keyID *string
	if r.KeyID != "" {
		keyID = &r.KeyID
	}
	origin := r.OriginMemberID
	if origin == uuid.Nil {
		origin = r.MemberID
	}
	return execLater(ctx, q, "insert identifier", `
		INSERT INTO member_identifiers (member_id, origin_member_id, is_unique, id_type, scope, value_hash, value_cipher, key_id, masked, linked_at, cause_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		r.MemberID, origin, r.Unique, r.Type, r.Scope, r.Hash, r.Cipher, keyID, r.Masked, r.LinkedAt, r.CauseID)
}

// GetMember returns a member, or ErrNotFound.
func GetMember(ctx context.Context, q Querier, id uuid.UUID) (MemberRow, error) {
	var m MemberRow
	err := q.QueryRow(ctx, `
		SELECT member_id, created_at, status, merged_into, change_seq, attributes, merge_count FROM members WHERE member_id = $1`, id).
		Scan(&m.MemberID, &m.CreatedAt, &m.Status, &m.MergedInto, &m.ChangeSeq, &m.Attributes, &m.MergeCount)
	return m, rowErr(err, "get member", "member %s", id)
}

// IngestedEvent is ingest's record of a resolved channel event.
type IngestedEvent struct {
	EventID  string
	MemberID uuid.UUID
	Created  bool
	// Serialized answer given the first time, returned on redelivery.
	Resolution []byte
	// Fingerprint is a keyed hash of what the event said (identity's
	// fingerprint); nil for events recorded before migration 00041 or
	// erased.
	Fingerprint []byte
}

// GetIngestedEvents is GetIngestedEvent for many events, by event id
// (those not recorded are absent).
func GetIngestedEvents(ctx context.Context, q Querier, eventIDs []string) (map[string]IngestedEvent, error) {
	rows, err := q.Query(ctx, ingestedEventsSQL, eventIDs)
	if err != nil {
		return nil, fmt.Errorf("read ingested events: %w", err)
	}
	out := map[string]IngestedEvent{}
	if err := scanIngestedEvents(rows, out); err != nil {
		return nil, fmt.Errorf("read ingested events: %w", err)
	}
	return out, nil
}

// ingestedEventsSQL reads the resolutions recorded for the event ids $1
// (scanIngestedEvents).
const ingestedEventsSQL = `SELECT event_id, member_id, created, resolution, fingerprint FROM ingested_events WHERE event_id = ANY($1)`

// scanIngestedEvents adds the rows of ingestedEventsSQL to into, by event
// id, and closes them.
func scanIngestedEvents(rows pgx.Rows, into map[string]IngestedEvent) error {
	var e IngestedEvent
	_, err := pgx.ForEachRow(rows, []any{&e.EventID, &e.MemberID, &e.Created, &e.Resolution, &e.Fingerprint}, func() error {
		into[e.EventID] = e
		return nil
	})
	return err
}

// GetIngestedEvent returns the earlier resolution of an event, or ErrNotFound.
func GetIngestedEvent(ctx context.Context, q Querier, eventID string) (IngestedEvent, error) {
	e := IngestedEvent{EventID: eventID}
	err := q.QueryRow(ctx, `SELECT member_id, created, resolution, fingerprint FROM ingested_events WHERE event_id = $1`, eventID).
		Scan(&e.MemberID, &e.Created, &e.Resolution, &e.Fingerprint)
	return e, rowErrOr(err, "get ingested event", ErrNotFound)
}

// InsertIngestedEvent records an event's resolution. A unique violation means
// a concurrent ingest of the same event won.
func InsertIngestedEvent(ctx context.Context, q Querier, e IngestedEvent) error {
	return execLater(ctx, q, "insert ingested event", `INSERT INTO ingested_events (event_id, member_id, created, resolution, fingerprint) VALUES ($1, $2, $3, $4, $5)`,
		e.EventID, e.MemberID, e.Created, e.Resolution, e.Fingerprint)
}

// MarkProcessed records that consumer applied eventID. It reports false when
// the event was already processed: the caller must then change nothing.
func MarkProcessed(ctx context.Context, q Querier, consumer, eventID string) (bool, error) {
	affected, err := execRows(ctx, q, "mark processed", `
		INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
		consumer, eventID)
	return affected == 1, err
}
