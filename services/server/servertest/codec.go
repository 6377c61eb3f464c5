package servertest

import "google.golang.org/protobuf/proto"

// RawCodec is the protobuf codec of a client that handles bytes itself: a
// []byte request is sent as it is, whatever the method's type (a client
// with a broken encoder); an answer into a *[]byte is kept as its bytes (a
// client that checks them on the wire). Any other message is protobuf.
// Use it with grpc.ForceCodec.
type RawCodec struct{}

func (RawCodec) Name() string { return "proto" }

func (RawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return proto.Marshal(v.(proto.Message))
}

// Unmarshal is given bytes of the answer's own (gRPC materialises them
// for a codec of this kind), so a *[]byte keeps them.
func (RawCodec) Unmarshal(b []byte, v any) error {
	if p, ok := v.(*[]byte); ok {
		*p = b
		return nil
	}
	return proto.Unmarshal(b, v.(proto.Message))
}
