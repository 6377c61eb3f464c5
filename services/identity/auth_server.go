package identity

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// IssueMemberCode implements IdentityService.IssueMemberCode.
func (s *Server) IssueMemberCode(ctx context.Context, req *mcv1.IssueMemberCodeRequest) (*mcv1.IssueMemberCodeResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id %q: %w", req.GetMemberId(), ErrBadID)
	}
	c, err := s.Service.IssueMemberCode(ctx, id)
	if err != nil {
		return nil, err
	}
	return toProtoMemberCode(c), nil
}

// VerifyMemberCode implements IdentityService.VerifyMemberCode.
func (s *Server) VerifyMemberCode(ctx context.Context, req *mcv1.VerifyMemberCodeRequest) (*mcv1.VerifyMemberCodeResponse, error) {
	id, err := s.Service.VerifyMemberCode(ctx, req.GetCode(), CodeUse{StoreID: req.GetStoreId(), TerminalID: req.GetTerminalId()})
	if err != nil {
		return nil, err
	}
	m, err := s.Service.Member(ctx, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.VerifyMemberCodeResponse{Member: m}, nil
}

// VerifyDeviceAssertion implements IdentityService.VerifyDeviceAssertion
// under the configured AssertionPolicy (MC_ASSERTION_*).
func (s *Server) VerifyDeviceAssertion(ctx context.Context, req *mcv1.VerifyDeviceAssertionRequest) (*mcv1.VerifyDeviceAssertionResponse, error) {
	a, err := s.Service.VerifyDeviceAssertion(ctx, req, s.Service.assertions)
	if err != nil {
		return nil, err
	}
	return toProtoAssertion(a), nil
}

func toProtoMemberCode(c MemberCode) *mcv1.IssueMemberCodeResponse {
	return &mcv1.IssueMemberCodeResponse{Code: c.Code, QrPayload: c.QRPayload, ExpiresAt: timestamppb.New(c.ExpiresAt)}
}

func toProtoTerminal(t postgres.TerminalRow) *mcv1.Terminal {
	out := &mcv1.Terminal{
		TerminalId:   t.TerminalID,
		StoreId:      t.StoreID,
		PublicKey:    t.PublicKey,
		Description:  t.Description,
		RegisteredAt: timestamppb.New(t.RegisteredAt),
	}
	if t.RevokedAt != nil {
		out.RevokedAt = timestamppb.New(*t.RevokedAt)
	}
	return out
}

func toProtoAssertion(a Assertion) *mcv1.VerifyDeviceAssertionResponse {
	return &mcv1.VerifyDeviceAssertionResponse{
		MemberId:   a.MemberID.String(),
		AssertedAt: timestamppb.New(a.AssertedAt),
		Modality:   a.Modality,
	}
}
