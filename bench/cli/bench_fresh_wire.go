package cli

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/server/servertest"
)

// wireSubscription is a Subscribe stream whose messages are read on the
// wire for what the freshness checker needs, not decoded: the stream is
// unfiltered, so it carries every change of the run, a member's first
// LabelsChanged with every label of the catalogue among them, and decoding
// them all in the platform's process took about a tenth of its CPU in the
// freshness run. A client on a machine of its own decodes there.
type wireSubscription struct {
	stream grpc.ClientStream
}

// subscribeWire opens an unfiltered Subscribe stream from token.
func subscribeWire(ctx context.Context, conn grpc.ClientConnInterface, token string) (*wireSubscription, error) {
	s, err := conn.NewStream(ctx, &mcv1.SyncService_ServiceDesc.Streams[0], mcv1.SyncService_Subscribe_FullMethodName,
		grpc.ForceCodec(servertest.RawCodec{}))
	if err != nil {
		return nil, err
	}
	if err := s.SendMsg(&mcv1.SubscribeRequest{ResumeToken: token}); err != nil {
		return nil, err
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	return &wireSubscription{stream: s}, nil
}

// subscribeMessage is what the checker reads of a SubscribeResponse.
type subscribeMessage struct {
	ready, resync bool
	token         string
	// change: a change; points: it is a PointsChanged; cause: its cause id.
	change, points bool
	cause          string
}

// recv reads the next message.
func (w *wireSubscription) recv() (subscribeMessage, error) {
	var b []byte
	if err := w.stream.RecvMsg(&b); err != nil {
		return subscribeMessage{}, err
	}
	return readSubscribeResponse(b)
}

// readSubscribeResponse reads b, a SubscribeResponse on the wire.
func readSubscribeResponse(b []byte) (subscribeMessage, error) {
	var m subscribeMessage
	var change []byte
	err := eachField(b, func(num protowire.Number, v []byte) {
		switch num {
		case 1:
			m.change, change = true, v
		case 2:
			m.resync = true
		case 3:
			m.ready = true
		case 4:
			m.token = string(v)
		}
	})
	if err != nil {
		return m, fmt.Errorf("subscribe response: %w", err)
	}
	if m.change {
		err = eachField(change, func(num protowire.Number, v []byte) {
			switch num {
			case 5:
				m.cause = string(v)
			case 11:
				m.points = true
			}
		})
		if err != nil {
			return m, fmt.Errorf("subscribe response's change: %w", err)
		}
	}
	return m, nil
}
