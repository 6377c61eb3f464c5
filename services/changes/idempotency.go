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
func Idempotent(ctx context.Context, tx pgx.Tx, scope, key string, req, out proto.Message, fn func() error) (replayed bool, err error) {
	fp, err := fingerprint(req)
	if err != nil {
		return false, err
	}
	var stored []byte
	err = tx.QueryRow(ctx, `SELECT response FROM idempotency_keys WHERE scope = $1 AND key = $2`, scope, key).Scan(&stored)
	switch {
	case err == nil:
		if !bytes.HasPrefix(stored, fp) {
			return false, fmt.Errorf("%s %q: %w", scope, key, ErrKeyReused)
		}
		if err := proto.Unmarshal(stored[len(fp):], out); err != nil {
			return false, fmt.Errorf("decode stored response: %w", err)
		}
		return true, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return false, fmt.Errorf("look up idempotency key: %w", err)
	}
	if err := fn(); err != nil {
		return false, err
	}
	resp, err := proto.MarshalOptions{Deterministic: true}.Marshal(out)
	if err != nil {
		return false, err
	}
	// A concurrent call with the same key makes this insert fail; the caller
	// retries the transaction and then replays that call's answer.
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
