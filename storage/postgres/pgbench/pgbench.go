// Package pgbench holds the PostgreSQL statements of the benchmarks and the
// demo workload (mc-bench): scratch databases, members preloaded as the
// identity service stores them, the same-run upsert floors, and the reads
// that check and describe what a run did. It is tooling: nothing in the
// membercenter binary imports it.
package pgbench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/postgres"
)

// DatabaseURL is the configured URL with its database replaced by db.
func DatabaseURL(configured, db string) (string, error) {
	if !strings.Contains(configured, "://") {
		// keyword=value form: a later dbname overrides an earlier one.
		return configured + " dbname=" + db, nil
	}
	u, err := url.Parse(configured)
	if err != nil {
		return "", fmt.Errorf("MC_PG_URL: %w", err)
	}
	u.Path = "/" + db
	return u.String(), nil
}

// CreateDatabase creates db, owned by the connected user, unless it exists.
func CreateDatabase(ctx context.Context, q postgres.Querier, db string) error {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, db).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", db, err)
	}
	if exists {
		return nil
	}
	_, err := q.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{db}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // created concurrently
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s (the configured user needs CREATEDB): %w", db, err)
	}
	return nil
}

// CopyDatabase makes db a fresh copy of template, dropping any db there
// was (and ending its sessions). Nothing may be connected to template. The
// files are copied (STRATEGY FILE_COPY), not written through the WAL: a
// benchmark's database is gigabytes.
func CopyDatabase(ctx context.Context, q postgres.Querier, template, db string) error {
	if err := DropDatabase(ctx, q, db); err != nil {
		return err
	}
	if _, err := q.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{db}.Sanitize()+` TEMPLATE `+pgx.Identifier{template}.Sanitize()+` STRATEGY FILE_COPY`); err != nil {
		return fmt.Errorf("copy database %s to %s: %w", template, db, err)
	}
	return nil
}

// DropDatabase drops db if it exists, ending its sessions.
func DropDatabase(ctx context.Context, q postgres.Querier, db string) error {
	if _, err := q.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{db}.Sanitize()+` WITH (FORCE)`); err != nil {
		return fmt.Errorf("drop database %s: %w", db, err)
	}
	return nil
}

// Analyze refreshes the planner's statistics of tables, after a VACUUM
// when vacuum is set.
func Analyze(ctx context.Context, q postgres.Querier, vacuum bool, tables ...string) error {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = pgx.Identifier{t}.Sanitize()
	}
	stmt := `ANALYZE `
	if vacuum {
		stmt = `VACUUM (ANALYZE) `
	}
	_, err := q.Exec(ctx, stmt+strings.Join(names, ", "))
	return err
}

// ServerVersion is the server's version, as it reports it.
func ServerVersion(ctx context.Context, q postgres.Querier) (string, error) {
	var v string
	err := q.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&v)
	return v, err
}

// Deadlocks is the number of deadlocks the server has detected in the
// connected database.
func Deadlocks(ctx context.Context, q postgres.Querier) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&n)
	return n, err
}

// ---- members ----

