package cli

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/identity"
)

// databaseURL is the configured URL with its database replaced by db.
func databaseURL(configured, db string) (string, error) {
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

type preloadBatch struct {
	members, identifiers [][]any
}

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
	batches := make(chan preloadBatch, 1)
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
			batch := preloadBatch{members: make([][]any, len(ns)), identifiers: make([][]any, len(ns))}
			for k, n := range ns {
				id := uuid.Must(uuid.NewV7())
				batch.members[k] = []any{id, now}
				batch.identifiers[k] = []any{id, id, true, int16(n.Type), n.Scope, n.Hash, n.Cipher, n.KeyID, n.Masked, now, cause}
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
			err := pgx.BeginFunc(gctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.CopyFrom(gctx, pgx.Identifier{"members"}, []string{"member_id", "created_at"},
					pgx.CopyFromRows(batch.members)); err != nil {
					return fmt.Errorf("copy members: %w", err)
				}
				if _, err := tx.CopyFrom(gctx, pgx.Identifier{"member_identifiers"},
					[]string{"member_id", "origin_member_id", "is_unique", "id_type", "scope", "value_hash", "value_cipher", "key_id", "masked", "linked_at", "cause_id"},
					pgx.CopyFromRows(batch.identifiers)); err != nil {
					return fmt.Errorf("copy member_identifiers: %w", err)
				}
				return nil
			})
			if err != nil {
				return err
			}
			done += len(batch.members)
			if done >= next || done == to {
				logf("preload: %d / %d members (%s)", done, to, time.Since(start).Round(time.Second))
				next += 100_000
			}
		}
		return nil
	})
	return g.Wait()
}

// preloaded counts the identifiers marked with cause.
func preloaded(ctx context.Context, pool *pgxpool.Pool, cause string) (int, error) {
	var have int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM member_identifiers WHERE cause_id = $1`, cause).Scan(&have)
	return have, err
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
	var found int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM member_identifiers WHERE value_hash = ANY($1)`, hashes).Scan(&found); err != nil {
		return err
	}
	if found != len(ns) {
		return fmt.Errorf("database %s holds identifiers hashed with other PII keys (or another layout); drop it and rerun", db)
	}
	return nil
}
