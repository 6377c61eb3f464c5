package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// The tag engine's tables: member_features (a member's feature state and
// labels), member_label_sets (the labels that are true, which benefit
// and campaign conditions read), device_members (who was seen on a device),
// profile_exports (members whose labels ClickHouse has yet to get) and
// tag_backfills (a catalogue's backfill progress).

// MemberForUpdate locks a member's row for the rest of tx (every writer of a
// member locks it first: lockMemberRow) and returns its attributes, the member it was
// merged into (nil when active) and its last change sequence.
func MemberForUpdate(ctx context.Context, tx pgx.Tx, id uuid.UUID) (attrs map[string]string, mergedInto *uuid.UUID, changeSeq int64, err error) {
	err = tx.QueryRow(ctx, `SELECT attributes, merged_into, change_seq FROM members WHERE member_id = $1`+lockMemberRow, id).
		Scan(&attrs, &mergedInto, &changeSeq)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, 0, fmt.Errorf("member %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("lock member: %w", err)
	}
	return attrs, mergedInto, changeSeq, nil
}

// MemberAttributes returns a member's attributes and last change sequence,
// for a caller that holds the member's lock already.
func MemberAttributes(ctx context.Context, q Querier, id uuid.UUID) (map[string]string, int64, error) {
	var attrs map[string]string
	var seq int64
	if err := q.QueryRow(ctx, `SELECT attributes, change_seq FROM members WHERE member_id = $1`, id).Scan(&attrs, &seq); err != nil {
		return nil, 0, fmt.Errorf("member %s: %w", id, err)
	}
	return attrs, seq, nil
}

// FeaturesRow is what the tag engine loads of a member. The labels are not
// loaded: the state remembers the labels computed from it (StoredLabels
// reads them when it cannot).
type FeaturesRow struct {
	Exists         bool   // a member_features row
	State          []byte // the tag engine's encoding (tags.DecodeStateParts): its base
	Tail           []byte // and its tail (nil: State is whole)
	Version        int64
	CatalogVersion string
	DueAt          *time.Time
	// Profiling is false when the member withdrew profiling consent.
	Profiling bool
	// DeviceShare is the most members seen on one of the member's devices.
	DeviceShare int
	// Xmin is the transaction that wrote the row (its xmin): any write of
	// the row, by whatever path, changes it.
	Xmin uint32
	// Unchanged: the row is the one written by the transaction the caller
	// named (LoadFeaturesBatch's known), and State was not read.
	Unchanged bool
}

// LoadFeatures records the devices the member was just seen on, then locks
// and reads the member's features, its profiling consent and how widely its
// devices are shared, in one round trip.
func LoadFeatures(ctx context.Context, tx pgx.Tx, member uuid.UUID, devices []string) (FeaturesRow, error) {
	r := FeaturesRow{Profiling: true}
	b := &pgx.Batch{}
	// Device sightings first, so this event counts.
	if len(devices) > 0 {
		b.Queue(`INSERT INTO device_members (device_hash, member_id) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING`, devices, member)
	}
	b.Queue(`SELECT state, state_tail, version, catalog_version, due_at FROM member_features WHERE member_id = $1 FOR UPDATE`, member).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				r.Exists = true
				if err := rows.Scan(&r.State, &r.Tail, &r.Version, &r.CatalogVersion, &r.DueAt); err != nil {
					return err
				}
			}
			return rows.Err()
		})
	b.Queue(`SELECT granted FROM member_consents WHERE member_id = $1 AND purpose = $2`, member, ConsentProfiling).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				if err := rows.Scan(&r.Profiling); err != nil {
					return err
				}
			}
			return rows.Err()
		})
	b.Queue(`SELECT coalesce(max(n), 0) FROM (
		    SELECT count(*) AS n FROM device_members
		     WHERE device_hash IN (SELECT device_hash FROM device_members WHERE member_id = $1)
		     GROUP BY device_hash) x`, member).QueryRow(func(row pgx.Row) error { return row.Scan(&r.DeviceShare) })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return r, fmt.Errorf("load features: %w", err)
	}
	return r, nil
}

