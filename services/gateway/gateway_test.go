package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/gateway"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/server/servertest"
)

// identity records what reached the gRPC service.
type identity struct {
	mcv1.UnimplementedIdentityServiceServer
	mu    sync.Mutex
	got   []*mcv1.ResolveRequest
	auth  []string
	actor []string
}

func (s *identity) Resolve(ctx context.Context, req *mcv1.ResolveRequest) (*mcv1.ResolveResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, proto.Clone(req).(*mcv1.ResolveRequest))
	md, _ := metadata.FromIncomingContext(ctx)
	s.auth = append(s.auth, md.Get("authorization")...)
	s.actor = append(s.actor, md.Get("x-mc-actor")...)
	return &mcv1.ResolveResponse{MemberId: "0190c1f4-0000-7000-8000-000000000001", Created: true}, nil
}

func (s *identity) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

type syncer struct {
	mcv1.UnimplementedSyncServiceServer
}

func (syncer) Subscribe(req *mcv1.SubscribeRequest, s grpc.ServerStreamingServer[mcv1.SubscribeResponse]) error {
	if err := s.Send(&mcv1.SubscribeResponse{ResumeToken: "r0", Message: &mcv1.SubscribeResponse_Ready{Ready: &mcv1.Ready{}}}); err != nil {
		return err
	}
	return s.Send(&mcv1.SubscribeResponse{ResumeToken: "r1", Message: &mcv1.SubscribeResponse_Change{Change: &mcv1.MemberChange{
		MemberId: req.GetMemberIds()[0], Sequence: 1, Channel: req.GetChannel(), CauseId: "after " + req.GetResumeToken()}}})
}

// serve runs the production gRPC edge with the fakes behind it and the
// gateway in front, as the platform wires them.
func serve(t *testing.T) (string, *identity) {
	t.Helper()
	gs, _, err := server.NewGRPC(servertest.Telemetry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := &identity{}
	mcv1.RegisterIdentityServiceServer(gs, id)
	mcv1.RegisterSyncServiceServer(gs, syncer{})
	conn := servertest.Serve(t, gs)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h, err := gateway.New(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL, id
}

func post(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, out := send(t, ctx, http.MethodPost, url, strings.NewReader(body), int64(len(body)))
	return resp.StatusCode, out
}

// send sends body (of size bytes; -1: chunked) with method to url as the
// JSON API's clients do, with a token and an actor, and reads the answer
// as JSON.
func send(t *testing.T, ctx context.Context, method, url string, body io.Reader, size int64) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, url, body)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("X-Mc-Actor", "backoffice/alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s answered %.200s, not JSON: %v", url, b, err)
	}
	return resp, out
}

const resolvePath = "/membercenter.v1.IdentityService/Resolve"

func TestJSONRequestsAreReadStrictly(t *testing.T) {
	base, id := serve(t)
	good := `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13500000088"}],"channel":"CHANNEL_MINIPROGRAM",
		"createIfMissing":true,"idempotencyKey":"http-1"}`
	code, out := post(t, base+resolvePath, good)
	if code != http.StatusOK || out["memberId"] == nil || out["created"] != true {
		t.Fatalf("a good request: %d %v", code, out)
	}
	if id.got[0].GetCreateIfMissing() != true || id.got[0].GetIdempotencyKey() != "http-1" || len(id.auth) != 1 || id.auth[0] != "Bearer tok" {
		t.Errorf("the service got %v with authorization %v", id.got[0], id.auth)
	}
	// The actor header reaches the server as over gRPC (which reads it
	// only while authentication is off).
	if len(id.actor) != 1 || id.actor[0] != "backoffice/alice" || gateway.ActorHeader != auth.ActorHeader {
		t.Errorf("the service got the actor %v under %s; want backoffice/alice under %s", id.actor, gateway.ActorHeader, auth.ActorHeader)
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"a misspelt field", `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13500000088"}],"channel":"CHANNEL_MINIPROGRAM",
			"createIfMisssing":true,"idempotencyKey":"http-2"}`, `unknown field "createIfMisssing"`},
		{"an unknown field in a nested message", `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","valeu":"13500000088"}],
			"channel":"CHANNEL_MINIPROGRAM","idempotencyKey":"http-3"}`, `unknown field "valeu"`},
		{"a string for a bool", `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13500000088"}],"channel":"CHANNEL_MINIPROGRAM",
			"createIfMissing":"yes","idempotencyKey":"http-4"}`, "createIfMissing"},
		{"a number for a string", `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":13500000088}],"channel":"CHANNEL_MINIPROGRAM",
			"idempotencyKey":"http-5"}`, "value"},
		{"an unknown enum value", `{"identifiers":[{"type":"IDENTIFIER_TYPE_FAX","value":"1"}],"channel":"CHANNEL_MINIPROGRAM",
			"idempotencyKey":"http-6"}`, "type"},
		{"a NUL byte", `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13500000088"}],"channel":"CHANNEL_MINIPROGRAM",
			"idempotencyKey":"http\u0000-7"}`, "idempotencyKey"},
		{"a rule of the .proto", `{"identifiers":[],"channel":"CHANNEL_MINIPROGRAM","idempotencyKey":"http-8"}`, "identifiers"},
		{"text after the value", good + ` xyz`, "more than the request's JSON value"},
		{"a second value", good + `{"idempotencyKey":"http-9"}`, "more than the request's JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := id.calls()
			code, out := post(t, base+resolvePath, tc.body)
			msg, _ := out["message"].(string)
			if code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
				t.Errorf("%d %v; want 400 naming %s", code, out, tc.want)
			}
			if id.calls() != before {
				t.Errorf("the refused request reached the service")
			}
		})
	}
}

