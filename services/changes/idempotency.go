package changes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

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
		if err := replay(scope, key, fp, stored, out); err != nil {
			return false, err
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

// replay answers a call (fingerprint fp) from the record stored for its
// key: the stored response, or ErrKeyReused when the record is another
// request's.
func replay(scope, key string, fp, stored []byte, out proto.Message) error {
	if !bytes.HasPrefix(stored, fp) {
		return fmt.Errorf("%s %q: %w", scope, key, ErrKeyReused)
	}
	if err := proto.Unmarshal(stored[len(fp):], out); err != nil {
		return fmt.Errorf("decode stored response: %w", err)
	}
	return nil
}

// Keyed is one call of a mutating RPC under its idempotency key, for
// callers that apply many calls in one transaction: they lock every key
// first (LockKeys), answer a call whose key holds a record from it
// (Replay), and store the answers of the calls they apply with their
// effects (Record). It keeps Idempotent's contract for each call.
type Keyed struct {
	postgres.IdempotencyKey
	fp []byte
}

// NewKeyed returns the call of req under (scope, key).
func NewKeyed(scope, key string, req proto.Message) (Keyed, error) {
	fp, err := fingerprint(req)
	if err != nil {
		return Keyed{}, err
	}
	return Keyed{IdempotencyKey: postgres.IdempotencyKey{Scope: scope, Key: key}, fp: fp}, nil
}

// LockKeys locks the keys of calls for the rest of tx, in a fixed order
// (two transactions locking overlapping sets never deadlock; a key locked
// by Idempotent elsewhere is waited for), and returns the records stored
// for them.
func LockKeys(ctx context.Context, tx pgx.Tx, calls []Keyed) (map[postgres.IdempotencyKey][]byte, error) {
	keys := make([]postgres.IdempotencyKey, 0, len(calls))
	seen := make(map[postgres.IdempotencyKey]bool, len(calls))
	for _, c := range calls {
		if !seen[c.IdempotencyKey] {
			seen[c.IdempotencyKey] = true
			keys = append(keys, c.IdempotencyKey)
		}
	}
	return postgres.LockIdempotencyKeys(ctx, tx, keys)
}

// Replay answers the call from the record stored for its key (by LockKeys,
// or Record of an earlier call with the key): out gets the stored response,
// or the error is ErrKeyReused when the record is another request's.
func (k Keyed) Replay(stored []byte, out proto.Message) error {
	return replay(k.Scope, k.Key, k.fp, stored, out)
}

// Record is what to store under the call's key for its answer resp.
func (k Keyed) Record(resp proto.Message) (postgres.IdempotentResponse, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
	if err != nil {
		return postgres.IdempotentResponse{}, err
	}
	return postgres.IdempotentResponse{IdempotencyKey: k.IdempotencyKey, Response: append(slices.Clip(k.fp), b...)}, nil
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

// Unprocessed records the events of todo as processed by consumer in tx and
// returns, in order, those that were not before (the others are
// redeliveries); eventID names an element's event.
func Unprocessed[T any](ctx context.Context, tx pgx.Tx, consumer string, todo []T, eventID func(T) string) ([]T, error) {
	ids := make([]string, len(todo))
	for i, t := range todo {
		ids[i] = eventID(t)
	}
	fresh, err := postgres.MarkProcessedBatch(ctx, tx, consumer, ids)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(slices.Clone(todo), func(t T) bool { return !fresh[eventID(t)] }), nil
}
