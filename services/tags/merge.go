package tags

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// loadAs loads a member's features under the lock identity already holds,
// without following a merge.
func (s *Service) loadAs(ctx context.Context, tx pgx.Tx, id uuid.UUID) (*memberState, error) {
	m := &memberState{id: id, profiling: true, state: &State{}}
	var err error
	if m.attrs, m.changeSeq, err = postgres.MemberAttributes(ctx, tx, id); err != nil {
		return nil, err
	}
	if err := s.loadRest(ctx, tx, m); err != nil {
		return nil, err
	}
	return m, nil
}

// loadPair loads the two members of a merge or unmerge.
func (s *Service) loadPair(ctx context.Context, tx pgx.Tx, source, target uuid.UUID) (src, dst *memberState, err error) {
	if src, err = s.loadAs(ctx, tx, source); err != nil {
		return nil, nil, err
	}
	if dst, err = s.loadAs(ctx, tx, target); err != nil {
		return nil, nil, err
	}
	return src, dst, nil
}

// Merged folds the source member's features into the target when identity
// merges them and recomputes the target's labels from both histories; the
// source's labels are cleared. Every record keeps its origin, so Unmerged
// can split them again.
func (s *Service) Merged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, at time.Time, cause string) error {
	src, dst, err := s.loadPair(ctx, tx, source, target)
	if err != nil {
		return err
	}
	dst.state.Absorb(src.state)
	cleared, err := s.Catalog().Clear(src.state, s.now(), s.storedLabels(ctx, tx, src))
	if err != nil {
		return err
	}
	src.state = &State{}
	if err := s.store(ctx, tx, src, cleared, cause, mcv1.Channel_CHANNEL_BACKOFFICE, ""); err != nil {
		return err
	}
	// Its ClickHouse row now names the member it was merged into, whether
	// or not a label changed (a member without labels has none to clear).
	if err := postgres.RequeueProfileExport(ctx, tx, source); err != nil {
		return err
	}
	return s.recompute(ctx, tx, dst, cause, mcv1.Channel_CHANNEL_BACKOFFICE, "")
}

// Unmerged gives the source back the records that came from it (origins:
// the source and the members folded into it) and recomputes both members'
// labels from the events each one's identifiers caused.
func (s *Service) Unmerged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, origins []uuid.UUID, at time.Time, cause string) error {
	src, dst, err := s.loadPair(ctx, tx, source, target)
	if err != nil {
		return err
	}
	ids := make([]string, len(origins))
	for i, o := range origins {
		ids[i] = o.String()
	}
	back := dst.state.Split(ids)
	back.Absorb(src.state)
	src.state = back
	if err := s.recompute(ctx, tx, src, cause, mcv1.Channel_CHANNEL_BACKOFFICE, ""); err != nil {
		return err
	}
	// Its ClickHouse row is a member's again, whether or not a label changed.
	if err := postgres.RequeueProfileExport(ctx, tx, source); err != nil {
		return err
	}
	return s.recompute(ctx, tx, dst, cause, mcv1.Channel_CHANNEL_BACKOFFICE, "")
}
