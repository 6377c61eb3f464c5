package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// The key store's one table is the platform's migration that creates it,
// applied on its own in a key store kept apart (MC_KEYSTORE_URL).
//
//go:embed migrations/00026_member_keys.sql
var keyStoreMigrations embed.FS

// KeyStoreConfig says where the members' data keys are kept.
type KeyStoreConfig struct {
	// A PostgreSQL database of its own for the member_keys table, whose
	// backups are kept no longer than an erasure may take to reach them
	// (docs/security.md). Empty: the platform's database.
	URL string `env:"MC_KEYSTORE_URL"`
}

// Validate reports a URL that does not parse.
func (c KeyStoreConfig) Validate() error {
	if c.URL == "" {
		return nil
	}
	if _, err := pgx.ParseConfig(c.URL); err != nil {
		return fmt.Errorf("MC_KEYSTORE_URL: %w", err)
	}
	return nil
}

// Masked is the URL with its password hidden ("" when unset).
func (c KeyStoreConfig) Masked() string {
	if c.URL == "" {
		return ""
	}
	return Config{URL: c.URL}.Masked()
}

// MigrateKeyStore creates the member key table in a key store kept apart
// from the platform's database. Idempotent, like Migrate; its versions are
// kept in their own table.
func MigrateKeyStore(ctx context.Context, pool *pgxpool.Pool) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	sub, err := fs.Sub(keyStoreMigrations, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(5887940537704921959))
	if err != nil {
		return fmt.Errorf("key store migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, goose.WithSessionLocker(locker), goose.WithTableName("keystore_goose_version"))
	if err != nil {
		return fmt.Errorf("load key store migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate key store: %w", err)
	}
	return nil
}

// MemberKey is a member's wrapped data key.
type MemberKey struct {
	MemberID uuid.UUID
	Wrapped  []byte
	KEKID    string
}

// ErrKeyShredded is the answer for a member whose data key was shredded
// (the member was erased).
var ErrKeyShredded = errors.New("the member's data key was shredded (the member was erased)")

// GetMemberKey returns a member's wrapped data key: ErrNotFound when it has
// none yet, ErrKeyShredded when it was shredded.
func GetMemberKey(ctx context.Context, q Querier, member uuid.UUID) (MemberKey, error) {
	k := MemberKey{MemberID: member}
	var kek *string
	err := q.QueryRow(ctx, `SELECT wrapped, kek_id FROM member_keys WHERE member_id = $1`, member).Scan(&k.Wrapped, &kek)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return k, fmt.Errorf("data key of member %s: %w", member, ErrNotFound)
	case err != nil:
		return k, fmt.Errorf("get member key: %w", err)
	case kek == nil:
		return k, fmt.Errorf("member %s: %w", member, ErrKeyShredded)
	}
	k.KEKID = *kek
	return k, nil
}

// CreateMemberKey stores k unless the member has a key (or a shredded
// one), and returns the member's key: k, or the one stored first.
func CreateMemberKey(ctx context.Context, q Querier, k MemberKey, at time.Time) (MemberKey, error) {
	stored, err := CreateMemberKeys(ctx, q, []MemberKey{k}, at)
	if err != nil {
		return k, err
	}
	return stored[k.MemberID], nil
}

// CreateMemberKeys is CreateMemberKey for many members in one statement:
// each member's key as stored — its k, or the one stored first (an error
// for a member whose key was shredded: ErrKeyShredded).
func CreateMemberKeys(ctx context.Context, q Querier, ks []MemberKey, at time.Time) (map[uuid.UUID]MemberKey, error) {
	ids, wrapped, keks := make([]uuid.UUID, len(ks)), make([][]byte, len(ks)), make([]string, len(ks))
	for i, k := range ks {
		ids[i], wrapped[i], keks[i] = k.MemberID, k.Wrapped, k.KEKID
	}
	made, err := queryValues[uuid.UUID](ctx, q, "create member keys", `INSERT INTO member_keys (member_id, wrapped, kek_id, created_at)
		SELECT m, w, k, $4 FROM unnest($1::uuid[], $2::bytea[], $3::text[]) AS t(m, w, k)
		ON CONFLICT (member_id) DO NOTHING RETURNING member_id`, ids, wrapped, keks, at)
	if err != nil {
		return nil, err
	}
	out := make(map[uuid.UUID]MemberKey, len(ks))
	for _, id := range made {
		out[id] = MemberKey{}
	}
	for _, k := range ks {
		if _, ok := out[k.MemberID]; ok {
			out[k.MemberID] = k
			continue
		}
		// Stored before (rare: a member's key made by another process).
		prev, err := GetMemberKey(ctx, q, k.MemberID)
		if err != nil {
			return nil, err
		}
		out[k.MemberID] = prev
	}
	return out, nil
}

