package servertest

import "google.golang.org/protobuf/proto"

// RawCodec is the protobuf codec of a client with a broken encoder: a
// []byte request is sent as it is, whatever the method's type; any other
// message, and every answer, as protobuf. Use it with grpc.ForceCodec.
type RawCodec struct{}

func (RawCodec) Name() string { return "proto" }

func (RawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return proto.Marshal(v.(proto.Message))
}

func (RawCodec) Unmarshal(b []byte, v any) error { return proto.Unmarshal(b, v.(proto.Message)) }