// ConsentProfiling is the profiling purpose's number
// (membercenter.v1.ConsentPurpose).
const ConsentProfiling int16 = 2

// QueueProfileExport queues the member's labels of version for ClickHouse
// (the exporter polls the queue).
func QueueProfileExport(b *pgx.Batch, member uuid.UUID, version int64) {
	b.Queue(`INSERT INTO profile_exports (member_id, version) VALUES ($1, $2)
		ON CONFLICT (member_id) DO UPDATE SET version = EXCLUDED.version, queued_at = now()`, member, version)
}

// FeaturesWrite is a member's features as the tag engine stores them.
type FeaturesWrite struct {
	Member uuid.UUID
	// State and Tail are the state's two parts (tags.EncodeStateParts):
	// with KeepState, the row keeps the base it holds and only the tail
	// is written (State is not read). A whole state has no tail.
	State, Tail []byte
	KeepState   bool
	// The labels (tags.EncodeLabels); nil: they did not change, and the
	// row keeps what it holds. Written labels_pb supersedes the JSON
	// labels of rows written before it, which is emptied.
	LabelsPB       []byte
	CatalogVersion string
	Version        int64
	DueAt          *time.Time
	At             time.Time
}

// QueueFeatures queues the upsert of a member's features.
func QueueFeatures(b *pgx.Batch, f FeaturesWrite) { QueueFeaturesBatch(b, []FeaturesWrite{f}, nil) }

// DueFeatures returns up to limit members whose features are due (a
// window ended, a day passed) at now, most overdue first. It locks
// nothing: the sweeper locks the members' rows (LockMembersForUpdate, in id
// order) before their features, as every writer of a member does; locking
// the features first would deadlock with the workers.
func DueFeatures(ctx context.Context, q Querier, now time.Time, limit int) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, q, "due members", `SELECT member_id FROM member_features WHERE due_at <= $1
		ORDER BY due_at LIMIT $2`, now, limit)
}

// ClearDue takes members off the sweeper's list (members merged into
// another: their survivor is the one recomputed). Run it holding their
// member rows.
func ClearDue(ctx context.Context, q Querier, members []uuid.UUID) error {
	return exec(ctx, q, "clear due members", `UPDATE member_features SET due_at = NULL WHERE member_id = ANY($1) AND due_at IS NOT NULL`, members)
}

// StoredLabels returns a member's labels as stored — labels_pb
// (tags.EncodeLabels), or for a row written before it the JSON object — and
// when they were computed; both nil when the member has none.
func StoredLabels(ctx context.Context, q Querier, member uuid.UUID) (pb, legacy []byte, at time.Time, err error) {
	err = q.QueryRow(ctx, `SELECT labels_pb, CASE WHEN labels_pb IS NULL THEN labels END, updated_at
		FROM member_features WHERE member_id = $1`, member).Scan(&pb, &legacy, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, time.Time{}, nil
	}
	if err != nil {
		return nil, nil, at, fmt.Errorf("read labels: %w", err)
	}
	return pb, legacy, at, nil
}

// ProfileExport is a queued member's labels, as ClickHouse gets them.
type ProfileExport struct {
	Member  uuid.UUID
	Version int64
	// LabelsPB are the labels (tags.EncodeLabels); LabelsJSON those of a
	// row written before labels_pb (nil otherwise; {} without a row).
	LabelsPB, LabelsJSON []byte
	CatalogVersion       string
	UpdatedAt            time.Time
	// The member's consent decisions: bit p set for ConsentPurpose p
	// granted, or withdrawn (profiling withdrawn: behavioural labels
	// withheld); a purpose in neither was never decided.
	ConsentGranted, ConsentWithdrawn int32
	// MergedInto is the member this one is merged into, when it is.
	MergedInto *uuid.UUID
}