// CountPreloaded counts the identifiers preloaded with cause.
func CountPreloaded(ctx context.Context, q postgres.Querier, cause string) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM member_identifiers WHERE cause_id = $1`, cause).Scan(&n)
	return n, err
}

// Preload inserts, in one transaction, a member for each identifier (its
// MemberID, created at its LinkedAt) and the identifier itself, both with
// COPY.
func Preload(ctx context.Context, pool *pgxpool.Pool, ids []postgres.IdentifierRow) error {
	members, identifiers := make([][]any, len(ids)), make([][]any, len(ids))
	for k, r := range ids {
		members[k] = []any{r.MemberID, r.LinkedAt}
		identifiers[k] = []any{r.MemberID, r.OriginMemberID, r.Unique, r.Type, r.Scope, r.Hash, r.Cipher, r.KeyID, r.Masked, r.LinkedAt, r.CauseID}
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"members"}, []string{"member_id", "created_at"},
			pgx.CopyFromRows(members)); err != nil {
			return fmt.Errorf("copy members: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"member_identifiers"},
			[]string{"member_id", "origin_member_id", "is_unique", "id_type", "scope", "value_hash", "value_cipher", "key_id", "masked", "linked_at", "cause_id"},
			pgx.CopyFromRows(identifiers)); err != nil {
			return fmt.Errorf("copy member_identifiers: %w", err)
		}
		return nil
	})
}

// CreateMembers inserts members without identifiers (the columns
// postgres.InsertMember writes), in one COPY.
func CreateMembers(ctx context.Context, pool *pgxpool.Pool, ids []uuid.UUID, at time.Time) error {
	rows := make([][]any, len(ids))
	for i, id := range ids {
		rows[i] = []any{id, at}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"members"}, []string{"member_id", "created_at"}, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy members: %w", err)
	}
	return nil
}

// CountHashes counts the identifiers stored under any of the keyed hashes.
func CountHashes(ctx context.Context, q postgres.Querier, hashes [][]byte) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM member_identifiers WHERE value_hash = ANY($1)`, hashes).Scan(&n)
	return n, err
}

// CountMembers counts every member and the merged ones.
func CountMembers(ctx context.Context, q postgres.Querier) (total, merged int64, err error) {
	err = q.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'merged') FROM members`).Scan(&total, &merged)
	return total, merged, err
}

// CountUnmerged counts the members that have not been merged into another.
func CountUnmerged(ctx context.Context, q postgres.Querier) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM members WHERE status <> 'merged'`).Scan(&n)
	return n, err
}

// OriginMembers returns, for each of the hashes of unique identifiers of type
// idType (in order), the member the identifier was first linked to
// (origin_member_id stays put when a merge moves the identifier) and
// whether that member is still active and has never absorbed another.
func OriginMembers(ctx context.Context, q postgres.Querier, idType int16, hashes [][]byte) (members []uuid.UUID, fresh []bool, err error) {
	rows, err := q.Query(ctx, `
		SELECT k.ord, m.member_id, m.status = 'active' AND m.merge_count = 0
		  FROM unnest($1::bytea[]) WITH ORDINALITY AS k(hash, ord)
		  JOIN member_identifiers i ON i.is_unique AND i.id_type = $2 AND i.scope = '' AND i.value_hash = k.hash
		  JOIN members m ON m.member_id = i.origin_member_id`,
		hashes, idType)
	if err != nil {
		return nil, nil, err
	}
	members, fresh = make([]uuid.UUID, len(hashes)), make([]bool, len(hashes))
	var ord int
	var id uuid.UUID
	var ok bool
	_, err = pgx.ForEachRow(rows, []any{&ord, &id, &ok}, func() error {
		members[ord-1], fresh[ord-1] = id, ok
		return nil
	})
	return members, fresh, err
}

// State is a table of per-member state some members have not got yet.
type State string

// The states a benchmark gives members it has not used before.
const (
	LoyaltyState State = "loyalty_state"   // the benefits engine's
	TagState     State = "member_features" // the tag engine's
)

