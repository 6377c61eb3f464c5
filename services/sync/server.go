package sync

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/profile"
)

// ErrNotSupported is returned for filters and options not built yet.
var ErrNotSupported = errors.New("not supported yet")

// Server is the gRPC SyncService.
type Server struct {
	mcv1.UnimplementedSyncServiceServer
	hub      *Hub
	profiles *profile.Service
	tracer   trace.Tracer
}

// NewServer returns the gRPC adapter of hub.
func NewServer(hub *Hub, profiles *profile.Service, tp trace.TracerProvider) *Server {
	return &Server{hub: hub, profiles: profiles, tracer: tp.Tracer("github.com/membercenter/membercenter/services/sync")}
}

// Subscribe implements SyncService.Subscribe: a Ready message once the
// stream is live, then every matching change in per-member order. A
// subscriber that falls too far behind gets ResyncRequired and the stream
// ends.
func (s *Server) Subscribe(req *mcv1.SubscribeRequest, stream mcv1.SyncService_SubscribeServer) error {
	if req.GetResumeToken() != "" {
		return fmt.Errorf("resume_token: %w; take a snapshot with GetSnapshot and subscribe without a token", ErrNotSupported)
	}
	if req.GetLabelId() != "" {
		return fmt.Errorf("label_id filter: %w", ErrNotSupported)
	}
	f := Filter{StoreID: req.GetStoreId(), Channel: req.GetChannel()}
	if len(req.GetMemberIds()) > 0 {
		f.MemberIDs = map[string]bool{}
		for _, m := range req.GetMemberIds() {
			f.MemberIDs[m] = true
		}
	}
	ctx := stream.Context()
	sub, err := s.hub.Subscribe(ctx, f)
	if err != nil {
		return err
	}
	defer sub.Close()
	if err := stream.Send(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_Ready{Ready: &mcv1.Ready{}}}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.Done():
			// The buffer overflowed: whatever follows would have a gap, so
			// the client must resync instead.
			return stream.Send(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_ResyncRequired{
				ResyncRequired: &mcv1.ResyncRequired{Reason: sub.Err().Error() + "; take a snapshot with GetSnapshot and subscribe again"},
			}})
		case d := <-sub.C():
			if err := s.send(d, stream); err != nil {
				return err
			}
		}
	}
}

func (s *Server) send(d Delivery, stream mcv1.SyncService_SubscribeServer) error {
	_, span := s.tracer.Start(d.Ctx, "sync deliver", trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	return stream.Send(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_Change{Change: d.Change}})
}

// GetSnapshot implements SyncService.GetSnapshot.
func (s *Server) GetSnapshot(ctx context.Context, req *mcv1.GetSnapshotRequest) (*mcv1.GetSnapshotResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id: %w", err)
	}
	p, err := s.profiles.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.GetSnapshotResponse{Profile: p, Sequence: p.GetSequence()}, nil
}
