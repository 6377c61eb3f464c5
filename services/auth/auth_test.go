package auth_test

import (
	"context"
	"encoding/base64"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/server/servertest"
	"github.com/membercenter/membercenter/services/telemetry"
)

var (
	secretPOS  = base64.StdEncoding.EncodeToString([]byte("pos-secret-pos-secret-pos-secret-0"))
	secretMini = base64.StdEncoding.EncodeToString([]byte("mini-secret-mini-secret-mini-secret"))
	member     = "01a20000-0000-7000-8000-000000000001"
	other      = "01a20000-0000-7000-8000-000000000002"
)

const clients = `
clients:
  - id: pos-sh
    channel: pos
    secret: SECRET_POS
    scopes: [identity.resolve, benefits.*, profile.read]
  - id: miniprogram
    channel: miniprogram
    secret: SECRET_MINI
    scopes: [profile.read, coupons.claim, sync.subscribe]
    own_members: true
`

// profiles answers GetProfile and Subscribe without storage: these tests
// are about the gate in front of the services.
type profiles struct {
	mcv1.UnimplementedProfileServiceServer
}

func (profiles) GetProfile(ctx context.Context, req *mcv1.GetProfileRequest) (*mcv1.GetProfileResponse, error) {
	p, _ := auth.FromContext(ctx)
	return &mcv1.GetProfileResponse{Profile: &mcv1.Profile{MemberId: req.GetMemberId(), Attributes: map[string]string{"caller": p.Client.ID}}}, nil
}

type syncs struct {
	mcv1.UnimplementedSyncServiceServer
}