func TestServerSentEvents(t *testing.T) {
	base, _ := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	get := func(query string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/sync/subscribe?"+query, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if resp := get("channel=fax"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("an unknown channel: %d, want 400", resp.StatusCode)
	}
	if resp := get("member_ids=not-a-uuid"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a malformed member id: %d, want 400", resp.StatusCode)
	}
	// A misspelt filter is refused, not read as no filter (every member).
	for query, want := range map[string]string{
		"member_id=0190c1f4-0000-7000-8000-000000000001": `unknown query parameter \"member_id\"`,
		"store_id=a&store_id=b":                          "store_id: given 2 times",
	} {
		resp := get(query)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d %s; want 400 naming %s", query, resp.StatusCode, b, want)
		}
	}
	// An EventSource polyfill resends the last id as lastEventId, and may
	// add a cache-buster "_": the stream resumes after that id.
	if resp := get("member_ids=0190c1f4-0000-7000-8000-000000000001&lastEventId=r7&_=1733500000000"); resp.StatusCode != http.StatusOK {
		t.Errorf("a polyfill's reconnection: %d, want 200", resp.StatusCode)
	} else if b, _ := io.ReadAll(resp.Body); !strings.Contains(string(b), "after r7") {
		t.Errorf("a polyfill's reconnection:\n%s\nwant the stream resumed after its lastEventId r7", b)
	}
	resp := get("member_ids=0190c1f4-0000-7000-8000-000000000001&channel=app")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("subscribe: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// The fake stream ends after two messages, and so does the response.
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if !strings.HasPrefix(got, "id: r0\nevent: ready\ndata: ") || !strings.Contains(got, "\n\nid: r1\nevent: change\ndata: ") ||
		!strings.Contains(got, `"CHANNEL_APP"`) {
		t.Errorf("event stream:\n%s\nwant a ready event r0, then a change r1 on CHANNEL_APP", got)
	}
}

// TestOpenAPIDocumentDescribesEveryRPC: a client generator pointed at
// /openapi.json finds every RPC of every service as the POST route the
// gateway answers, with the request's JSON field names the gateway accepts.
func TestOpenAPIDocumentDescribesEveryRPC(t *testing.T) {
	base, _ := serve(t)
	resp, err := http.Get(base + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc struct {
		Swagger string
		Info    struct{ Title string }
		Paths   map[string]map[string]struct {
			OperationID string `json:"operationId"`
			Parameters  []struct {
				In     string
				Schema struct {
					Ref string `json:"$ref"`
				}
			}
		}
		Definitions map[string]struct {
			Properties map[string]any
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("the document is not JSON: %v", err)
	}
	if doc.Swagger != "2.0" || doc.Info.Title == "" {
		t.Errorf("swagger %q, title %q", doc.Swagger, doc.Info.Title)
	}
	rpcs := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("membercenter.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			s := f.Services().Get(i)
			for j := range s.Methods().Len() {
				m := s.Methods().Get(j)
				rpcs++
				path := "/" + string(s.FullName()) + "/" + string(m.Name())
				op, ok := doc.Paths[path]["post"]
				if !ok {
					t.Errorf("no POST %s in the document", path)
					continue
				}
				if len(op.Parameters) != 1 || op.Parameters[0].In != "body" || !strings.HasSuffix(op.Parameters[0].Schema.Ref, string(m.Input().Name())) {
					t.Errorf("POST %s: parameters %+v, want the body %s", path, op.Parameters, m.Input().Name())
				}
			}
		}
		return true
	})
	if rpcs < 30 {
		t.Fatalf("%d RPCs found in the registry; the services are not linked in", rpcs)
	}
	if len(doc.Paths) != rpcs {
		t.Errorf("%d paths in the document for %d RPCs", len(doc.Paths), rpcs)
	}
	// The names the document gives are those the gateway reads: the
	// request it documents is answered.
	if _, ok := doc.Definitions["v1ResolveRequest"].Properties["createIfMissing"]; !ok {
		t.Errorf("ResolveRequest's schema %v has no createIfMissing", doc.Definitions["v1ResolveRequest"].Properties)
	}
}

