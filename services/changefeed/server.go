package changefeed

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// ErrUnknownLabel refuses a label filter the catalogue does not have.
var ErrUnknownLabel = errors.New("unknown label")

// Snapshots reads a member's whole state, for a client that starts over.
type Snapshots interface {
	Snapshot(ctx context.Context, member uuid.UUID) (*mcv1.Profile, error)
}

// Labels says whether a label filter names a catalogue label.
type Labels interface {
	Known(labelID string) bool
}

// Server is the gRPC SyncService.
type Server struct {
	mcv1.UnimplementedSyncServiceServer
	hub       *Hub
	snapshots Snapshots
	labels    Labels
	tracer    trace.Tracer
}

// NewServer returns the gRPC adapter of hub.
func NewServer(hub *Hub, snapshots Snapshots, labels Labels, tp trace.TracerProvider) *Server {
	return &Server{hub: hub, snapshots: snapshots, labels: labels, tracer: tp.Tracer("github.com/membercenter/membercenter/services/changefeed")}
}

// Subscribe implements SyncService.Subscribe: with a resume token, first
// the matching changes the client missed since the token, then a Ready
// message once the stream is live, then every matching change in
// per-member order. Every message carries the token to resume after it. A
// subscriber that falls too far behind (DefaultQueue changes waiting) gets
// ResyncRequired and the stream ends.
func (s *Server) Subscribe(req *mcv1.SubscribeRequest, stream mcv1.SyncService_SubscribeServer) error {
	var from Position
	if t := req.GetResumeToken(); t != "" {
		var err error
		if from, err = DecodeToken(t); err != nil {
			return err
		}
	}
	if l := req.GetLabelId(); l != "" && s.labels != nil && !s.labels.Known(l) {
		return fmt.Errorf("label_id %q: %w; ListLabels lists the catalogue", l, ErrUnknownLabel)
	}
	f := Filter{StoreID: req.GetStoreId(), Channel: req.GetChannel(), LabelID: req.GetLabelId()}
	if len(req.GetMemberIds()) > 0 {
		f.MemberIDs = map[string]bool{}
		for i, m := range req.GetMemberIds() {
			// Changes name members in the canonical (lower-case) form; an
			// id sent in another (upper case, as every other RPC takes it)
			// would match none of them.
			id, err := uuid.Parse(m)
			if err != nil {
				return fmt.Errorf("member_ids[%d]: %w", i, err)
			}
			f.MemberIDs[id.String()] = true
		}
	}
	ctx := stream.Context()
	if from != nil {
		// A token of another replica may be ahead of this one's hub.
		select {
		case <-s.hub.Ready():
		case <-ctx.Done():
			return ctx.Err()
		}
		if !s.hub.CatchUp(ctx, from, CatchUpWait) {
			// Behind a token the log holds (a stalled hub), or a token
			// beyond the log, which the replay refuses.
			if within, err := s.hub.withinLog(ctx, from); err == nil && within {
				return ErrFeedBehind
			}
		}
	}
	// Live changes buffer from here while the missed ones are replayed.
	sub, live, err := s.hub.Subscribe(ctx, f)
	if err != nil {
		return err
	}
	defer sub.Close()
	at := live
	// Last sequence sent per member while replaying: a change the relay
	// published again after a restart is not sent twice.
	replayed := map[string]uint64{}
	if from != nil {
		err := s.hub.Replay(ctx, f, from, live, func(d Delivery) error {
			if d.Change.GetSequence() <= replayed[d.Change.GetMemberId()] {
				return nil
			}
			replayed[d.Change.GetMemberId()] = d.Change.GetSequence()
			return s.send(d, stream)
		})
		if err != nil {
			return err
		}
	}
	if err := stream.Send(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_Ready{Ready: &mcv1.Ready{}}, ResumeToken: EncodeToken(at)}); err != nil {
		return err
	}
	var batch []Delivery
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.Ready():
			batch = sub.Take(batch)
			for _, d := range batch {
				if d.Change.GetSequence() <= replayed[d.Change.GetMemberId()] {
					continue
				}
				if err := s.send(d, stream); err != nil {
					return err
				}
			}
			batch = emptied(batch) // a burst's array is not kept for the stream's life
		case <-sub.Done():
			// The queue overflowed: whatever follows would have a gap, so
			// the client must resync instead.
			return stream.Send(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_ResyncRequired{
				ResyncRequired: &mcv1.ResyncRequired{Reason: sub.Err().Error() + "; " + ResyncAdvice},
			}})
		}
	}
}

func (s *Server) send(d Delivery, stream mcv1.SyncService_SubscribeServer) error {
	_, span := s.tracer.Start(d.Ctx, "sync deliver", trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	return stream.Send(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_Change{Change: d.Change}, ResumeToken: EncodeToken(d.After)})
}

// GetSnapshot implements SyncService.GetSnapshot.
func (s *Server) GetSnapshot(ctx context.Context, req *mcv1.GetSnapshotRequest) (*mcv1.GetSnapshotResponse, error) {
	id, err := uuid.Parse(req.GetMemberId())
	if err != nil {
		return nil, fmt.Errorf("member_id: %w", err)
	}
	p, err := s.snapshots.Snapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	return &mcv1.GetSnapshotResponse{Profile: p, Sequence: p.GetSequence()}, nil
}
