// Package servertest serves a test's gRPC server (built by package server)
// on a loopback port and dials it.
package servertest

import (
	"log/slog"
	"net"
	"testing"

	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/membercenter/membercenter/services/server"
)

// Telemetry records nothing: no traces, no metrics, no logs.
func Telemetry() server.Telemetry {
	return server.Telemetry{Tracers: tracenoop.NewTracerProvider(), Meters: noop.NewMeterProvider(),
		Propagator: propagation.TraceContext{}, Logger: slog.New(slog.DiscardHandler)}
}

// Serve serves gs on a loopback port until the test ends, and returns a
// connection to it, closed when the test ends.
func Serve(t testing.TB, gs *grpc.Server) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ServeOn(t, gs, lis)
}

// ServeOn is Serve on lis.
func ServeOn(t testing.TB, gs *grpc.Server, lis net.Listener) *grpc.ClientConn {
	t.Helper()
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