// Subscribe says Ready and holds the stream open until it ends.
func (syncs) Subscribe(req *mcv1.SubscribeRequest, s mcv1.SyncService_SubscribeServer) error {
	if err := s.Send(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_Ready{Ready: &mcv1.Ready{}}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return s.Context().Err()
}

// testNow is the tests' clock: tokens are minted and checked at it.
var testNow = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

func atTestNow() time.Time { return testNow }

func serve(t *testing.T) (*auth.Authenticator, *grpc.ClientConn) {
	t.Helper()
	a, err := auth.Parse([]byte(strings.NewReplacer("SECRET_POS", secretPOS, "SECRET_MINI", secretMini).Replace(clients)))
	if err != nil {
		t.Fatal(err)
	}
	a.SetClock(atTestNow)
	return a, serveAuth(t, a)
}

// serveAuth serves the fake services behind a.
func serveAuth(t *testing.T, a *auth.Authenticator) *grpc.ClientConn {
	t.Helper()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "auth-test", LogLevel: "error"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, hs, err := server.NewGRPC(server.Telemetry{Tracers: tel.Tracers, Meters: tel.Meters, Propagator: tel.Propagator, Logger: tel.Logger}, nil, a)
	if err != nil {
		t.Fatal(err)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	mcv1.RegisterProfileServiceServer(srv, profiles{})
	mcv1.RegisterSyncServiceServer(srv, syncs{})
	return servertest.Serve(t, srv)
}

// sign makes a token by hand, as a client's own code would.
func sign(t *testing.T, kid, secret string, c jwt.MapClaims) string {
	t.Helper()
	key, _ := base64.StdEncoding.DecodeString(secret)
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func withAuth(header string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_ = cancel
	if header == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", header)
}

func with(token string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_ = cancel
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func TestCallsWithoutValidCredentialsAreUnauthenticated(t *testing.T) {
	a, conn := serve(t)
	pc := mcv1.NewProfileServiceClient(conn)
	good, err := a.Mint("pos-sh", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := a.Mint("pos-sh", -time.Hour)
	forged, _ := auth.Parse([]byte("clients:\n  - {id: pos-sh, channel: pos, secret: " + secretMini + ", scopes: ['*']}\n"))
	forged.SetClock(atTestNow)
	forgedToken, _ := forged.Mint("pos-sh", time.Minute)
	ghosts, _ := auth.Parse([]byte("clients:\n  - {id: ghost, channel: pos, secret: " + secretPOS + ", scopes: ['*']}\n"))
	ghosts.SetClock(atTestNow)
	ghostToken, _ := ghosts.Mint("ghost", time.Minute)
	now := testNow
	tenYears := sign(t, "pos-sh", secretPOS, jwt.MapClaims{"sub": "pos-sh", "iss": "membercenter", "iat": now.Unix(), "exp": now.AddDate(10, 0, 0).Unix()})
	noIssueTime := sign(t, "pos-sh", secretPOS, jwt.MapClaims{"sub": "pos-sh", "iss": "membercenter", "exp": now.Add(time.Minute).Unix()})
	// Every refused token gets the same answer: which check failed (an
	// unknown client, a wrong key, an expiry) is no business of a prober.
	invalid := auth.ErrInvalidToken.Error()
	for _, tc := range []struct{ name, auth, words string }{
		{"no token", "", "no credentials"},
		{"another scheme", "Basic " + good, `must be "Bearer <token>"`},
		{"not a JWT", "Bearer abc.def", invalid},
		{"expired", "Bearer " + expired, invalid},
		{"signed with another secret", "Bearer " + forgedToken, invalid},
		{"an unknown client", "Bearer " + ghostToken, invalid},
		{"tampered", "Bearer " + good[:len(good)-3] + "AAA", invalid},
		{"valid for ten years", "Bearer " + tenYears, invalid},
		{"without an issue time", "Bearer " + noIssueTime, invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pc.GetProfile(withAuth(tc.auth), &mcv1.GetProfileRequest{MemberId: member})
			if status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != tc.words && !strings.Contains(err.Error(), tc.words) {
				t.Errorf("error %v; want Unauthenticated saying %q", err, tc.words)
			}
			if strings.Contains(err.Error(), "ghost") || strings.Contains(err.Error(), "signature") {
				t.Errorf("error %v tells why the token was refused", err)
			}
		})
	}
	// The scheme is case-insensitive.
	for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
		if _, err := pc.GetProfile(withAuth(scheme+" "+good), &mcv1.GetProfileRequest{MemberId: member}); err != nil {
			t.Errorf("scheme %q: %v", scheme, err)
		}
	}
	// Nor will the platform mint a token longer-lived than it accepts.
	if _, err := a.Mint("pos-sh", 10*365*24*time.Hour); err == nil || !strings.Contains(err.Error(), "maximum token lifetime") {
		t.Errorf("minting a ten-year token: %v; want refused for the maximum lifetime", err)
	}
	// Health needs no credentials.
	if _, err := healthpb.NewHealthClient(conn).Check(with(""), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check: %v", err)
	}
	// A good token reaches the service, which knows the caller.
	resp, err := pc.GetProfile(with(good), &mcv1.GetProfileRequest{MemberId: member})
	if err != nil || resp.GetProfile().GetAttributes()["caller"] != "pos-sh" {
		t.Errorf("good token: %v, %v", resp, err)
	}
}

func TestScopesAndOwnMembers(t *testing.T) {
	a, conn := serve(t)
	pc, sc := mcv1.NewProfileServiceClient(conn), mcv1.NewSyncServiceClient(conn)
	pos, _ := a.Mint("pos-sh", time.Minute)
	mini, _ := a.Mint("miniprogram", time.Minute, member)

	// POS may read profiles but not change them or subscribe.
	_, err := pc.UpdateAttributes(with(pos), &mcv1.UpdateAttributesRequest{MemberId: member, Attributes: map[string]string{"city": "x"}, IdempotencyKey: "k"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "profile.write") {
		t.Errorf("POS UpdateAttributes: %v; want PermissionDenied naming profile.write", err)
	}
	s, err := sc.Subscribe(with(pos), &mcv1.SubscribeRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "sync.subscribe") {
		t.Errorf("POS Subscribe: %v; want PermissionDenied naming sync.subscribe", err)
	}

	// The mini-program acts for the member its token names, and no other.
	if _, err := pc.GetProfile(with(mini), &mcv1.GetProfileRequest{MemberId: member}); err != nil {
		t.Errorf("mini-program reading its member: %v", err)
	}
	if _, err := pc.GetProfile(with(mini), &mcv1.GetProfileRequest{MemberId: strings.ToUpper(member)}); err != nil {
		t.Errorf("mini-program reading its member, the id in upper case: %v", err)
	}
	_, err = pc.GetProfile(with(mini), &mcv1.GetProfileRequest{MemberId: other})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), other) {
		t.Errorf("mini-program reading another member: %v; want PermissionDenied naming it", err)
	}
	for _, tc := range []struct {
		name string
		req  *mcv1.SubscribeRequest
		ok   bool
	}{
		{"its member", &mcv1.SubscribeRequest{MemberIds: []string{member}}, true},
		{"its member in upper case", &mcv1.SubscribeRequest{MemberIds: []string{strings.ToUpper(member)}}, true},
		{"every member", &mcv1.SubscribeRequest{}, false},
		{"another member too", &mcv1.SubscribeRequest{MemberIds: []string{member, other}}, false},
	} {
		t.Run("subscribe to "+tc.name, func(t *testing.T) {
			s, err := sc.Subscribe(with(mini), tc.req)
			var m *mcv1.SubscribeResponse
			if err == nil {
				m, err = s.Recv()
			}
			if tc.ok && (err != nil || m.GetReady() == nil) {
				t.Errorf("got %v, %v; want Ready", m, err)
			}
			if !tc.ok && status.Code(err) != codes.PermissionDenied {
				t.Errorf("got %v, %v; want PermissionDenied", m, err)
			}
		})
	}
}

// A stream lives as long as its token: at expiry it ends with
// Unauthenticated (the client resumes with a new token).
func TestStreamEndsWhenItsTokenExpires(t *testing.T) {
	a, conn := serve(t)
	sc := mcv1.NewSyncServiceClient(conn)
	base := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	var clock atomic.Pointer[time.Time]
	clock.Store(&base)
	a.SetClock(func() time.Time { return *clock.Load() })
	mini, err := a.Mint("miniprogram", time.Minute, member)
	if err != nil {
		t.Fatal(err)
	}
	// Ninety seconds on, the token (one minute, with thirty seconds of
	// allowed skew) has one second left.
	later := base.Add(89 * time.Second)
	clock.Store(&later)
	s, err := sc.Subscribe(with(mini), &mcv1.SubscribeRequest{MemberIds: []string{member}})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetReady() == nil {
		t.Fatalf("first message %v, %v; want Ready", m, err)
	}
	_, err = s.Recv() // blocks until the stream ends (or the call's 10 s run out)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "token expired") {
		t.Fatalf("stream ended with %v; want Unauthenticated saying the token expired", err)
	}
	// A fresh token opens it again.
	fresh, err := a.Mint("miniprogram", time.Minute, member)
	if err != nil {
		t.Fatal(err)
	}
	s, err = sc.Subscribe(with(fresh), &mcv1.SubscribeRequest{MemberIds: []string{member}})
	if err == nil {
		_, err = s.Recv()
	}
	if err != nil {
		t.Fatalf("resubscribing with a new token: %v", err)
	}
}

// TestEveryRPCHasAScope: a new RPC must be given a scope (and, when it is
// about members, name them in member_id or member_ids).
func TestEveryRPCHasAScope(t *testing.T) {
	for _, f := range []protoreflect.FileDescriptor{mcv1.File_membercenter_v1_identity_proto, mcv1.File_membercenter_v1_benefits_proto,
		mcv1.File_membercenter_v1_profile_proto, mcv1.File_membercenter_v1_sync_proto} {
		for i := 0; i < f.Services().Len(); i++ {
			svc := f.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				m := svc.Methods().Get(j)
				name := "/" + string(svc.FullName()) + "/" + string(m.Name())
				if _, ok := auth.MethodScopes[name]; !ok {
					t.Errorf("%s has no scope in auth.MethodScopes", name)
				}
			}
		}
	}
}

func TestClientsFileIsChecked(t *testing.T) {
	for _, tc := range []struct{ src, words string }{
		{"clients:\n  - {id: a, secret: c2hvcnQ=, scopes: [profile.read]}\n", "at least 32 bytes"},
		{"clients:\n  - {id: a, secret: " + secretPOS + ", scopes: [profile.raed]}\n", `unknown scope "profile.raed"`},
		{"clients:\n  - {id: a, secret: " + secretPOS + ", scopes: [profile.read]}\n  - {id: a, secret: " + secretPOS + ", scopes: [profile.read]}\n", "duplicate id"},
		{"clients: []\n", "no clients"},
		{"clients:\n  - {id: a, secret: " + secretPOS + ", scopes: [profile.read], certificate_sha256: \"AB:CD\"}\n", "certificate_sha256 must be the 32-byte SHA-256 fingerprint"},
	} {
		if _, err := auth.Parse([]byte(tc.src)); err == nil || !strings.Contains(err.Error(), tc.words) {
			t.Errorf("clients file %q: %v; want an error mentioning %q", tc.src, err, tc.words)
		}
	}
}
