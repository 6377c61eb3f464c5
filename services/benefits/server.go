package benefits

import (
	"context"
	"fmt"
	"strconv"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Server is the gRPC BenefitsService. RPCs not built yet answer
// Unimplemented.
type Server struct {
	mcv1.UnimplementedBenefitsServiceServer
	svc *Service
}

// NewServer returns the gRPC adapter of svc.
func NewServer(svc *Service) *Server { return &Server{svc: svc} }

// GetBalance implements BenefitsService.GetBalance.
func (s *Server) GetBalance(ctx context.Context, req *mcv1.GetBalanceRequest) (*mcv1.GetBalanceResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id: %w", err)
	}
	// A channel may still hold the id of a member merged since: answer for
	// the member that holds the points now.
	if id, err = postgres.CanonicalMember(ctx, s.svc.pool, id); err != nil {
		return nil, err
	}
	a, err := postgres.GetAccount(ctx, s.svc.pool, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.GetBalanceResponse{
		MemberId: id.String(), Available: a.Available, Pending: a.Pending, LifetimeEarned: a.LifetimeEarned,
	}, nil
}

// ListLedger implements BenefitsService.ListLedger.
func (s *Server) ListLedger(ctx context.Context, req *mcv1.ListLedgerRequest) (*mcv1.ListLedgerResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id: %w", err)
	}
	var before int64
	if t := req.GetPageToken(); t != "" {
		if before, err = strconv.ParseInt(t, 10, 64); err != nil || before <= 0 {
			return nil, fmt.Errorf("page_token %q: %w", t, ErrBadPageToken)
		}
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 50
	}
	lines, next, err := postgres.ListLedger(ctx, s.svc.pool, id, before, size)
	if err != nil {
		return nil, err
	}
	resp := &mcv1.ListLedgerResponse{Entries: make([]*mcv1.LedgerEntry, len(lines))}
	for i, l := range lines {
		resp.Entries[i] = toProtoEntry(l)
	}
	if next != 0 {
		resp.NextPageToken = strconv.FormatInt(next, 10)
	}
	return resp, nil
}

func toProtoEntry(l postgres.LedgerLine) *mcv1.LedgerEntry {
	return &mcv1.LedgerEntry{
		EntryId:        strconv.FormatInt(l.EntryID, 10),
		TransactionId:  l.TransactionID.String(),
		Kind:           toProtoKind(l.Kind),
		Delta:          l.Delta,
		CounterAccount: l.CounterAccount,
		Reason:         l.Reason,
		CauseId:        l.CauseID,
		CreatedAt:      timestamppb.New(l.CreatedAt),
	}
}

func toProtoKind(k string) mcv1.LedgerEntryKind {
	switch k {
	case "earn":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EARN
	case "redeem":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_REDEEM
	case "expire":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EXPIRE
	case "adjust":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_ADJUST
	case "transfer":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_TRANSFER
	case "reverse":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_REVERSE
	}
	return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_UNSPECIFIED
}