// MembersWithout returns up to limit of the earliest active, never-merged
// members without a row of state, in member id order.
func MembersWithout(ctx context.Context, q postgres.Querier, state State, limit int) ([]uuid.UUID, error) {
	rows, err := q.Query(ctx, `
		SELECT m.member_id FROM members m
		 WHERE m.status = 'active' AND m.merge_count = 0
		   AND NOT EXISTS (SELECT FROM `+pgx.Identifier{string(state)}.Sanitize()+` s WHERE s.member_id = m.member_id)
		 ORDER BY m.member_id LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// ---- loyalty ----

// Loyalty totals the loyalty state of a set of members.
type Loyalty struct {
	Tiers map[string]int // members by tier ("" before any)
	// Open lots, orders, coupons, months of tier activity and points, in
	// all over the members.
	Lots, Orders, Coupons, ActivityMonths, Balance int64
	AllLots                                        int64 // point_lots rows of every member
}

// LoyaltyOf totals the members' loyalty state.
func LoyaltyOf(ctx context.Context, q postgres.Querier, members []uuid.UUID) (Loyalty, error) {
	l := Loyalty{Tiers: map[string]int{}}
	rows, err := q.Query(ctx, `SELECT coalesce(state->>'tier', ''), count(*) FROM loyalty_state WHERE member_id = ANY($1) GROUP BY 1`, members)
	if err != nil {
		return l, err
	}
	var tier string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&tier, &n}, func() error { l.Tiers[tier] = n; return nil }); err != nil {
		return l, err
	}
	err = q.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM point_lots WHERE member_id = ANY($1) AND remaining > 0),
		(SELECT count(*) FROM orders WHERE member_id = ANY($1)),
		(SELECT count(*) FROM coupons WHERE member_id = ANY($1)),
		(SELECT count(*) FROM member_activity WHERE member_id = ANY($1)),
		(SELECT coalesce(sum(balance), 0) FROM points_accounts WHERE member_id = ANY($1)),
		(SELECT count(*) FROM point_lots)`, members).
		Scan(&l.Lots, &l.Orders, &l.Coupons, &l.ActivityMonths, &l.Balance, &l.AllLots)
	return l, err
}

// LedgerMismatches counts the members whose account's ledger sum, account
// balance and open lots' remaining points do not all agree
// (docs/benefits.md §2; each transaction balancing to zero is enforced by
// a trigger), and the members checked.
func LedgerMismatches(ctx context.Context, q postgres.Querier, members []uuid.UUID) (bad, checked int, err error) {
	err = q.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE coalesce(a.balance, 0) <> coalesce(l.s, 0) OR coalesce(a.balance, 0) <> coalesce(e.s, 0)), count(*)
		  FROM unnest($1::uuid[]) AS m(member_id)
		  LEFT JOIN points_accounts a ON a.member_id = m.member_id
		  LEFT JOIN LATERAL (SELECT sum(remaining) AS s FROM point_lots WHERE member_id = m.member_id) l ON true
		  LEFT JOIN LATERAL (SELECT sum(delta) AS s FROM ledger_entries
		                      WHERE member_id = m.member_id AND account = 'member:' || m.member_id::text) e ON true`,
		members).Scan(&bad, &checked)
	if err != nil {
		err = fmt.Errorf("check ledger invariants: %w", err)
	}
	return bad, checked, err
}

// ---- tag state ----

// ClearSweeps cancels the members' scheduled label sweeps.
func ClearSweeps(ctx context.Context, q postgres.Querier, members []uuid.UUID) error {
	_, err := q.Exec(ctx, `UPDATE member_features SET due_at = NULL WHERE member_id = ANY($1)`, members)
	return err
}

// ExportBacklog is the work the tag stage has left: members queued for the
// profile exporter, and members due for a sweep.
func ExportBacklog(ctx context.Context, q postgres.Querier) (queued, due int, err error) {
	err = q.QueryRow(ctx, `SELECT (SELECT count(*) FROM profile_exports),
		(SELECT count(*) FROM member_features WHERE due_at <= now())`).Scan(&queued, &due)
	return queued, due, err
}

// LabelChecksQueued counts the members queued for a check of the benefits
// that follow their labels (the benefit stage's label checks).
func LabelChecksQueued(ctx context.Context, q postgres.Querier) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM benefit_label_checks`).Scan(&n)
	return n, err
}

// FeatureStats averages the members' stored tag state.
type FeatureStats struct {
	StateBytes, Purchases, Acts, Labels float64
}

// wholeState is a member_features row's state whole: its base and tail
// joined (tags.EncodeStateParts), as tags.DecodeState reads it.
const wholeState = `CASE WHEN state_tail IS NULL THEN state ELSE '\x01'::bytea || substring(state FROM 2) || substring(state_tail FROM 2) END`

// FeatureCounter counts what a member's stored state holds (the tag
// engine decodes it): purchases, other records and labels.
type FeatureCounter func(state, labelsPB, labelsJSON []byte) (purchases, acts, labels int, err error)

