package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"

	"github.com/membercenter/membercenter/services/identity"
)

const preloadBatchSize = 10_000

// preloadMembers inserts members [from, to), member i with the one
// identifier idOf(i) marked with cause, stored exactly as the identity
// service stores it (svc.Normalize: keyed hash, ciphertext, masked form).
// One goroutine normalises the next batch while the current one is copied;
// each batch is its own transaction, so the database always holds members
// 0…k-1 and a later run resumes at k.
func preloadMembers(ctx context.Context, pool *pgxpool.Pool, svc *identity.Service, from, to int,
	idOf func(i int) *mcv1.Identifier, cause string, logf func(string, ...any)) error {
	g, gctx := errgroup.WithContext(ctx)
	batches := make(chan []postgres.IdentifierRow, 1)
	g.Go(func() error {
		defer close(batches)
		for lo := from; lo < to; lo += preloadBatchSize {
			hi := min(lo+preloadBatchSize, to)
			ids := make([]*mcv1.Identifier, 0, hi-lo)
			for i := lo; i < hi; i++ {
				ids = append(ids, idOf(i))
			}
			ns, err := svc.Normalize(ids)
			if err != nil {
				return err
			}
			if len(ns) != len(ids) {
				return fmt.Errorf("members %d…%d: %d of %d identifiers normalised to distinct values", lo, hi-1, len(ns), len(ids))
			}
			now := time.Now()
			batch := make([]postgres.IdentifierRow, len(ns))
			for k, n := range ns {
				id := uuid.Must(uuid.NewV7())
				batch[k] = postgres.IdentifierRow{
					IdentifierKey: postgres.IdentifierKey{Type: int16(n.Type), Scope: n.Scope, Hash: n.Hash},
					MemberID:      id, OriginMemberID: id, Unique: true, Cipher: n.Cipher, KeyID: n.KeyID, Masked: n.Masked,
					LinkedAt: now, CauseID: cause,
				}
			}
			select {
			case batches <- batch:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	g.Go(func() error {
		done, next := from, (from/100_000+1)*100_000
		start := time.Now()
		for batch := range batches {
			if err := pgbench.Preload(gctx, pool, batch); err != nil {
				return err
			}
			done += len(batch)
			if done >= next || done == to {
				logf("preload: %d / %d members (%s)", done, to, time.Since(start).Round(time.Second))
				next += 100_000
			}
		}
		return nil
	})
	return g.Wait()
}

// checkPreloadKeys refuses a database preloaded under other PII keys (every
// lookup would miss and create a member): the identifiers of the first and
// last preloaded members must be found as this configuration hashes them.
func checkPreloadKeys(ctx context.Context, pool *pgxpool.Pool, svc *identity.Service, first, last *mcv1.Identifier, db string) error {
	ns, err := svc.Normalize([]*mcv1.Identifier{first, last})
	if err != nil {
		return err
	}
	hashes := make([][]byte, len(ns))
	for i, n := range ns {
		hashes[i] = n.Hash
	}
	found, err := pgbench.CountHashes(ctx, pool, hashes)
	if err != nil {
		return err
	}
	if found != len(ns) {
		return fmt.Errorf("database %s holds identifiers hashed with other PII keys (or another layout); drop it and rerun", db)
	}
	return nil
}

// createMembers creates n members without identifiers and returns have
// with them appended.
func createMembers(ctx context.Context, pool *pgxpool.Pool, have []uuid.UUID, n int) ([]uuid.UUID, error) {
	ids := make([]uuid.UUID, n)
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7())
	}
	if err := pgbench.CreateMembers(ctx, pool, ids, time.Now()); err != nil {
		return have, err
	}
	return append(have, ids...), nil
}