// PendingProfileExports reads up to limit queued members' labels, and
// whom each is merged into, oldest first, without locking them.
func PendingProfileExports(ctx context.Context, q Querier, limit int) ([]ProfileExport, error) {
	rows, err := q.Query(ctx, `
		SELECT q.member_id, q.version, f.labels_pb, CASE WHEN f.labels_pb IS NULL THEN coalesce(f.labels, '{}'::jsonb) END,
		       coalesce(f.catalog_version, ''),
		       coalesce(f.updated_at, now()), coalesce(c.granted, 0), coalesce(c.withdrawn, 0),
		       (SELECT m.merged_into FROM members m WHERE m.member_id = q.member_id AND m.merged_into IS NOT NULL)
		  FROM (SELECT member_id, version FROM profile_exports ORDER BY queued_at LIMIT $1) q
		  LEFT JOIN member_features f ON f.member_id = q.member_id
		  LEFT JOIN LATERAL (
		       SELECT bit_or(CASE WHEN granted THEN 1 << purpose::int ELSE 0 END) AS granted,
		              bit_or(CASE WHEN granted THEN 0 ELSE 1 << purpose::int END) AS withdrawn
		         FROM member_consents WHERE member_id = q.member_id) c ON true`,
		limit)
	if err != nil {
		return nil, fmt.Errorf("read profile exports: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ProfileExport, error) {
		var e ProfileExport
		err := row.Scan(&e.Member, &e.Version, &e.LabelsPB, &e.LabelsJSON, &e.CatalogVersion, &e.UpdatedAt,
			&e.ConsentGranted, &e.ConsentWithdrawn, &e.MergedInto)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read profile exports: %w", err)
	}
	return out, nil
}

// DequeueProfileExports removes the exported members from the queue where
// the queued version is not newer than the one exported. A member whose
// queue row a worker holds (it is queuing a newer version, in a
// transaction not yet committed) is left queued and exported again: the
// dequeue waits for no worker. Waiting, it held the rows it had locked
// while a worker's whole batch ran, and the workers queuing those members
// waited in turn — a convoy of the tag stage's batches behind one another.
//
// It runs with nested loops off. The queue fills and empties, and once
// autovacuum has found it empty PostgreSQL estimates it at one row,
// whatever it holds, until the next ANALYZE (a minute away at best, and a
// backlog drains for longer). On that estimate it joined the exported
// members back to the queue in a nested loop, once per queued row: with
// 1,500 queued and 1,100 exported a dequeue took 0.7 s, and the tag
// stage's writes of those members waited for it. A hash join is linear
// whatever the estimate.
func DequeueProfileExports(ctx context.Context, db Beginner, members []uuid.UUID, versions []int64) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL enable_nestloop = off`); err != nil {
			return fmt.Errorf("dequeue profile exports: %w", err)
		}
		return exec(ctx, tx, "dequeue profile exports", `WITH d AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS d(member_id, version)),
			l AS (SELECT p.member_id FROM profile_exports p JOIN d ON p.member_id = d.member_id
			       WHERE p.version <= d.version FOR UPDATE OF p SKIP LOCKED)
			DELETE FROM profile_exports p USING l WHERE p.member_id = l.member_id`, members, versions)
	})
}

// BackfillProgress is where a catalogue's backfill stands.
type BackfillProgress struct {
	LastMember *uuid.UUID
	Members    int64
	Changed    int64
	Done       bool
}

// RestartBackfill forgets a catalogue's backfill progress.
func RestartBackfill(ctx context.Context, q Querier, catalog string) error {
	return exec(ctx, q, "restart backfill", `DELETE FROM tag_backfills WHERE catalog_version = $1`, catalog)
}

// StartBackfill returns a catalogue's backfill progress, starting one.
func StartBackfill(ctx context.Context, q Querier, catalog string) (BackfillProgress, error) {
	var p BackfillProgress
	err := q.QueryRow(ctx, `INSERT INTO tag_backfills (catalog_version) VALUES ($1)
		ON CONFLICT (catalog_version) DO UPDATE SET updated_at = now()
		RETURNING last_member, members, changed, done`, catalog).Scan(&p.LastMember, &p.Members, &p.Changed, &p.Done)
	if err != nil {
		return p, fmt.Errorf("backfill progress: %w", err)
	}
	return p, nil
}

// AdvanceBackfill records a batch of a catalogue's backfill.
func AdvanceBackfill(ctx context.Context, q Querier, catalog string, last uuid.UUID, members, changed int) error {
	return exec(ctx, q, "backfill progress", `UPDATE tag_backfills SET last_member = $2, members = members + $3, changed = changed + $4, updated_at = now()
		WHERE catalog_version = $1`, catalog, last, members, changed)
}

// FinishBackfill marks a catalogue's backfill done.
func FinishBackfill(ctx context.Context, q Querier, catalog string) error {
	return exec(ctx, q, "finish backfill", `UPDATE tag_backfills SET done = true, updated_at = now() WHERE catalog_version = $1`, catalog)
}

// CountActiveMembers counts the members not merged into another.
func CountActiveMembers(ctx context.Context, q Querier) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, `SELECT count(*) FROM members WHERE merged_into IS NULL`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count members: %w", err)
	}
	return n, nil
}

// ActiveMembersAfter pages through the active members in id order.
func ActiveMembersAfter(ctx context.Context, q Querier, after uuid.UUID, limit int) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, q, "next members", `SELECT member_id FROM members WHERE merged_into IS NULL AND member_id > $1
		ORDER BY member_id LIMIT $2`, after, limit)
}

// FoldRoots maps every member whose events now belong to one of ids (the
// members merged into them, transitively, and ids themselves) to that
// member.
func FoldRoots(ctx context.Context, q Querier, ids []uuid.UUID) (map[uuid.UUID]uuid.UUID, error) {
	rows, err := q.Query(ctx, `
		WITH RECURSIVE fold(member_id, root) AS (
		    SELECT member_id, member_id FROM members WHERE member_id = ANY($1)
		  UNION
		    SELECT m.member_id, f.root FROM members m JOIN fold f ON m.merged_into = f.member_id)
		SELECT member_id, root FROM fold`, ids)
	if err != nil {
		return nil, fmt.Errorf("merged members: %w", err)
	}
	defer rows.Close()
	out := map[uuid.UUID]uuid.UUID{}
	for rows.Next() {
		var m, root uuid.UUID
		if err := rows.Scan(&m, &root); err != nil {
			return nil, err
		}
		out[m] = root
	}
	return out, rows.Err()
}

// DeviceSighting is a member seen on a device (by the device id's hash).
type DeviceSighting struct {
	Member uuid.UUID
	Device string
}

// LoadFeaturesBatch records the device sightings, then locks and reads the
// members' features, profiling consents and device shares, in one round
// trip: LoadFeatures for a batch of members. A member in known whose row
// the transaction known names wrote last (its xmin) is read without its
// state (Unchanged): the caller holds that state already.
func LoadFeaturesBatch(ctx context.Context, tx pgx.Tx, members []uuid.UUID, seen []DeviceSighting, known map[uuid.UUID]uint32) (map[uuid.UUID]*FeaturesRow, error) {
	out := make(map[uuid.UUID]*FeaturesRow, len(members))
	for _, m := range members {
		out[m] = &FeaturesRow{Profiling: true}
	}
	b := &pgx.Batch{}
	if len(seen) > 0 {
		ms := make([]uuid.UUID, len(seen))
		ds := make([]string, len(seen))
		for i, s := range seen {
			ms[i], ds[i] = s.Member, s.Device
		}
		b.Queue(`INSERT INTO device_members (device_hash, member_id) SELECT d, m FROM unnest($1::text[], $2::uuid[]) AS x(d, m)
			ON CONFLICT DO NOTHING`, ds, ms)
	}
	knownM := make([]uuid.UUID, 0, len(known))
	knownX := make([]int64, 0, len(known))
	for m, x := range known {
		knownM, knownX = append(knownM, m), append(knownX, int64(x))
	}
	// xmin is compared as a number (xid has no = with bigint). A row locked
	// after a concurrent write is the newest version, xmin and all.
	b.Queue(`SELECT f.member_id, CASE WHEN f.xmin::text::bigint = k.x THEN NULL ELSE f.state END,
		       CASE WHEN f.xmin::text::bigint = k.x THEN NULL ELSE f.state_tail END,
		       f.xmin::text::bigint, f.xmin::text::bigint = k.x, f.version, f.catalog_version, f.due_at
		  FROM member_features f LEFT JOIN unnest($2::uuid[], $3::bigint[]) AS k(m, x) ON k.m = f.member_id
		 WHERE f.member_id = ANY($1) ORDER BY f.member_id FOR UPDATE OF f`, members, knownM, knownX).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id uuid.UUID
				var r FeaturesRow
				var xmin int64
				var unchanged *bool
				if err := rows.Scan(&id, &r.State, &r.Tail, &xmin, &unchanged, &r.Version, &r.CatalogVersion, &r.DueAt); err != nil {
					return err
				}
				r.Xmin, r.Unchanged = uint32(xmin), unchanged != nil && *unchanged
				if o := out[id]; o != nil {
					r.Exists, r.Profiling = true, o.Profiling
					*o = r
				}
			}
			return rows.Err()
		})
	rowOf := func(id uuid.UUID) *FeaturesRow { return out[id] }
	queueMemberValues(b, rowOf, func(o *FeaturesRow, granted bool) { o.Profiling = granted },
		`SELECT member_id, granted FROM member_consents WHERE member_id = ANY($1) AND purpose = $2`, members, ConsentProfiling)
	// Each of the members' devices counted through the device's index (one
	// read of the members' rows; the grouped form read device_members
	// three times).
	queueMemberValues(b, rowOf, func(o *FeaturesRow, n int) { o.DeviceShare = n },
		`SELECT mine.member_id, max(c.n) FROM device_members mine
		  CROSS JOIN LATERAL (SELECT count(*) AS n FROM device_members d WHERE d.device_hash = mine.device_hash) c
		 WHERE mine.member_id = ANY($1)
		 GROUP BY mine.member_id`, members)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load features: %w", err)
	}
	return out, nil
}

// LabelMembership is the whole set of a member's labels that are true,
// in id order.
type LabelMembership struct {
	Member uuid.UUID
	Labels []string
}

// QueueLabelMembershipBatch queues the members' label sets, each replacing
// what member_label_sets held, in one statement (a member given twice gets
// the union of its sets).
func QueueLabelMembershipBatch(b *pgx.Batch, sets []LabelMembership, at time.Time) {
	if len(sets) == 0 {
		return
	}
	// A pair per true label, and one with no label ('', never an id) for
	// a member with none.
	var members []uuid.UUID
	var labels []string
	for _, s := range sets {
		if len(s.Labels) == 0 {
			members, labels = append(members, s.Member), append(labels, "")
		}
		for _, l := range s.Labels {
			members, labels = append(members, s.Member), append(labels, l)
		}
	}
	// In member order, as the other batch statements of the tag stage
	// write (the members' rows, locked first in id order, are what keeps
	// writers from waiting on each other in a cycle).
	b.Queue(`INSERT INTO member_label_sets (member_id, labels, updated_at)
		SELECT m, coalesce(array_agg(DISTINCT l ORDER BY l) FILTER (WHERE l <> ''), '{}'), $3
		  FROM unnest($1::uuid[], $2::text[]) AS x(m, l) GROUP BY m ORDER BY m
		ON CONFLICT (member_id) DO UPDATE SET labels = EXCLUDED.labels, updated_at = EXCLUDED.updated_at`,
		members, labels, at)
}

// RequeueProfileExport queues the member's profile for ClickHouse again
// under a new version (its consents changed; its labels may not have): the
// features row's version is raised, so the new row replaces the old. A
// member without features yet is queued at version 0. Run it holding the
// member's row lock, as the tag worker writes the features under it.
func RequeueProfileExport(ctx context.Context, q Querier, member uuid.UUID) error {
	return exec(ctx, q, "requeue profile export", `WITH v AS (
		UPDATE member_features SET version = version + 1, updated_at = now() WHERE member_id = $1 RETURNING version)
		INSERT INTO profile_exports (member_id, version) SELECT $1, coalesce((SELECT version FROM v), 0)
		ON CONFLICT (member_id) DO UPDATE SET version = EXCLUDED.version, queued_at = now()`, member)
}

// QueueProfileExports queues members' labels of the given versions for
// ClickHouse (the exporter polls the queue).
func QueueProfileExports(b *pgx.Batch, members []uuid.UUID, versions []int64) {
	if len(members) == 0 {
		return
	}
	// In member order: two workers queuing members of a merge lock them
	// in the same order.
	b.Queue(`INSERT INTO profile_exports (member_id, version)
		SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS x(member_id, version) ORDER BY member_id
		ON CONFLICT (member_id) DO UPDATE SET version = EXCLUDED.version, queued_at = now()`, members, versions)
}

// QueueFeaturesBatch queues the upsert of members' features in one
// statement; written, when not nil, is told each row's new xmin (the
// transaction that wrote it, or its subtransaction) when the batch runs.
func QueueFeaturesBatch(b *pgx.Batch, fs []FeaturesWrite, written func(member uuid.UUID, xmin uint32)) {
	var whole, kept []FeaturesWrite
	for _, f := range fs {
		if f.KeepState {
			kept = append(kept, f)
		} else {
			whole = append(whole, f)
		}
	}
	// Unchanged labels (labels_pb NULL) are not written again: the row
	// keeps its labels, and a new row gets none.
	if len(whole) > 0 {
		queueFeatures(b, whole, true, written, `INSERT INTO member_features (member_id, state, state_tail, labels, labels_pb, catalog_version, version, due_at, updated_at)
		SELECT m, s, t, '{}'::jsonb, pb, c, v, d, a
		  FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::text[], $6::bigint[], $7::timestamptz[], $8::timestamptz[])
		       AS x(m, s, t, pb, c, v, d, a)
		ON CONFLICT (member_id) DO UPDATE SET state = EXCLUDED.state, state_tail = EXCLUDED.state_tail,
		  labels = CASE WHEN EXCLUDED.labels_pb IS NULL THEN member_features.labels ELSE '{}'::jsonb END,
		  labels_pb = coalesce(EXCLUDED.labels_pb, member_features.labels_pb),
		  catalog_version = EXCLUDED.catalog_version, version = EXCLUDED.version, due_at = EXCLUDED.due_at,
		  updated_at = EXCLUDED.updated_at
		RETURNING member_id, xmin::text::bigint`)
	}
	// A kept base is not written: PostgreSQL keeps its stored (TOAST) copy
	// and logs none of it. Its row must be there (its member is locked);
	// a row that is not fails the batch rather than lose the write.
	if len(kept) > 0 {
		queueFeatures(b, kept, false, written, `UPDATE member_features f SET state_tail = x.t,
		  labels = CASE WHEN x.pb IS NULL THEN f.labels ELSE '{}'::jsonb END,
		  labels_pb = coalesce(x.pb, f.labels_pb),
		  catalog_version = x.c, version = x.v, due_at = x.d, updated_at = x.a
		  FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::text[], $5::bigint[], $6::timestamptz[], $7::timestamptz[])
		       AS x(m, t, pb, c, v, d, a)
		 WHERE f.member_id = x.m
		RETURNING f.member_id, f.xmin::text::bigint`)
	}
}

// queueFeatures queues sql over the columns of fs (the state's base first
// when withState) and hands each row's new xmin to written; a member sql
// wrote no row of fails the batch.
func queueFeatures(b *pgx.Batch, fs []FeaturesWrite, withState bool, written func(member uuid.UUID, xmin uint32), sql string) {
	n := len(fs)
	members := make([]uuid.UUID, n)
	states, tails, pbs := make([][]byte, n), make([][]byte, n), make([][]byte, n)
	catalogs := make([]string, n)
	versions := make([]int64, n)
	dues := make([]*time.Time, n)
	ats := make([]time.Time, n)
	for i, f := range fs {
		members[i], states[i], tails[i], pbs[i], catalogs[i], versions[i], dues[i], ats[i] =
			f.Member, f.State, f.Tail, f.LabelsPB, f.CatalogVersion, f.Version, f.DueAt, f.At
	}
	args := []any{members, tails, pbs, catalogs, versions, dues, ats}
	if withState {
		args = append([]any{members, states}, args[1:]...)
	}
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		got := 0
		for rows.Next() {
			var id uuid.UUID
			var xmin int64
			if err := rows.Scan(&id, &xmin); err != nil {
				return err
			}
			got++
			if written != nil {
				written(id, uint32(xmin))
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("write features: %d of %d members' rows written", got, n)
		}
		return nil
	})
}
