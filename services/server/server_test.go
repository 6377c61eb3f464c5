package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/server/servertest"
)

var errGone = errors.New("no such thing")

// fakeIdentity answers Resolve with whatever its test wants, and counts
// the calls that reached it.
type fakeIdentity struct {
	mcv1.UnimplementedIdentityServiceServer
	calls atomic.Int64
	err   atomic.Pointer[error]
}

func (f *fakeIdentity) Resolve(_ context.Context, req *mcv1.ResolveRequest) (*mcv1.ResolveResponse, error) {
	f.calls.Add(1)
	if e := f.err.Load(); e != nil {
		return nil, *e
	}
	return &mcv1.ResolveResponse{MemberId: "0190c1f4-0000-7000-8000-000000000001"}, nil
}

type fakeSync struct {
	mcv1.UnimplementedSyncServiceServer
	calls atomic.Int64
}

func (f *fakeSync) Subscribe(req *mcv1.SubscribeRequest, s grpc.ServerStreamingServer[mcv1.SubscribeResponse]) error {
	f.calls.Add(1)
	return s.Send(&mcv1.SubscribeResponse{ResumeToken: "t"})
}

type fakeProfile struct {
	mcv1.UnimplementedProfileServiceServer
	calls atomic.Int64
}

func (f *fakeProfile) UpdateAttributes(context.Context, *mcv1.UpdateAttributesRequest) (*mcv1.UpdateAttributesResponse, error) {
	f.calls.Add(1)
	return &mcv1.UpdateAttributesResponse{}, nil
}

type harness struct {
	conn     *grpc.ClientConn
	identity *fakeIdentity
	sync     *fakeSync
	profile  *fakeProfile
}

func serve(t *testing.T) *harness {
	t.Helper()
	gs, _, err := server.NewGRPC(servertest.Telemetry(), []server.ErrorCode{{Err: errGone, Code: codes.NotFound}})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{identity: &fakeIdentity{}, sync: &fakeSync{}, profile: &fakeProfile{}}
	mcv1.RegisterIdentityServiceServer(gs, h.identity)
	mcv1.RegisterSyncServiceServer(gs, h.sync)
	mcv1.RegisterProfileServiceServer(gs, h.profile)
	h.conn = servertest.Serve(t, gs)
	return h
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func validResolve() *mcv1.ResolveRequest {
	return &mcv1.ResolveRequest{
		Identifiers:     []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: "card-1"}},
		Channel:         mcv1.Channel_CHANNEL_POS,
		IdempotencyKey:  "till-7-0001",
		CreateIfMissing: true,
	}
}

// field names the field an InvalidArgument status points at.
func field(st *status.Status) string {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

func TestUndecodableRequestsAreInvalidArgumentNamingTheField(t *testing.T) {
	h := serve(t)
	good, err := proto.Marshal(validResolve())
	if err != nil {
		t.Fatal(err)
	}
	badString := func(num protowire.Number, s []byte) []byte {
		b := protowire.AppendTag(nil, num, protowire.BytesType)
		return protowire.AppendBytes(b, s)
	}
	badIdentifier := protowire.AppendTag(nil, 1, protowire.BytesType)
	badIdentifier = protowire.AppendBytes(badIdentifier, append(
		protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 6), badString(2, []byte("c\xffard"))...))
	for _, tc := range []struct {
		name, method string
		body         []byte
		field        string
		stream       bool
	}{
		{"invalid UTF-8 in idempotency_key", "/membercenter.v1.IdentityService/Resolve",
			append(append([]byte{}, good...), badString(5, []byte("till-\xc3\x28"))...), "idempotency_key", false},
		{"invalid UTF-8 in the second identifier's value", "/membercenter.v1.IdentityService/Resolve",
			append(append([]byte{}, good...), badIdentifier...), "identifiers[1].value", false},
		{"a message cut short", "/membercenter.v1.IdentityService/Resolve", good[:len(good)-3], "idempotency_key", false},
		{"a map value that is not UTF-8", "/membercenter.v1.ProfileService/UpdateAttributes",
			badString(2, append(badString(1, []byte("nickname")), badString(2, []byte{0xfe, 'x'})...)), "attributes.value", false},
		{"a stream request with invalid UTF-8", "/membercenter.v1.SyncService/Subscribe", badString(2, []byte{0xff}), "store_id", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.identity.calls.Load() + h.sync.calls.Load() + h.profile.calls.Load()
			if tc.stream {
				s, err := h.conn.NewStream(ctx(t), &grpc.StreamDesc{ServerStreams: true}, tc.method, grpc.ForceCodec(servertest.RawCodec{}))
				if err != nil {
					t.Fatal(err)
				}
				if err := s.SendMsg(tc.body); err != nil {
					t.Fatal(err)
				}
				_ = s.CloseSend()
				err = s.RecvMsg(&mcv1.SubscribeResponse{})
				assertInvalid(t, err, tc.field)
			} else {
				err := h.conn.Invoke(ctx(t), tc.method, tc.body, &mcv1.ResolveResponse{}, grpc.ForceCodec(servertest.RawCodec{}))
				assertInvalid(t, err, tc.field)
			}
			if after := h.identity.calls.Load() + h.sync.calls.Load() + h.profile.calls.Load(); after != before {
				t.Errorf("the handler ran %d times on an undecodable request", after-before)
			}
		})
	}
	// The same connection still works for good requests.
	if _, err := mcv1.NewIdentityServiceClient(h.conn).Resolve(ctx(t), validResolve()); err != nil {
		t.Fatalf("a good request after bad ones: %v", err)
	}
}