// FeatureStatsOf averages the members' tag state: its size as stored, and
// the purchases, other records and labels it holds, counted by count.
func FeatureStatsOf(ctx context.Context, q postgres.Querier, members []uuid.UUID, count FeatureCounter) (FeatureStats, error) {
	var s FeatureStats
	rows, err := q.Query(ctx, `SELECT pg_column_size(state) + coalesce(pg_column_size(state_tail), 0), `+wholeState+`, labels_pb, CASE WHEN labels_pb IS NULL THEN labels END
		FROM member_features WHERE member_id = ANY($1)`, members)
	if err != nil {
		return s, err
	}
	var size int
	var state, pb, legacy []byte
	n := 0
	if _, err := pgx.ForEachRow(rows, []any{&size, &state, &pb, &legacy}, func() error {
		p, a, l, err := count(state, pb, legacy)
		if err != nil {
			return err
		}
		s.StateBytes += float64(size)
		s.Purchases, s.Acts, s.Labels = s.Purchases+float64(p), s.Acts+float64(a), s.Labels+float64(l)
		n++
		return nil
	}); err != nil {
		return s, err
	}
	if n > 0 {
		s.StateBytes, s.Purchases, s.Acts, s.Labels = s.StateBytes/float64(n), s.Purchases/float64(n), s.Acts/float64(n), s.Labels/float64(n)
	}
	return s, nil
}

// Features is a member's stored tag state with its attributes.
type Features struct {
	MemberID uuid.UUID
	State    []byte // the tag engine's encoding
	// LabelsPB are the labels (labels_pb); LabelsJSON those of a row
	// written before it (nil otherwise).
	LabelsPB, LabelsJSON []byte
	Version              int64
	Catalog              string
	DueAt                *time.Time
	Attributes           map[string]string
}

// FeaturesOf reads the tag state of the members that have one.
func FeaturesOf(ctx context.Context, q postgres.Querier, members []uuid.UUID) ([]Features, error) {
	rows, err := q.Query(ctx, `SELECT f.member_id, `+wholeState+`, f.labels_pb, CASE WHEN f.labels_pb IS NULL THEN f.labels END,
		       f.version, f.catalog_version, f.due_at, m.attributes
		FROM member_features f JOIN members m USING (member_id) WHERE f.member_id = ANY($1)`, members)
	if err != nil {
		return nil, err
	}
	var all []Features
	var f Features
	if _, err := pgx.ForEachRow(rows, []any{&f.MemberID, &f.State, &f.LabelsPB, &f.LabelsJSON, &f.Version, &f.Catalog, &f.DueAt, &f.Attributes}, func() error {
		all = append(all, f)
		f = Features{} // fresh buffers and map for the next row
		return nil
	}); err != nil {
		return nil, err
	}
	return all, nil
}

// FeatureVersion is a member's tag-state version and when it was written.
type FeatureVersion struct {
	Version   int64
	UpdatedAt time.Time
}

// FeatureVersions reads the members' tag-state versions (members without
// state are absent).
func FeatureVersions(ctx context.Context, q postgres.Querier, members []uuid.UUID) (map[uuid.UUID]FeatureVersion, error) {
	rows, err := q.Query(ctx, `SELECT member_id, version, updated_at FROM member_features WHERE member_id = ANY($1)`, members)
	if err != nil {
		return nil, err
	}
	out := map[uuid.UUID]FeatureVersion{}
	var id uuid.UUID
	var v FeatureVersion
	_, err = pgx.ForEachRow(rows, []any{&id, &v.Version, &v.UpdatedAt}, func() error { out[id] = v; return nil })
	return out, err
}

// ---- pipeline progress ----

// CountIngested counts the events ingest has recorded.
func CountIngested(ctx context.Context, q postgres.Querier) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM ingested_events`).Scan(&n)
	return n, err
}

// CountDue counts the members whose labels the sweeper has to recompute
// at at (a window ended, a day began).
func CountDue(ctx context.Context, q postgres.Querier, at time.Time) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM member_features WHERE due_at <= $1`, at).Scan(&n)
	return n, err
}

