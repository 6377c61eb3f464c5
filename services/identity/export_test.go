package identity

import (
	"context"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/contract"
)

// ResolveEventInTx resolves ev on the transactional path alone, which no
// lookup answers: the reference ingest's fast paths must agree with.
func ResolveEventInTx(ctx context.Context, s *Service, ev *mcv1.ChannelEvent) (contract.Resolution, error) {
	ids, referee, err := s.prepareEvent(ev)
	if err != nil {
		return contract.Resolution{}, err
	}
	return s.resolveEventInTx(ctx, ev, ids, referee)
}
