package changes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/membercenter/membercenter/storage/postgres"
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
	stored, found, err := postgres.LockIdempotencyKey(ctx, tx, scope, key)
	if err != nil {
		return false, err
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
	return false, postgres.StoreIdempotentResponse(ctx, tx, scope, key, append(fp, resp...))
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
