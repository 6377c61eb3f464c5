package profile

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// Server is the gRPC ProfileService.
type Server struct {
	mcv1.UnimplementedProfileServiceServer
	svc *Service
}

// NewServer returns the gRPC adapter of svc.
func NewServer(svc *Service) *Server { return &Server{svc: svc} }

// GetProfile implements ProfileService.GetProfile.
func (s *Server) GetProfile(ctx context.Context, req *mcv1.GetProfileRequest) (*mcv1.GetProfileResponse, error) {
	id, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	p, err := s.svc.GetToSend(ctx, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.GetProfileResponse{Profile: p}, nil
}

// ListLabels implements ProfileService.ListLabels.
func (s *Server) ListLabels(_ context.Context, req *mcv1.ListLabelsRequest) (*mcv1.ListLabelsResponse, error) {
	return s.svc.ListLabels(req.GetGroup()), nil
}

// UpdateAttributes implements ProfileService.UpdateAttributes.
func (s *Server) UpdateAttributes(ctx context.Context, req *mcv1.UpdateAttributesRequest) (*mcv1.UpdateAttributesResponse, error) {
	return s.svc.UpdateAttributes(ctx, req, auth.ChannelOf(ctx))
}

// SetConsent implements ProfileService.SetConsent.
func (s *Server) SetConsent(ctx context.Context, req *mcv1.SetConsentRequest) (*mcv1.SetConsentResponse, error) {
	return s.svc.SetConsent(ctx, req, auth.ChannelOf(ctx))
}

// CountSegment implements ProfileService.CountSegment.
func (s *Server) CountSegment(ctx context.Context, req *mcv1.CountSegmentRequest) (*mcv1.CountSegmentResponse, error) {
	n, q, err := s.svc.CountSegment(ctx, req.GetExpression(), req.GetPurpose())
	if err != nil {
		return nil, segmentStatus(err)
	}
	return &mcv1.CountSegmentResponse{Members: n, Sql: q.Where}, nil
}

// ExportSegment implements ProfileService.ExportSegment.
func (s *Server) ExportSegment(req *mcv1.ExportSegmentRequest, stream grpc.ServerStreamingServer[mcv1.ExportSegmentResponse]) error {
	batch := int(req.GetBatchSize())
	if batch == 0 {
		batch = 1000
	}
	err := s.svc.ExportSegment(stream.Context(), req.GetExpression(), req.GetPurpose(), batch, func(ids []string) error {
		return stream.Send(&mcv1.ExportSegmentResponse{MemberIds: ids})
	})
	return segmentStatus(err)
}

// ExportMemberData implements ProfileService.ExportMemberData.
func (s *Server) ExportMemberData(ctx context.Context, req *mcv1.ExportMemberDataRequest) (*mcv1.ExportMemberDataResponse, error) {
	id, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	d, err := s.svc.ExportMemberData(ctx, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.ExportMemberDataResponse{MemberId: d.MemberID.String(), ExportedAt: timestamppb.New(d.ExportedAt), Document: string(d.Document)}, nil
}

// segmentStatus answers a bad expression with InvalidArgument and where it
// went wrong.
func segmentStatus(err error) error {
	var se *segment.Error
	if errors.As(err, &se) {
		return status.Error(codes.InvalidArgument, se.Error())
	}
	return err
}

// EraseMember implements ProfileService.EraseMember.
func (s *Server) EraseMember(ctx context.Context, req *mcv1.EraseMemberRequest) (*mcv1.EraseMemberResponse, error) {
	return s.svc.EraseMember(ctx, req, auth.ChannelOf(ctx), auth.Actor(ctx))
}