func assertInvalid(t *testing.T, err error, wantField string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code %s (%q), want InvalidArgument", st.Code(), st.Message())
	}
	if got := field(st); got != wantField {
		t.Errorf("field %q (message %q), want %q", got, st.Message(), wantField)
	}
	if !strings.HasPrefix(st.Message(), wantField+":") {
		t.Errorf("message %q does not start with the field %q", st.Message(), wantField)
	}
}

func TestNULBytesAreRefusedInEveryRequest(t *testing.T) {
	h := serve(t)
	id, profile, sync := mcv1.NewIdentityServiceClient(h.conn), mcv1.NewProfileServiceClient(h.conn), mcv1.NewSyncServiceClient(h.conn)

	req := validResolve()
	req.IdempotencyKey = "till\x00-7"
	_, err := id.Resolve(ctx(t), req)
	assertText(t, err, "idempotencyKey")

	req = validResolve()
	req.Identifiers = append(req.Identifiers, &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "138\x0012345678"})
	_, err = id.Resolve(ctx(t), req)
	assertText(t, err, "identifiers[1].value")

	_, err = profile.UpdateAttributes(ctx(t), &mcv1.UpdateAttributesRequest{MemberId: "0190c1f4-0000-7000-8000-000000000001",
		Attributes: map[string]string{"nickname": "a\x00b"}, IdempotencyKey: "k"})
	assertText(t, err, `attributes["nickname"]`)

	s, err := sync.Subscribe(ctx(t), &mcv1.SubscribeRequest{StoreId: "SH\x001"})
	if err == nil {
		_, err = s.Recv()
	}
	assertText(t, err, "storeId")

	if n := h.identity.calls.Load() + h.profile.calls.Load() + h.sync.calls.Load(); n != 0 {
		t.Errorf("%d requests with NUL bytes reached a service", n)
	}
}

func assertText(t *testing.T, err error, wantField string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || field(st) != wantField || !strings.Contains(st.Message(), "NUL") {
		t.Errorf("got %s %q (field %q), want InvalidArgument naming %s and the NUL byte", st.Code(), st.Message(), field(st), wantField)
	}
}

func TestErrorsAreTranslatedOnceByRuleAndClass(t *testing.T) {
	h := serve(t)
	id := mcv1.NewIdentityServiceClient(h.conn)
	restart := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"a sentinel of the rules", fmt.Errorf("member 42: %w", errGone), codes.NotFound},
		{"PostgreSQL restarting", fmt.Errorf("look up idempotency key: %w", restart), codes.Unavailable},
		{"a lost connection", fmt.Errorf("persist: %w", io.ErrUnexpectedEOF), codes.Unavailable},
		{"a closed pool", errors.New("load loyalty state: closed pool"), codes.Unavailable},
		{"a serialization failure", &pgconn.PgError{Code: "40001", Message: "could not serialize access"}, codes.Unavailable},
		{"a marked transient error", fault.Temporary(errors.New("broker restarting")), codes.Unavailable},
		{"bigint out of range", fmt.Errorf("persist loyalty effects: %w", &pgconn.PgError{Code: "22003", Message: "bigint out of range"}), codes.InvalidArgument},
		{"a marked data error", fault.Permanent(errors.New("amount too large")), codes.InvalidArgument},
		{"a status from the service", status.Error(codes.AlreadyExists, "exists"), codes.AlreadyExists},
		{"a cancelled call", fmt.Errorf("query: %w", context.Canceled), codes.Canceled},
		{"anything else", errors.New("nil map"), codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.identity.err.Store(&tc.err)
			_, err := id.Resolve(ctx(t), validResolve())
			if got := status.Code(err); got != tc.want {
				t.Errorf("%v → %s (%v), want %s", tc.err, got, err, tc.want)
			}
			if tc.want == codes.Internal && strings.Contains(status.Convert(err).Message(), "nil map") {
				t.Errorf("an internal error's detail reached the client: %v", err)
			}
		})
	}
}

