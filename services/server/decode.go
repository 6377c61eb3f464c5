package server

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// wireCodec is the server's protobuf codec. A request whose bytes do not
// decode (a string that is not UTF-8, a message cut short) is the caller's
// mistake and must be answered InvalidArgument naming the field. grpc-go
// (v1.85, rpc_util.go recv) turns every error a codec's Unmarshal returns,
// status errors included, into Internal "grpc: failed to unmarshal the
// received message", and serverStream.RecvMsg writes that status at once, so
// neither the codec nor an interceptor can change it afterwards. So the codec
// reports success, keeps the refusal beside the message it could not fill,
// and the first interceptor answers with it before anything reads the
// message.
type wireCodec struct {
	proto encoding.CodecV2
	bad   sync.Map // the message (a pointer) → its *status.Status
}

func newWireCodec() *wireCodec {
	return &wireCodec{proto: encoding.GetCodecV2(protocodec.Name)}
}

var _ encoding.CodecV2 = (*wireCodec)(nil)

func (c *wireCodec) Name() string { return c.proto.Name() }

func (c *wireCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c *wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.proto.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	c.bad.Store(v, undecodable(data.Materialize(), m.ProtoReflect().Descriptor(), err))
	return nil
}

// refusal returns (and forgets) the refusal of a message that did not decode.
func (c *wireCodec) refusal(m any) error {
	if m == nil {
		return nil
	}
	if st, ok := c.bad.LoadAndDelete(m); ok {
		return st.(*status.Status).Err()
	}
	return nil
}

func (c *wireCodec) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := c.refusal(req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (c *wireCodec) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &decodedStream{ServerStream: ss, codec: c})
}

type decodedStream struct {
	grpc.ServerStream
	codec *wireCodec
}

func (s *decodedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.codec.refusal(m)
}

// undecodable is the InvalidArgument answer to bytes that are not a valid
// md, naming the first field that does not decode where the wire format
// tells.
func undecodable(b []byte, md protoreflect.MessageDescriptor, err error) *status.Status {
	field, reason := locate(b, md, "")
	msg := fmt.Sprintf("the request is not a valid %s: %v", md.FullName(), err)
	if field != "" {
		msg = fmt.Sprintf("%s: %s", field, reason)
	}
	st := status.New(codes.InvalidArgument, msg)
	if field == "" {
		return st
	}
	if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: field, Description: reason}}}); derr == nil {
		return d
	}
	return st
}

// locate walks the wire format of b as a message md and returns the path of
// the first field that does not decode (proto field names, list indexes,
// "field.value" for map values) and why; "" when it finds none.
func locate(b []byte, md protoreflect.MessageDescriptor, prefix string) (field, reason string) {
	seen := map[protowire.Number]int{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return prefix + "(tag)", fmt.Sprintf("is malformed: %v", protowire.ParseError(n))
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		name := prefix + strconv.Itoa(int(num))
		if fd != nil {
			name = prefix + string(fd.Name())
			if fd.IsList() {
				name += "[" + strconv.Itoa(seen[num]) + "]"
			}
		}
		seen[num]++
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return name, fmt.Sprintf("is truncated or malformed: %v", protowire.ParseError(m))
		}
		if fd != nil && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			switch fd.Kind() {
			case protoreflect.StringKind:
				if !utf8.Valid(v) {
					return name, "is not valid UTF-8"
				}
			case protoreflect.MessageKind:
				if f, r := locate(v, fd.Message(), name+"."); f != "" {
					return f, r
				}
			}
		}
		b = b[m:]
	}
	return "", ""
}
