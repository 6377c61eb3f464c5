package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	_ "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/server/servertest"
)

// clearRefusal is what the answer to a bad request may say: what was
// wrong with it, or that what it names is not there or not allowed.
// Internal, Unknown or Unavailable (on healthy servers) would leave a
// caller unable to tell its mistake from the platform's.
var clearRefusal = map[codes.Code]bool{
	codes.OK: true, codes.InvalidArgument: true, codes.NotFound: true, codes.FailedPrecondition: true,
	codes.AlreadyExists: true, codes.PermissionDenied: true, codes.Unauthenticated: true, codes.OutOfRange: true,
	codes.ResourceExhausted: true, codes.Aborted: true,
}

// TestEveryRPCAnswersBadRequestsClearly sends every RPC of the public API
// an empty request, one with every field set to a value out of the
// ordinary (empty, blank, 10 kB, not a number, not a UUID, negative,
// an enum number no one defined, nested the same way), and bytes that are
// no protobuf at all: each answer is a clear refusal (or a success), never
// an internal error, and the servers still answer afterwards.
func TestEveryRPCAnswersBadRequestsClearly(t *testing.T) {
	e, ctx := startWithin(t, 3*time.Minute)
	var methods []protoreflect.MethodDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("membercenter.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			s := f.Services().Get(i)
			for j := range s.Methods().Len() {
				methods = append(methods, s.Methods().Get(j))
			}
		}
		return true
	})
	if len(methods) < 30 {
		t.Fatalf("found %d methods of membercenter.v1; the registry is not what this test expects", len(methods))
	}
	for _, m := range methods {
		path := fmt.Sprintf("/%s/%s", m.Parent().FullName(), m.Name())
		for i, req := range badRequests(m.Input()) {
			code, err := call(ctx, e.conn, m, path, req)
			if !clearRefusal[code] {
				t.Errorf("%s, request %d (%v): %v; want a clear refusal", path, i, shortText(req), err)
			}
		}
		code, err := call(ctx, e.conn, m, path, []byte{0xff, 0xff, 0xff, 0x0f, 0x01})
		if code != codes.InvalidArgument {
			t.Errorf("%s, bytes that are no protobuf: %v; want InvalidArgument", path, err)
		}
	}
	// Still serving.
	if _, err := e.pool.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	m := methods[0]
	if code, err := call(ctx, e.conn, m, fmt.Sprintf("/%s/%s", m.Parent().FullName(), m.Name()), dynamicpb.NewMessage(m.Input())); !clearRefusal[code] {
		t.Fatalf("after the bad requests: %v", err)
	}
}

// call invokes m with req (bytes are sent as they are, whatever m's
// type) and returns the status code; a server stream is
// read until its first message or error, or for a second (a subscription
// that waits for changes is answering).
func call(ctx context.Context, conn *grpc.ClientConn, m protoreflect.MethodDescriptor, path string, req any) (codes.Code, error) {
	var opts []grpc.CallOption
	if _, raw := req.([]byte); raw {
		opts = append(opts, grpc.ForceCodec(servertest.RawCodec{}))
	}
	if !m.IsStreamingServer() {
		err := conn.Invoke(ctx, path, req, dynamicpb.NewMessage(m.Output()), opts...)
		return status.Code(err), err
	}
	// A subscription that is answering waits for changes: a second of
	// that is a success. Bytes that are no protobuf must be refused,
	// however long the machine takes.
	wait := time.Second
	if _, raw := req.([]byte); raw {
		wait = time.Minute
	}
	sctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	s, err := conn.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true}, path, opts...)
	if err != nil {
		return status.Code(err), err
	}
	if err := s.SendMsg(req); err != nil {
		return status.Code(err), err
	}
	if err := s.CloseSend(); err != nil {
		return status.Code(err), err
	}
	err = s.RecvMsg(dynamicpb.NewMessage(m.Output()))
	if sctx.Err() != nil && ctx.Err() == nil { // waiting, as a subscription does
		return codes.OK, nil
	}
	if errors.Is(err, io.EOF) { // the stream ended without an error
		return codes.OK, nil
	}
	return status.Code(err), err
}

// badRequests are requests of type d out of the ordinary.
func badRequests(d protoreflect.MessageDescriptor) []proto.Message {
	out := []proto.Message{dynamicpb.NewMessage(d)}
	for v := range badValues {
		out = append(out, fill(d, v, 0))
	}
	return out
}

// badValues is how many kinds of bad value fill knows.
const badValues = 4

// fill makes a message of type d with every field set to the kind-th bad
// value, nested messages filled the same way down to a depth of 3.
func fill(d protoreflect.MessageDescriptor, kind, depth int) *dynamicpb.Message {
	msg := dynamicpb.NewMessage(d)
	if depth > 3 {
		return msg
	}
	fields := d.Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() && o.Fields().Get(0) != f && kind%2 == 0 {
			continue // one member of each oneof, but the last one set for odd kinds
		}
		if f.IsMap() {
			m := msg.Mutable(f).Map()
			k := bad(f.MapKey(), kind, depth)
			m.Set(k.MapKey(), bad(f.MapValue(), kind, depth))
			continue
		}
		v := bad(f, kind, depth)
		if !v.IsValid() {
			continue
		}
		if f.IsList() {
			l := msg.Mutable(f).List()
			l.Append(v)
			l.Append(v)
			continue
		}
		msg.Set(f, v)
	}
	return msg
}

func bad(f protoreflect.FieldDescriptor, kind, depth int) protoreflect.Value {
	strs := []string{"", " ", strings.Repeat("x", 10_000), "-1; DROP TABLE members; --"}
	ints := []int64{0, -1, 1 << 62, -(1 << 62)}
	switch f.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(strs[kind])
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(strs[kind]))
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(kind%2 == 1)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber([]int32{0, 999, -1, 1}[kind]))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(ints[kind] >> 32))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(ints[kind])
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(ints[kind]))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(ints[kind]))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(ints[kind]))
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(ints[kind]))
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return protoreflect.ValueOfMessage(fill(f.Message(), kind, depth+1))
	}
	return protoreflect.Value{}
}

func shortText(m any) string {
	s := fmt.Sprint(m)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