// TestLongMessagesAreCut: an error's message that quotes what a caller
// sent (a page token of a megabyte, say) is cut to MaxStatusMessage bytes
// and says how long it was, whether the service translated it or answered
// with a status itself; a short one is as it was.
func TestLongMessagesAreCut(t *testing.T) {
	h := serve(t)
	id := mcv1.NewIdentityServiceClient(h.conn)
	long := "page_token " + strings.Repeat("é", 600_000) + ": malformed"
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"a sentinel of the rules", fmt.Errorf("%s: %w", long, errGone), codes.NotFound},
		{"a status from the service", status.Error(codes.InvalidArgument, long), codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.identity.err.Store(&tc.err)
			_, err := id.Resolve(ctx(t), validResolve())
			msg := status.Convert(err).Message()
			if status.Code(err) != tc.code || len(msg) > server.MaxStatusMessage+64 || !utf8.ValidString(msg) ||
				!strings.HasPrefix(msg, "page_token éé") || !strings.Contains(msg, "bytes in all)") {
				t.Errorf("%s, %d bytes: %.80q…; want %s cut to about %d bytes, valid UTF-8, saying how long it was",
					status.Code(err), len(msg), msg, tc.code, server.MaxStatusMessage)
			}
		})
	}
	short := error(status.Error(codes.InvalidArgument, "page_token: malformed"))
	h.identity.err.Store(&short)
	if _, err := id.Resolve(ctx(t), validResolve()); status.Convert(err).Message() != "page_token: malformed" {
		t.Errorf("a short message became %v", err)
	}
}

func TestReadinessSaysWhichCheckFailed(t *testing.T) {
	var pgDown atomic.Bool
	h := server.AdminHandler(http.NotFoundHandler(), map[string]server.Check{
		"postgres": func(context.Context) error {
			if pgDown.Load() {
				return errors.New("connection refused")
			}
			return nil
		},
		"kafka": func(context.Context) error { return nil },
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != http.StatusOK || strings.TrimSpace(body) != "ready" {
		t.Errorf("/readyz with every check passing: %d %q", code, body)
	}
	pgDown.Store(true)
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "postgres: connection refused") ||
		strings.Contains(body, "kafka") {
		t.Errorf("/readyz with PostgreSQL down: %d %q, want 503 naming postgres only", code, body)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while a dependency is down: %d, want 200 (the process is alive)", code)
	}
}

func TestConfigValidateNamesEveryProblem(t *testing.T) {
	err := server.Config{GRPCAddr: "nope", AdminAddr: "127.0.0.1:1", HTTPAddr: "x", Grace: 0,
		MaxConnectionAge: -time.Minute, MaxConnectionAgeGrace: -time.Second}.Validate()
	if err == nil {
		t.Fatal("a bad config passed")
	}
	for _, want := range []string{"MC_GRPC_ADDR", "MC_HTTP_ADDR", "MC_SHUTDOWN_GRACE", "MC_GRPC_MAX_CONNECTION_AGE ", "MC_GRPC_MAX_CONNECTION_AGE_GRACE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %s", err, want)
		}
	}
	if err := (server.Config{GRPCAddr: "127.0.0.1:50051", AdminAddr: "127.0.0.1:9464", Grace: time.Second}).Validate(); err != nil {
		t.Errorf("a good config: %v", err)
	}
}

// TestConnectionsAgeWithoutCuttingStreams: with MaxConnectionAge a client's
// connection is replaced (new calls go over a new one, which a load balancer
// may send to another replica) while a stream open on the old one goes on
// for the grace period, and then ends with Unavailable, so that the client
// resumes it.
func TestConnectionsAgeWithoutCuttingStreams(t *testing.T) {
	const age, grace = 300 * time.Millisecond, 2 * time.Second
	gs, hs, err := server.New(server.Config{MaxConnectionAge: age, MaxConnectionAgeGrace: grace}, servertest.Telemetry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := &countingListener{Listener: l}
	conn := servertest.ServeOn(t, gs, lis)
	health := healthpb.NewHealthClient(conn)
	c := ctx(t)

	hs.SetServingStatus("membercenter.v1.SyncService", healthpb.HealthCheckResponse_SERVING)
	started := time.Now()
	stream, err := health.Watch(c, &healthpb.HealthCheckRequest{Service: "membercenter.v1.SyncService"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first message %v, %v", m, err)
	}
	time.Sleep(3 * age)
	// New calls go over a new connection...
	if _, err := health.Check(c, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a call after the connection's age: %v", err)
	}
	if n := lis.accepted.Load(); n != 2 {
		t.Errorf("%d connections accepted, want 2: the aged one and its successor", n)
	}
	// ...while the stream on the old one still runs.
	hs.SetServingStatus("membercenter.v1.SyncService", healthpb.HealthCheckResponse_NOT_SERVING)
	if m, err := stream.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("the stream after its connection's age: %v, %v; want it to go on for the grace period", m, err)
	}
	_, err = stream.Recv()
	lasted := time.Since(started)
	if status.Code(err) != codes.Unavailable || lasted < grace || lasted > age+grace+10*time.Second {
		t.Errorf("the stream ended after %v with %v; want Unavailable after the age and the grace (%v + %v)", lasted, err, age, grace)
	}
	// The client resumes.
	stream, err = health.Watch(c, &healthpb.HealthCheckRequest{Service: "membercenter.v1.SyncService"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("resumed stream: %v, %v", m, err)
	}
}

type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}
