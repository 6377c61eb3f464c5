package identity

import (
	"context"

	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/contract"
)

// ResolveEventInTx resolves ev on the transactional path alone, which no
// lookup answers: the reference ingest's fast paths must agree with.
func ResolveEventInTx(ctx context.Context, s *Service, ev *mcv1.ChannelEvent) (contract.Resolution, error) {
	ids, referee, err := s.prepareEvent(ev)
	if err != nil {
		return contract.Resolution{}, err
	}
	var out contract.Resolution
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		out, err = s.resolveEventTx(ctx, tx, ev, ids, referee)
		return err
	})
	return out, err
}
