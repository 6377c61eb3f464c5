package identity

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Server is the gRPC IdentityService. RPCs not built yet answer
// Unimplemented.
type Server struct {
	mcv1.UnimplementedIdentityServiceServer
	svc *Service
}

// NewServer returns the gRPC adapter of svc.
func NewServer(svc *Service) *Server { return &Server{svc: svc} }

// Resolve implements IdentityService.Resolve.
func (s *Server) Resolve(ctx context.Context, req *mcv1.ResolveRequest) (*mcv1.ResolveResponse, error) {
	return s.svc.Resolve(ctx, req)
}

// FindByIdentifier implements IdentityService.FindByIdentifier.
func (s *Server) FindByIdentifier(ctx context.Context, req *mcv1.FindByIdentifierRequest) (*mcv1.FindByIdentifierResponse, error) {
	m, err := s.svc.FindByIdentifier(ctx, req.GetIdentifier())
	if err != nil {
		return nil, err
	}
	return &mcv1.FindByIdentifierResponse{Member: m}, nil
}

// GetIdentityGraph implements IdentityService.GetIdentityGraph (identifiers
// only until merges exist).
func (s *Server) GetIdentityGraph(ctx context.Context, req *mcv1.GetIdentityGraphRequest) (*mcv1.GetIdentityGraphResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id: %w", err)
	}
	m, err := s.svc.Member(ctx, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.GetIdentityGraphResponse{Member: m}, nil
}

func toProtoMember(m postgres.MemberRow, ids []postgres.IdentifierRow) *mcv1.Member {
	out := &mcv1.Member{
		MemberId:    m.MemberID.String(),
		CreatedAt:   timestamppb.New(m.CreatedAt),
		Identifiers: toRowRefs(ids),
	}
	if m.MergedInto != nil {
		out.MergedInto = m.MergedInto.String()
	}
	return out
}
