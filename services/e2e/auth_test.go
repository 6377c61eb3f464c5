package e2e_test

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/platform"
)

// clientSecret is a clients file's secret made of c.
func clientSecret(c string) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(c, 32)))
}

// startWithClients starts the platform's services and the stages named with
// channel authentication on and clients (a clients file's YAML), and
// returns the authenticator that mints their tokens.
func startWithClients(t *testing.T, stages []string, clients string) (*env, *auth.Authenticator) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "clients.yaml")
	if err := os.WriteFile(file, []byte(clients), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startWith(t, stages, func(c *platform.Config) { c.Auth.ClientsPath = file })
	a, err := auth.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return e, a
}

// TestChannelCredentialsOverGRPCAndHTTP: with a clients file, the platform
// refuses calls without a valid token (Unauthenticated / 401) and calls
// outside a client's scopes or members (PermissionDenied / 403), the same
// over gRPC and over the HTTP gateway; allowed calls go through.
func TestChannelCredentialsOverGRPCAndHTTP(t *testing.T) {
	e, a := startWithClients(t, nil, `clients:
  - {id: pos, channel: pos, secret: `+clientSecret("p")+`, scopes: [identity.resolve, benefits.*, profile.read]}
  - {id: mini, channel: miniprogram, secret: `+clientSecret("m")+`, scopes: [profile.*, sync.subscribe], own_members: true}
`)
	ctx := within(t, 60*time.Second)
	posTok, _ := a.Mint("pos", time.Minute)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}

	ids := mcv1.NewIdentityServiceClient(e.conn)
	resolve := &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "auth-1",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13300000011"}}}
	if _, err := ids.Resolve(ctx, resolve); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Resolve without a token: %v; want Unauthenticated", err)
	}
	r, err := ids.Resolve(as(posTok), resolve)
	if err != nil {
		t.Fatal(err)
	}
	member := r.GetMemberId()
	other, err := ids.Resolve(as(posTok), &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "auth-2",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13300000012"}}})
	if err != nil {
		t.Fatal(err)
	}
	miniTok, _ := a.Mint("mini", time.Minute, member)

	// POS may not change profiles.
	_, err = mcv1.NewProfileServiceClient(e.conn).UpdateAttributes(as(posTok), &mcv1.UpdateAttributesRequest{MemberId: member,
		Attributes: map[string]string{"city": "Suzhou"}, IdempotencyKey: "auth-attrs"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("POS UpdateAttributes: %v; want PermissionDenied", err)
	}

	post := func(tok, path, body string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.http+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	get := `{"memberId":"` + member + `"}`
	for _, tc := range []struct {
		name, tok, path, body string
		code                  int
	}{
		{"no token", "", "/membercenter.v1.ProfileService/GetProfile", get, http.StatusUnauthorized},
		{"forged token", miniTok[:len(miniTok)-4] + "AAAA", "/membercenter.v1.ProfileService/GetProfile", get, http.StatusUnauthorized},
		{"mini-program reads its member", miniTok, "/membercenter.v1.ProfileService/GetProfile", get, http.StatusOK},
		{"mini-program reads another member", miniTok, "/membercenter.v1.ProfileService/GetProfile", `{"memberId":"` + other.GetMemberId() + `"}`, http.StatusForbidden},
		{"mini-program commits a purchase", miniTok, "/membercenter.v1.BenefitsService/Commit", `{"memberId":"` + member + `"}`, http.StatusForbidden},
		{"mini-program updates its member", miniTok, "/membercenter.v1.ProfileService/UpdateAttributes",
			`{"memberId":"` + member + `","attributes":{"city":"Suzhou"},"idempotencyKey":"auth-http"}`, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := post(tc.tok, tc.path, tc.body); code != tc.code {
				t.Errorf("%s: %d %s; want %d", tc.path, code, body, tc.code)
			}
		})
	}
	// The update carries the caller's channel.
	found := false
	var b []byte
	forEachRow(t, ctx, e.pool, []any{&b}, func() {
		c := &mcv1.MemberChange{}
		if err := proto.Unmarshal(b, c); err != nil {
			t.Fatal(err)
		}
		if c.GetAttributesChanged() != nil {
			found = true
			if c.GetChannel() != mcv1.Channel_CHANNEL_MINIPROGRAM {
				t.Errorf("attributes change from channel %s, want the mini-program's", c.GetChannel())
			}
		}
	}, `SELECT payload FROM outbox WHERE member_id = $1`, member)
	if !found {
		t.Error("no attributes change in the outbox")
	}
	// Server-sent events: every member is refused to a member-bound client.
	for _, tc := range []struct {
		query string
		code  int
	}{{"", http.StatusForbidden}, {"?member_ids=" + member, http.StatusOK}} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.http+"/v1/sync/subscribe"+tc.query, nil)
		req.Header.Set("Authorization", "Bearer "+miniTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("subscribe%s: %d, want %d", tc.query, resp.StatusCode, tc.code)
		}
	}
}

