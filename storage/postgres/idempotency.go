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
	if _, err := q.Exec(ctx, `INSERT INTO idempotency_keys (scope, key, response) VALUES ($1, $2, $3)`,
		scope, key, response); err != nil {
		return fmt.Errorf("store idempotent response: %w", err)
	}
	return nil
}

// DeleteIdempotentResponse forgets the response of (scope, key).
func DeleteIdempotentResponse(ctx context.Context, q Querier, scope, key string) error {
	if _, err := q.Exec(ctx, `DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2`, scope, key); err != nil {
		return fmt.Errorf("forget idempotent response: %w", err)
	}
	return nil
}
