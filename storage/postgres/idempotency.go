package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// LockIdempotencyKey locks (scope, key) for the rest of tx (an advisory
// lock, so a concurrent duplicate waits) and returns the response stored
// for it, if any. Both in one round trip; the lookup is a statement of its
// own, so in READ COMMITTED it sees what a holder of the lock committed.
func LockIdempotencyKey(ctx context.Context, tx pgx.Tx, scope, key string) (stored []byte, found bool, err error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, scope+" "+key)
	b.Queue(`SELECT response FROM idempotency_keys WHERE scope = $1 AND key = $2`, scope, key).QueryRow(func(row pgx.Row) error {
		err := row.Scan(&stored)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, false, fmt.Errorf("look up idempotency key: %w", err)
	}
	return stored, found, nil
}

// StoreIdempotentResponse records the response of (scope, key).
func StoreIdempotentResponse(ctx context.Context, q Querier, scope, key string, response []byte) error {
	return exec(ctx, q, "store idempotent response", `INSERT INTO idempotency_keys (scope, key, response) VALUES ($1, $2, $3)`,
		scope, key, response)
}

// DeleteIdempotentResponse forgets the response of (scope, key).
func DeleteIdempotentResponse(ctx context.Context, q Querier, scope, key string) error {
	return exec(ctx, q, "forget idempotent response", `DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2`, scope, key)
}

// IdempotencyKey names one call of a mutating RPC.
type IdempotencyKey struct{ Scope, Key string }

// IdempotentResponse is a call's stored answer.
type IdempotentResponse struct {
	IdempotencyKey
	Response []byte
}

// LockIdempotencyKeys is LockIdempotencyKey for many keys, in one round
// trip: the keys' advisory locks (the ones LockIdempotencyKey takes) are
// taken in the order of their lock ids, so two transactions locking
// overlapping sets never wait for each other in opposite orders; then the
// responses stored for them are read.
func LockIdempotencyKeys(ctx context.Context, tx pgx.Tx, keys []IdempotencyKey) (map[IdempotencyKey][]byte, error) {
	locks := make([]string, len(keys))
	scopes, names := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		locks[i], scopes[i], names[i] = k.Scope+" "+k.Key, k.Scope, k.Key
	}
	stored := map[IdempotencyKey][]byte{}
	b := &pgx.Batch{}
	// The locks are taken as the sorted subquery's rows reach the
	// aggregate, one after the other.
	b.Queue(`SELECT count(pg_advisory_xact_lock(h))
		FROM (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY h) x`, locks)
	b.Queue(`SELECT i.scope, i.key, i.response FROM idempotency_keys i
		JOIN unnest($1::text[], $2::text[]) AS x(scope, key) ON i.scope = x.scope AND i.key = x.key`, scopes, names).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var k IdempotencyKey
				var resp []byte
				if err := rows.Scan(&k.Scope, &k.Key, &resp); err != nil {
					return err
				}
				stored[k] = resp
			}
			return rows.Err()
		})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("look up idempotency keys: %w", err)
	}
	return stored, nil
}

// QueueIdempotentResponses queues the recording of responses, in one
// statement.
func QueueIdempotentResponses(b *pgx.Batch, rs []IdempotentResponse) {
	if len(rs) == 0 {
		return
	}
	scopes, keys, resps := make([]string, len(rs)), make([]string, len(rs)), make([][]byte, len(rs))
	for i, r := range rs {
		scopes[i], keys[i], resps[i] = r.Scope, r.Key, r.Response
	}
	b.Queue(`INSERT INTO idempotency_keys (scope, key, response) SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])`, scopes, keys, resps)
}
