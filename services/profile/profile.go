// Package profile serves a member's canonical view (attributes, consents,
// balance, labels) through the gRPC ProfileService.
package profile

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Service reads profiles.
type Service struct {
	pool *pgxpool.Pool
}

// New returns the service.
func New(pool *pgxpool.Pool) *Service { return &Service{pool: pool} }

// Get returns the member's current profile and the sequence of the last
// change it reflects.
// A merged member's id answers with the member it was merged into.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (*mcv1.Profile, error) {
	id, err := postgres.CanonicalMember(ctx, s.pool, id)
	if err != nil {
		return nil, err
	}
	m, err := postgres.GetMember(ctx, s.pool, id)
	if err != nil {
		return nil, err
	}
	a, err := postgres.GetAccount(ctx, s.pool, id)
	if err != nil {
		return nil, err
	}
	return toProtoProfile(m, a), nil
}

func toProtoProfile(m postgres.MemberRow, a postgres.Account) *mcv1.Profile {
	return &mcv1.Profile{
		MemberId:      m.MemberID.String(),
		CreatedAt:     timestamppb.New(m.CreatedAt),
		PointsBalance: a.Balance,
		Attributes:    m.Attributes,
		Sequence:      uint64(m.ChangeSeq),
	}
}

// Server is the gRPC ProfileService. RPCs not built yet answer
// Unimplemented.
type Server struct {
	mcv1.UnimplementedProfileServiceServer
	svc *Service
}

// NewServer returns the gRPC adapter of svc.
func NewServer(svc *Service) *Server { return &Server{svc: svc} }

// GetProfile implements ProfileService.GetProfile.
func (s *Server) GetProfile(ctx context.Context, req *mcv1.GetProfileRequest) (*mcv1.GetProfileResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id: %w", err)
	}
	p, err := s.svc.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.GetProfileResponse{Profile: p}, nil
}
