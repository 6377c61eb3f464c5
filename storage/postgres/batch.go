package postgres

import (
	"bytes"
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Statements of a worker that applies a partition's batch of events in one
// transaction: each takes or writes every member of the batch at once.

// MarkProcessedBatch records the events as processed by consumer and
// returns those that were not before (the others are redeliveries).
func MarkProcessedBatch(ctx context.Context, q Querier, consumer string, eventIDs []string) (map[string]bool, error) {
	return queryStringSet(ctx, q, "mark processed", `INSERT INTO processed_events (consumer, event_id)
		SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING event_id`, consumer, eventIDs)
}

// RecordRefusals keeps, with consumer's processed marks of the events
// (event id → reason), why it refused them (migration 00042).
func RecordRefusals(ctx context.Context, q Querier, consumer string, refusals map[string]string) error {
	if len(refusals) == 0 {
		return nil
	}
	ids, reasons := make([]string, 0, len(refusals)), make([]string, 0, len(refusals))
	for id, r := range refusals {
		ids, reasons = append(ids, id), append(reasons, r)
	}
	return exec(ctx, q, "record refusals", `UPDATE processed_events p SET refusal = x.r
		  FROM unnest($2::text[], $3::text[]) AS x(id, r) WHERE p.consumer = $1 AND p.event_id = x.id`, consumer, ids, reasons)
}

// StoredRefusals returns why consumer refused those of the events it
// refused (event id → reason).
func StoredRefusals(ctx context.Context, q Querier, consumer string, eventIDs []string) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT event_id, refusal FROM processed_events WHERE consumer = $1 AND event_id = ANY($2) AND refusal IS NOT NULL`,
		consumer, eventIDs)
	if err != nil {
		return nil, fmt.Errorf("stored refusals: %w", err)
	}
	out := map[string]string{}
	var id, reason string
	if _, err := pgx.ForEachRow(rows, []any{&id, &reason}, func() error {
		out[id] = reason
		return nil
	}); err != nil {
		return nil, fmt.Errorf("stored refusals: %w", err)
	}
	return out, nil
}

// LockedMember is a member row locked for the rest of a transaction.
type LockedMember struct {
	Attributes map[string]string
	MergedInto *uuid.UUID
	ChangeSeq  int64
}

// lockMemberRow is how a writer of a member locks the member's row for the
// rest of its transaction (every writer does, first, so that a member's
// writes and its change sequence are serialised). NO KEY UPDATE rather
// than UPDATE: no writer changes a member's key, and FOR UPDATE would also
// block every other transaction that inserts a row whose foreign key
// names the member (ingest recording a resolution in ingested_events, for
// one) until the writer commits, and deadlock with it when that
// transaction already holds a member the writer locks next. Ingest's
// transaction covers a partition's batch and the workers lock a batch's
// members in id order, so the two deadlocked in ordinary runs (PostgreSQL
// broke each cycle after deadlock_timeout, and the loser retried); and a
// slow worker batch held ingest up. Writers still exclude each other: NO
// KEY UPDATE conflicts with itself and with UPDATE.
const lockMemberRow = ` FOR NO KEY UPDATE`

// CompareMemberIDs orders member ids as PostgreSQL orders uuids, byte by
// byte: the order in which every writer that holds several members locks
// them, so that no two transactions each hold a member the other waits
// for.
func CompareMemberIDs(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) }

// LockMembersForUpdate locks the members' rows (lockMemberRow), in member
// id order (so two batches never wait for each other in opposite orders),
// and returns them; a member that does not exist is left out.
func LockMembersForUpdate(ctx context.Context, tx pgx.Tx, ids []uuid.UUID) (map[uuid.UUID]LockedMember, error) {
	return queryByMember(ctx, tx, "lock members", `SELECT member_id, attributes, merged_into, change_seq FROM members
		WHERE member_id = ANY($1) AND status <> 'erased' ORDER BY member_id`+lockMemberRow, ids,
		func(m *LockedMember) []any { return []any{&m.Attributes, &m.MergedInto, &m.ChangeSeq} })
}

// queryByMember runs a statement over the members ids ($1) whose rows are
// a member id, then the columns of a T (columns gives where to scan them),
// and returns the rows by member; what names the statement in an error.
func queryByMember[T any](ctx context.Context, q Querier, what, sql string, ids []uuid.UUID, columns func(*T) []any) (map[uuid.UUID]T, error) {
	rows, err := q.Query(ctx, sql, ids)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	out := make(map[uuid.UUID]T, len(ids))
	for rows.Next() {
		var id uuid.UUID
		var v T
		if err := rows.Scan(append([]any{&id}, columns(&v)...)...); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out[id] = v
	}
	return out, rows.Err()
}

// SetAttributesBatch replaces members' whole attributes.
func SetAttributesBatch(ctx context.Context, tx pgx.Tx, members []uuid.UUID, attrs []map[string]string) error {
	if len(members) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	QueueAttributes(b, members, attrs)
	return tx.SendBatch(ctx, b).Close()
}

// QueueAttributes queues members' whole attributes.
func QueueAttributes(b *pgx.Batch, members []uuid.UUID, attrs []map[string]string) {
	if len(members) == 0 {
		return
	}
	b.Queue(`UPDATE members m SET attributes = x.attrs FROM unnest($1::uuid[], $2::jsonb[]) AS x(member_id, attrs)
		WHERE m.member_id = x.member_id`, members, attrs)
}

// LookupIngestBatch is LookupIngest for many events: the resolutions
// recorded for the events, and the stored identifiers matching any of the
// keys, in one round trip.
func LookupIngestBatch(ctx context.Context, q Batcher, eventIDs []string, keys []IdentifierKey) (map[string]IngestedEvent, []IdentifierRow, error) {
	prev := map[string]IngestedEvent{}
	var found []IdentifierRow
	b := &pgx.Batch{}
	b.Queue(ingestedEventsSQL, eventIDs).Query(func(rows pgx.Rows) error { return scanIngestedEvents(rows, prev) })
	queueFindIdentifiers(b, keys, &found)
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, fmt.Errorf("ingest lookup: %w", err)
	}
	return prev, found, nil
}

// InsertIngestedEvents records events' resolutions, unless a concurrent
// ingest already did, and returns the ids it recorded.
func InsertIngestedEvents(ctx context.Context, q Querier, es []IngestedEvent) (map[string]bool, error) {
	ids := make([]string, len(es))
	members := make([]uuid.UUID, len(es))
	created := make([]bool, len(es))
	res := make([][]byte, len(es))
	fps := make([][]byte, len(es))
	for i, e := range es {
		ids[i], members[i], created[i], res[i], fps[i] = e.EventID, e.MemberID, e.Created, e.Resolution, e.Fingerprint
	}
	return queryStringSet(ctx, q, "insert ingested events", `INSERT INTO ingested_events (event_id, member_id, created, resolution, fingerprint)
		SELECT * FROM unnest($1::text[], $2::uuid[], $3::bool[], $4::bytea[], $5::bytea[]) ON CONFLICT (event_id) DO NOTHING RETURNING event_id`,
		ids, members, created, res, fps)
}