// endless is a change stream that stays open: ready, then one change per
// resume token asked for, then nothing until the client leaves.
type endless struct {
	mcv1.UnimplementedSyncServiceServer
}

func (endless) Subscribe(req *mcv1.SubscribeRequest, s grpc.ServerStreamingServer[mcv1.SubscribeResponse]) error {
	if err := s.Send(&mcv1.SubscribeResponse{ResumeToken: "r0", Message: &mcv1.SubscribeResponse_Ready{Ready: &mcv1.Ready{}}}); err != nil {
		return err
	}
	next := "r1"
	if req.GetResumeToken() == "r1" {
		next = "r2"
	}
	if err := s.Send(&mcv1.SubscribeResponse{ResumeToken: next, Message: &mcv1.SubscribeResponse_Change{Change: &mcv1.MemberChange{
		MemberId: req.GetMemberIds()[0]}}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return s.Context().Err()
}

// TestAnAgedConnectionEndsTheEventStreamForAResume: when the gRPC server
// retires the gateway's connection (MaxConnectionAge), an open event stream
// ends without resync_required, so the EventSource reconnects with its
// Last-Event-ID instead of reloading the member.
func TestAnAgedConnectionEndsTheEventStreamForAResume(t *testing.T) {
	gs, _, err := server.New(server.Config{MaxConnectionAge: 200 * time.Millisecond, MaxConnectionAgeGrace: 300 * time.Millisecond},
		servertest.Telemetry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mcv1.RegisterSyncServiceServer(gs, endless{})
	conn := servertest.Serve(t, gs)
	h, err := gateway.New(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/sync/subscribe?member_ids=0190c1f4-0000-7000-8000-000000000001", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body) // ends when the connection is retired
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); !strings.Contains(got, "id: r1\nevent: change") || strings.Contains(got, "resync_required") {
		t.Errorf("event stream:\n%s\nwant the change r1, then the end without resync_required", got)
	}
	// The EventSource's reconnection resumes after r1.
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/sync/subscribe?member_ids=0190c1f4-0000-7000-8000-000000000001", nil)
	req.Header.Set("Last-Event-ID", "r1")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	var got string
	for !strings.Contains(got, "event: change") {
		n, err := resp.Body.Read(buf)
		got += string(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(got, "id: r2\nevent: change") {
		t.Errorf("resumed stream:\n%s\nwant the change after r1", got)
	}
}

// TestTheGatewayBoundsWhatItReads: a body larger than the gateway's limit
// is answered 413 without being read (one of 64 MB grew the process by
// 300 MB before the gRPC limit refused it), and an RPC's path with another
// method than POST is 405 naming POST, not 501 (a server error).
func TestTheGatewayBoundsWhatItReads(t *testing.T) {
	base, id := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	do := func(method string, body io.Reader, size int64) (*http.Response, map[string]any) {
		t.Helper()
		return send(t, ctx, method, base+resolvePath, body, size)
	}
	// A body one byte over the limit, of a valid request's shape.
	big := `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13500000088"}],"channel":"CHANNEL_MINIPROGRAM","idempotencyKey":"` +
		strings.Repeat("k", gateway.MaxBodyBytes) + `"}`
	big = big[:gateway.MaxBodyBytes+1]
	resp, out := do(http.MethodPost, strings.NewReader(big), int64(len(big)))
	if msg, _ := out["message"].(string); resp.StatusCode != http.StatusRequestEntityTooLarge || out["code"] != float64(8) || !strings.Contains(msg, "limit") {
		t.Errorf("a body over the limit: %d %v; want 413 with ResourceExhausted (8) naming the limit", resp.StatusCode, out)
	}
	// The same without a length (chunked): read up to the limit, refused.
	resp, _ = do(http.MethodPost, io.MultiReader(strings.NewReader(big)), -1)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a chunked body over the limit: %d; want 413", resp.StatusCode)
	}
	// Under the gateway's limit but over the gRPC server's (4 MiB): 413
	// too, not ResourceExhausted's 429, which clients retry.
	mid := `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13500000088"}],"channel":"CHANNEL_MINIPROGRAM","idempotencyKey":"` +
		strings.Repeat("k", 5<<20) + `"}`
	resp, out = do(http.MethodPost, strings.NewReader(mid), int64(len(mid)))
	if resp.StatusCode != http.StatusRequestEntityTooLarge || out["code"] != float64(8) {
		t.Errorf("a request over the gRPC limit: %d %v; want 413", resp.StatusCode, out)
	}
	if id.calls() != 0 {
		t.Errorf("%d refused requests reached the service", id.calls())
	}
	for _, method := range []string{http.MethodGet, http.MethodPut} {
		resp, out := do(method, nil, 0)
		if msg, _ := out["message"].(string); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost || !strings.Contains(msg, "POST") {
			t.Errorf("%s on an RPC's path: %d (Allow %q) %v; want 405 allowing POST", method, resp.StatusCode, resp.Header.Get("Allow"), out)
		}
	}
}
