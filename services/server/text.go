package server

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/membercenter/membercenter/pipeline/plausible"
)

// textUnary refuses requests with a string, at any depth, that PostgreSQL text or
// jsonb cannot hold (a NUL byte, invalid UTF-8): InvalidArgument naming the
// field, before a service stores it and the database answers with an
// internal error. It runs beside the protovalidate rules, on every unary
// request and every message a stream receives.
func textUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := checkText(req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func textStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &textStreamRecv{ss})
}

type textStreamRecv struct{ grpc.ServerStream }

func (s *textStreamRecv) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return checkText(m)
}

func checkText(m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil
	}
	err := plausible.Text(pm)
	if err == nil {
		return nil
	}
	var fe *plausible.FieldError
	if !errors.As(err, &fe) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	st := status.New(codes.InvalidArgument, fe.Error())
	if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: fe.Field, Description: fe.Reason}}}); derr == nil {
		return d.Err()
	}
	return st.Err()
}
