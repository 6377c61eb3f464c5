package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Statements of a legacy import (membercenter import) and its
// reconciliation (import verify) that take or write a chunk of members at
// once: one statement per kind of row, as the stream core's stages write a
// batch.

// LockLegacyIDs is LockLegacyID for many legacy records of source, in one
// statement, the locks taken in the order of their keys (two runs never
// wait for each other in opposite orders).
func LockLegacyIDs(ctx context.Context, tx pgx.Tx, source string, legacyIDs []string) error {
	// The subquery's ORDER BY keeps it from being flattened: the locks are
	// taken in key order.
	return exec(ctx, tx, "lock legacy ids", `SELECT pg_advisory_xact_lock(k) FROM (
		SELECT DISTINCT hashtextextended($1 || '/' || id, 0) AS k FROM unnest($2::text[]) AS t(id) ORDER BY 1) s`, source, legacyIDs)
}

// FindLegacyMembers is FindLegacyMember for many legacy ids of source:
// the records found, by legacy id (a kept erased record by its key).
func FindLegacyMembers(ctx context.Context, q Querier, source string, legacyIDs []string) (map[string]LegacyMember, error) {
	rows, err := q.Query(ctx, `SELECT legacy_id, member_id, row_sha256, imported_at, erased FROM legacy_members
		WHERE legacy_id = ANY($2) AND source = $1`, source, legacyIDs)
	if err != nil {
		return nil, fmt.Errorf("find legacy members: %w", err)
	}
	defer rows.Close()
	out := map[string]LegacyMember{}
	for rows.Next() {
		l := LegacyMember{Source: source}
		if err := rows.Scan(&l.LegacyID, &l.MemberID, &l.RowSHA256, &l.ImportedAt, &l.Erased); err != nil {
			return nil, fmt.Errorf("find legacy members: %w", err)
		}
		out[l.LegacyID] = l
	}
	return out, rows.Err()
}

// QueueLegacyMembers queues InsertLegacyMember of many records.
func QueueLegacyMembers(b *pgx.Batch, ls []LegacyMember) {
	if len(ls) == 0 {
		return
	}
	sources, ids, members, shas, ats := make([]string, len(ls)), make([]string, len(ls)), make([]uuid.UUID, len(ls)), make([][]byte, len(ls)), make([]time.Time, len(ls))
	for i, l := range ls {
		sources[i], ids[i], members[i], shas[i], ats[i] = l.Source, l.LegacyID, l.MemberID, l.RowSHA256, l.ImportedAt
	}
	b.Queue(`INSERT INTO legacy_members (source, legacy_id, member_id, row_sha256, imported_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bytea[], $5::timestamptz[])`, sources, ids, members, shas, ats)
}

// MergedLegacyMembers lists the members the records of source became that
// were merged into another member since.
func MergedLegacyMembers(ctx context.Context, q Querier, source string) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, q, "merged legacy members", `SELECT m.member_id FROM legacy_members l JOIN members m ON m.member_id = l.member_id
		WHERE l.source = $1 AND NOT l.erased AND m.merged_into IS NOT NULL`, source)
}

