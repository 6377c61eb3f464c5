package changes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
)

// ErrKeyReused is returned when an idempotency key comes back with a
// different request.
var ErrKeyReused = errors.New("idempotency key was already used with a different request")

// Idempotent runs fn once per (scope, key) in tx: the first call stores the
// response (and a fingerprint of the request); a retry with the same key gets
// the stored response in out and fn is not called. It reports whether the
// answer was replayed.
//
// The key is locked (a transaction-scoped advisory lock) before it is looked
// up, and before fn locks anything else: a duplicate sent while the first
// call is still running waits for it and then replays its answer, instead of
// running fn on the state the first call left (which could refuse what the
// first call accepted: the points it redeemed are gone).
func Idempotent(ctx context.Context, tx pgx.Tx, scope, key string, req, out proto.Message, fn func() error) (replayed bool, err error) {
	fp, err := fingerprint(req)
	if err != nil {
		return false, err
	}
	// One round trip: the lookup is a statement of its own, so in READ
	// COMMITTED it sees what a call that held the lock committed.
	var stored []byte
	found := false
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
		return false, fmt.Errorf("look up idempotency key: %w", err)
	}
	if found {
		if !bytes.HasPrefix(stored, fp) {
			return false, fmt.Errorf("%s %q: %w", scope, key, ErrKeyReused)
		}
		if err := proto.Unmarshal(stored[len(fp):], out); err != nil {
			return false, fmt.Errorf("decode stored response: %w", err)
		}
		return true, nil
	}
	if err := fn(); err != nil {
		return false, err
	}
	resp, err := proto.MarshalOptions{Deterministic: true}.Marshal(out)
	if err != nil {
		return false, err
	}
	// The lock keeps concurrent calls with the key out; this insert fails
	// only if the lock's hash was bypassed (another writer of the table).
	if _, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (scope, key, response) VALUES ($1, $2, $3)`,
		scope, key, append(fp, resp...)); err != nil {
		return false, fmt.Errorf("store idempotent response: %w", err)
	}
	return false, nil
}

// fingerprint is a hash of the request, which includes its key.
func fingerprint(req proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}
