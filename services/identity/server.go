package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Server is the gRPC IdentityService. The RPCs the service answers as they
// are (Resolve, Link, Unlink, Merge, Unmerge, ListConflicts,
// ResolveConflict, RegisterTerminal, RevokeTerminal) are the embedded
// service's own methods; the others adapt their request or answer here.
type Server struct {
	unimplemented
	*Service
}

// unimplemented is one level deeper than *Service, so that the service's
// methods, not these stubs, answer the RPCs both have.
type unimplemented struct {
	mcv1.UnimplementedIdentityServiceServer
}

// NewServer returns the gRPC adapter of svc.
func NewServer(svc *Service) *Server { return &Server{Service: svc} }

// FindByIdentifier implements IdentityService.FindByIdentifier.
func (s *Server) FindByIdentifier(ctx context.Context, req *mcv1.FindByIdentifierRequest) (*mcv1.FindByIdentifierResponse, error) {
	m, err := s.Service.FindByIdentifier(ctx, req.GetIdentifier())
	if err != nil {
		return nil, err
	}
	return &mcv1.FindByIdentifierResponse{Member: m}, nil
}

// GetIdentityGraph implements IdentityService.GetIdentityGraph.
func (s *Server) GetIdentityGraph(ctx context.Context, req *mcv1.GetIdentityGraphRequest) (*mcv1.GetIdentityGraphResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id: %w", ErrBadID)
	}
	return s.Service.Graph(ctx, id)
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

func toProtoMerge(m postgres.MergeRow) *mcv1.MergeRecord {
	out := &mcv1.MergeRecord{
		MergeId: m.MergeID.String(), SourceMemberId: m.Source.String(), TargetMemberId: m.Target.String(),
		Reason: m.Reason, CauseId: m.CauseID, Actor: m.Actor, MergedAt: timestamppb.New(m.MergedAt),
	}
	if m.UnmergedAt != nil {
		out.UnmergedAt = timestamppb.New(*m.UnmergedAt)
	}
	return out
}

func toProtoConflict(c postgres.ConflictRow) *mcv1.IdentityConflict {
	out := &mcv1.IdentityConflict{
		ConflictId: c.ConflictID.String(), Reason: c.Reason, CauseId: c.CauseID, CreatedAt: timestamppb.New(c.CreatedAt),
	}
	for _, m := range c.MemberIDs {
		out.MemberIds = append(out.MemberIds, m.String())
	}
	var refs []map[string]string
	_ = json.Unmarshal(c.Identifiers, &refs) // written by refsJSON
	for _, r := range refs {
		out.Identifiers = append(out.Identifiers, &mcv1.IdentifierRef{
			Type:      mcv1.IdentifierType(mcv1.IdentifierType_value["IDENTIFIER_TYPE_"+strings.ToUpper(r["type"])]),
			ValueHash: r["hash"], Scope: r["scope"], Masked: r["masked"],
		})
	}
	return out
}