// CountUnpublished counts the changes still in the outbox.
func CountUnpublished(ctx context.Context, q postgres.Querier) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM outbox_pending`).Scan(&n)
	return n, err
}

// Progress is how far the stages are with the events of one run.
type Progress struct {
	Ingested, Benefits, Tags int // events of the run each stage recorded
	Unpublished              int // changes of anyone still in the outbox
}

// ProgressOf counts the events with ids LIKE like that ingest, the benefit
// worker and the tag worker recorded, and the unpublished changes.
func ProgressOf(ctx context.Context, q postgres.Querier, like string) (Progress, error) {
	var p Progress
	err := q.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM ingested_events WHERE event_id LIKE $1),
		(SELECT count(*) FROM processed_events WHERE consumer = 'benefits' AND event_id LIKE $1),
		(SELECT count(*) FROM processed_events WHERE consumer = 'tags' AND event_id LIKE $1),
		(SELECT count(*) FROM outbox_pending)`, like).Scan(&p.Ingested, &p.Benefits, &p.Tags, &p.Unpublished)
	return p, err
}

// TagProgress counts the events with ids LIKE like the tag worker folded,
// and the members waiting for the profile exporter.
func TagProgress(ctx context.Context, q postgres.Querier, like string) (folded, queued int, err error) {
	err = q.QueryRow(ctx, `SELECT (SELECT count(*) FROM processed_events WHERE consumer = 'tags' AND event_id LIKE $1),
		(SELECT count(*) FROM profile_exports)`, like).Scan(&folded, &queued)
	return folded, queued, err
}

// schemaSQL lists the public schema's indexes, constraints and table
// columns (type, storage, compression), a line each, in order.
const schemaSQL = `SELECT x FROM (
	SELECT 'index ' || tablename || '.' || indexname || ' ' || regexp_replace(indexdef, '^.* USING ', '') AS x FROM pg_indexes WHERE schemaname = 'public'
	UNION ALL
	SELECT 'constraint ' || conrelid::regclass || '.' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace
	UNION ALL
	SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attstorage::text || coalesce(' ' || nullif(a.attcompression::text, ''), '')
	  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped) s
	ORDER BY x`

// CheckSchema compares the schema of a reused benchmark database (db) with
// one the migrations build afresh, in a scratch database ref that admin
// creates and drops: a database changed by hand since it was built — an
// index dropped for an experiment and not put back — measures something
// the code does not ship. The error lists what differs.
func CheckSchema(ctx context.Context, admin postgres.Querier, configured string, db *pgxpool.Pool, ref string) error {
	if _, err := admin.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{ref}.Sanitize()+` WITH (FORCE)`); err != nil {
		return fmt.Errorf("drop database %s: %w", ref, err)
	}
	if err := CreateDatabase(ctx, admin, ref); err != nil {
		return err
	}
	defer func() {
		_, _ = admin.Exec(context.WithoutCancel(ctx), `DROP DATABASE IF EXISTS `+pgx.Identifier{ref}.Sanitize()+` WITH (FORCE)`)
	}()
	u, err := DatabaseURL(configured, ref)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := postgres.Migrate(ctx, pool); err != nil {
		return fmt.Errorf("migrate %s: %w", ref, err)
	}
	want, err := schema(ctx, pool)
	if err != nil {
		return err
	}
	got, err := schema(ctx, db)
	if err != nil {
		return err
	}
	var diffs []string
	for _, x := range want {
		if !slices.Contains(got, x) {
			diffs = append(diffs, "missing: "+x)
		}
	}
	for _, x := range got {
		if !slices.Contains(want, x) {
			diffs = append(diffs, "not in the migrations: "+x)
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("the database's schema differs from what the migrations build (%s); put it back or drop the database to build it again", strings.Join(diffs, "; "))
	}
	return nil
}

func schema(ctx context.Context, q postgres.Querier) ([]string, error) {
	rows, err := q.Query(ctx, schemaSQL)
	if err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