// ShredMemberKeys destroys the members' data keys, keeping a row that says
// so (a member without a row gets one: no key is made for it later). It
// returns how many keys it destroyed.
func ShredMemberKeys(ctx context.Context, q Querier, members []uuid.UUID, at time.Time) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `WITH live AS (
		  SELECT member_id FROM member_keys WHERE member_id = ANY($1) AND wrapped IS NOT NULL),
		s AS (
		  INSERT INTO member_keys (member_id, created_at, shredded_at) SELECT DISTINCT m, $2::timestamptz, $2::timestamptz FROM unnest($1::uuid[]) AS t(m)
		  ON CONFLICT (member_id) DO UPDATE SET wrapped = NULL, kek_id = NULL,
		    shredded_at = coalesce(member_keys.shredded_at, EXCLUDED.shredded_at))
		SELECT count(*) FROM live`, members, at).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("shred member keys: %w", err)
	}
	return n, nil
}

// CountMemberKeysNotUnder counts the live data keys wrapped under a key
// other than kek.
func CountMemberKeysNotUnder(ctx context.Context, q Querier, kek string) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, `SELECT count(*) FROM member_keys WHERE kek_id <> $1`, kek).Scan(&n); err != nil {
		return 0, fmt.Errorf("count member keys: %w", err)
	}
	return n, nil
}

// ClaimMemberKeysNotUnder locks up to limit live data keys wrapped under a
// key other than kek.
func ClaimMemberKeysNotUnder(ctx context.Context, tx pgx.Tx, kek string, limit int) ([]MemberKey, error) {
	rows, err := tx.Query(ctx, `SELECT member_id, wrapped, kek_id FROM member_keys WHERE kek_id <> $1
		ORDER BY member_id LIMIT $2 FOR UPDATE SKIP LOCKED`, kek, limit)
	return collectAll(rows, err, func(row pgx.CollectableRow) (MemberKey, error) {
		var k MemberKey
		err := row.Scan(&k.MemberID, &k.Wrapped, &k.KEKID)
		return k, err
	}, "claim member keys")
}

// RewrapMemberKey stores a data key wrapped anew.
func RewrapMemberKey(ctx context.Context, tx pgx.Tx, k MemberKey) error {
	return exec(ctx, tx, "rewrap member key", `UPDATE member_keys SET wrapped = $2, kek_id = $3 WHERE member_id = $1 AND wrapped IS NOT NULL`,
		k.MemberID, k.Wrapped, k.KEKID)
}

// CountLiveMemberKeys counts the members' data keys not shredded.
func CountLiveMemberKeys(ctx context.Context, q Querier, members []uuid.UUID) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, `SELECT count(*) FROM member_keys WHERE member_id = ANY($1) AND wrapped IS NOT NULL`, members).Scan(&n); err != nil {
		return 0, fmt.Errorf("count member keys: %w", err)
	}
	return n, nil
}

// QueueKeyShreds records, in the erasure's transaction, that the members'
// data keys are to be shredded once it commits.
func QueueKeyShreds(ctx context.Context, q Querier, members []uuid.UUID, at time.Time) error {
	return exec(ctx, q, "queue key shreds", `INSERT INTO member_key_shreds (member_id, erased_at)
		SELECT m, $2 FROM unnest($1::uuid[]) AS t(m) ON CONFLICT (member_id) DO NOTHING`, members, at)
}

// QueuedKeyShreds returns up to limit members whose keys are queued to be
// shredded, among members (all, when nil).
func QueuedKeyShreds(ctx context.Context, q Querier, members []uuid.UUID, limit int) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, q, "queued key shreds", `SELECT member_id FROM member_key_shreds
		WHERE $1::uuid[] IS NULL OR member_id = ANY($1) ORDER BY erased_at, member_id LIMIT $2`, members, limit)
}

// KeyShredsDone takes the members off the queue: their keys are shredded.
func KeyShredsDone(ctx context.Context, q Querier, members []uuid.UUID) error {
	return exec(ctx, q, "key shreds done", `DELETE FROM member_key_shreds WHERE member_id = ANY($1)`, members)
}