// LegacyMembersWithoutFeatures lists the records of source whose member
// (live, not merged) has no features row: its labels were never computed.
func LegacyMembersWithoutFeatures(ctx context.Context, q Querier, source string) ([]LegacyMember, error) {
	rows, err := q.Query(ctx, `SELECT l.legacy_id, l.member_id FROM legacy_members l
		JOIN members m ON m.member_id = l.member_id AND m.status <> 'erased' AND m.merged_into IS NULL
		WHERE l.source = $1 AND NOT l.erased
		  AND NOT EXISTS (SELECT 1 FROM member_features f WHERE f.member_id = l.member_id)
		ORDER BY l.member_id`, source)
	if err != nil {
		return nil, fmt.Errorf("legacy members without features: %w", err)
	}
	defer rows.Close()
	var out []LegacyMember
	for rows.Next() {
		l := LegacyMember{Source: source}
		if err := rows.Scan(&l.LegacyID, &l.MemberID); err != nil {
			return nil, fmt.Errorf("legacy members without features: %w", err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// AnalyzeMembers refreshes the planner's statistics of the tables a bulk
// import filled, as after any bulk load: left to autovacuum, they can lag
// the load, and a fold of merged members (FoldRoots) planned on a table it
// believes full of merged rows reads every member row, once per batch.
func AnalyzeMembers(ctx context.Context, q Querier) error {
	return exec(ctx, q, "analyze members", `ANALYZE members, member_identifiers, legacy_members, member_features`)
}

// QueueNewMembers queues the insert of new members, created at their
// times.
func QueueNewMembers(b *pgx.Batch, ids []uuid.UUID, createdAt []time.Time) {
	if len(ids) == 0 {
		return
	}
	b.Queue(`INSERT INTO members (member_id, created_at) SELECT * FROM unnest($1::uuid[], $2::timestamptz[])`, ids, createdAt)
}

// QueueIdentifiers queues InsertIdentifier of many rows (a unique
// violation: another member holds a value).
func QueueIdentifiers(b *pgx.Batch, rs []IdentifierRow) {
	if len(rs) == 0 {
		return
	}
	n := len(rs)
	members, origins, uniques := make([]uuid.UUID, n), make([]uuid.UUID, n), make([]bool, n)
	types, scopes, hashes, ciphers := make([]int16, n), make([]string, n), make([][]byte, n), make([][]byte, n)
	keyIDs, masked, linked, causes := make([]*string, n), make([]string, n), make([]time.Time, n), make([]string, n)
	for i, r := range rs {
		origin := r.OriginMemberID
		if origin == uuid.Nil {
			origin = r.MemberID
		}
		if r.KeyID != "" {
			keyIDs[i] = &rs[i].KeyID
		}
		members[i], origins[i], uniques[i] = r.MemberID, origin, r.Unique
		types[i], scopes[i], hashes[i], ciphers[i] = r.Type, r.Scope, r.Hash, r.Cipher
		masked[i], linked[i], causes[i] = r.Masked, r.LinkedAt, r.CauseID
	}
	b.Queue(`INSERT INTO member_identifiers (member_id, origin_member_id, is_unique, id_type, scope, value_hash, value_cipher, key_id, masked, linked_at, cause_id)
		SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::smallint[], $5::text[], $6::bytea[], $7::bytea[], $8::text[], $9::text[], $10::timestamptz[], $11::text[])`,
		members, origins, uniques, types, scopes, hashes, ciphers, keyIDs, masked, linked, causes)
}

// QueueAudits queues InsertAudit of many records.
func QueueAudits(b *pgx.Batch, as []AuditRow) {
	if len(as) == 0 {
		return
	}
	n := len(as)
	ids, ats, actions, actors, channels, causes := make([]uuid.UUID, n), make([]time.Time, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	members, others := make([]uuid.UUID, n), make([]*uuid.UUID, n)
	idents, befores, afters, reasons := make([]json.RawMessage, n), make([]json.RawMessage, n), make([]json.RawMessage, n), make([]string, n)
	orEmpty := func(j json.RawMessage, empty string) json.RawMessage {
		if j == nil {
			return json.RawMessage(empty)
		}
		return j
	}
	for i, a := range as {
		ids[i], ats[i], actions[i], actors[i], channels[i], causes[i] = a.AuditID, a.At, a.Action, a.Actor, a.Channel, a.CauseID
		members[i], others[i] = a.MemberID, a.OtherMemberID
		idents[i], befores[i], afters[i], reasons[i] = orEmpty(a.Identifiers, "[]"), orEmpty(a.Before, "{}"), orEmpty(a.After, "{}"), a.Reason
	}
	b.Queue(`INSERT INTO identity_audit (audit_id, at, action, actor, channel, cause_id, member_id, other_member_id, identifiers, before, after, reason)
		SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[], $8::uuid[], $9::jsonb[], $10::jsonb[], $11::jsonb[], $12::text[])`,
		ids, ats, actions, actors, channels, causes, members, others, idents, befores, afters, reasons)
}

// ConsentWrite is a member's decision for a purpose, to be stored.
type ConsentWrite struct {
	Member    uuid.UUID
	Purpose   int16
	Granted   bool
	DecidedAt time.Time
	Cause     string
}

// QueueConsents queues SetConsent of many decisions (one per member and
// purpose).
func QueueConsents(b *pgx.Batch, cs []ConsentWrite) {
	if len(cs) == 0 {
		return
	}
	n := len(cs)
	members, purposes, granted, ats, causes := make([]uuid.UUID, n), make([]int16, n), make([]bool, n), make([]time.Time, n), make([]string, n)
	for i, c := range cs {
		members[i], purposes[i], granted[i], ats[i], causes[i] = c.Member, c.Purpose, c.Granted, c.DecidedAt, c.Cause
	}
	b.Queue(`INSERT INTO member_consents (member_id, purpose, granted, decided_at, cause)
		SELECT * FROM unnest($1::uuid[], $2::smallint[], $3::bool[], $4::timestamptz[], $5::text[])
		ON CONFLICT (member_id, purpose) DO UPDATE SET granted = EXCLUDED.granted, decided_at = EXCLUDED.decided_at, cause = EXCLUDED.cause`,
		members, purposes, granted, ats, causes)
}

// MemberView is what a reconciliation reads of a member row.
type MemberView struct {
	Status     string
	MergedInto *uuid.UUID
	Attributes map[string]string
	// Absorbing: other members were merged into this one.
	Absorbing bool
}

// MemberViews reads the members' rows (those that exist), and whether
// others were merged into each, in one statement.
func MemberViews(ctx context.Context, q Querier, ids []uuid.UUID) (map[uuid.UUID]MemberView, error) {
	return queryByMember(ctx, q, "member views", `SELECT member_id, status, merged_into, attributes,
		EXISTS (SELECT 1 FROM members o WHERE o.merged_into = m.member_id)
		FROM members m WHERE member_id = ANY($1)`, ids,
		func(v *MemberView) []any { return []any{&v.Status, &v.MergedInto, &v.Attributes, &v.Absorbing} })
}

// ConsentsOfMembers reads the members' consent decisions, by member and
// purpose.
func ConsentsOfMembers(ctx context.Context, q Querier, ids []uuid.UUID) (map[uuid.UUID]map[int16]bool, error) {
	rows, err := q.Query(ctx, `SELECT member_id, purpose, granted FROM member_consents WHERE member_id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("read consents: %w", err)
	}
	defer rows.Close()
	out := map[uuid.UUID]map[int16]bool{}
	for rows.Next() {
		var id uuid.UUID
		var p int16
		var g bool
		if err := rows.Scan(&id, &p, &g); err != nil {
			return nil, fmt.Errorf("read consents: %w", err)
		}
		if out[id] == nil {
			out[id] = map[int16]bool{}
		}
		out[id][p] = g
	}
	return out, rows.Err()
}

// EverMergedAway lists which of the members were ever merged into another
// (an unmerge since included): their events may be stored under another
// member's id.
func EverMergedAway(ctx context.Context, q Querier, ids []uuid.UUID) (map[uuid.UUID]bool, error) {
	got, err := queryValues[uuid.UUID](ctx, q, "merged members", `SELECT DISTINCT source_member_id FROM merges WHERE source_member_id = ANY($1)`, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[uuid.UUID]bool, len(got))
	for _, id := range got {
		out[id] = true
	}
	return out, nil
}