// "Member-bound clients act only for the members their token names"
// (docs/security.md). The app shows its member's dynamic code, so its
// member-bound client holds identity.code for IssueMemberCode (held to the
// token's members); the same scope opens VerifyMemberCode, a till's call
// about whoever shows a code: a black-box probe's app token for one member
// verified another's code (spending it: a code is accepted once) and was
// told whose it was. A member-bound client calls only the RPCs about the
// members a request names: segments are refused too.
func TestMemberBoundClientCannotVerifyOtherMembersCodes(t *testing.T) {
	e, a := startWithClients(t, nil, `clients:
  - {id: pos, channel: pos, secret: `+clientSecret("p")+`, scopes: [identity.resolve, identity.code]}
  - {id: app, channel: app, secret: `+clientSecret("a")+`, scopes: [identity.code, identity.link, profile.read, segments.read], own_members: true}
`)
	ctx := within(t, 60*time.Second)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	posTok, _ := a.Mint("pos", time.Minute)
	ids := mcv1.NewIdentityServiceClient(e.conn)
	resolve := func(phone, key string) string {
		r, err := ids.Resolve(as(posTok), &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: key,
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}}})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMemberId()
	}
	own, other := resolve("13300000021", "member-bound-code-1"), resolve("13300000022", "member-bound-code-2")
	appTok, _ := a.Mint("app", time.Minute, own)

	// The app shows its own member's code, and no one else's.
	if _, err := ids.IssueMemberCode(as(appTok), &mcv1.IssueMemberCodeRequest{MemberId: own}); err != nil {
		t.Fatalf("app IssueMemberCode for its member: %v", err)
	}
	if _, err := ids.IssueMemberCode(as(appTok), &mcv1.IssueMemberCodeRequest{MemberId: other}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("app IssueMemberCode for another member: %v; want PermissionDenied", err)
	}
	// The other member shows its code at a till.
	code, err := ids.IssueMemberCode(as(posTok), &mcv1.IssueMemberCodeRequest{MemberId: other})
	if err != nil {
		t.Fatal(err)
	}
	// The app's token names only its own member: it may not verify (and so
	// spend) the other member's code, nor learn whose it is.
	r, err := ids.VerifyMemberCode(as(appTok), &mcv1.VerifyMemberCodeRequest{Code: code.GetCode()})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("member-bound app (token for %s) VerifyMemberCode of another member's code: %v, member %s; want PermissionDenied",
			own, err, r.GetMember().GetMemberId())
	}
	if _, err := mcv1.NewProfileServiceClient(e.conn).CountSegment(as(appTok), &mcv1.CountSegmentRequest{
		Expression: "true", Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("member-bound app CountSegment: %v; want PermissionDenied", err)
	}
	// Nor does it link identifiers, even to its own member: a shared one (a
	// device id) linked last routes another shopper's events to it.
	for _, member := range []string{own, other} {
		_, err := ids.Link(as(appTok), &mcv1.LinkRequest{MemberId: member, IdempotencyKey: "member-bound-link-" + member,
			Identifier: &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: "device-of-" + member}})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("member-bound app Link to member %s: %v; want PermissionDenied", member, err)
		}
	}
	// ... and the till, scanning it next, still accepts it.
	if _, err := ids.VerifyMemberCode(as(posTok), &mcv1.VerifyMemberCodeRequest{Code: code.GetCode()}); err != nil {
		t.Errorf("the till's scan of the member's code after the app's attempt: %v", err)
	}
}
