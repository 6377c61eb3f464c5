package platform_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/gateway"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
)

// A client bound to its certificate (certificate_sha256 in the clients
// file), or a token bound to one (RFC 8705 "cnf"), is accepted only on a
// connection that presented that certificate — over gRPC and through the
// HTTP/JSON gateway, which forwards its HTTP client's certificate; a
// stolen token used with another certificate of the same CA is refused,
// and no caller can claim a certificate by header.
func TestClientBoundToItsCertificate(t *testing.T) {
	dir := t.TempDir()
	cfg, clientCA, tlsFor := mutualTLS(t, dir)
	mine, other := clientCA.Client(t, "pos-sh"), clientCA.Client(t, "pos-bj")
	sum := sha256.Sum256(mine.Certificate[0])
	secret := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("b", 32)))
	clients := filepath.Join(dir, "clients.yaml")
	if err := os.WriteFile(clients, []byte(`clients:
  - {id: pos-bound, channel: pos, secret: `+secret+`, scopes: [identity.resolve], certificate_sha256: "`+strings.ToUpper(hex.EncodeToString(sum[:]))+`"}
  - {id: pos-free, channel: pos, secret: `+secret+`, scopes: [identity.resolve]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Auth = auth.Config{ClientsPath: clients}
	e := platformtest.OpenT(t, cfg, io.Discard)
	r := platformtest.StartT(t, e.P, platform.Options{Services: []string{"identity"}, Now: clocktest.New().Now},
		platformtest.WithGateway(), platformtest.WithDialOptions(grpc.WithTransportCredentials(credentials.NewTLS(tlsFor(mine)))))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	a, err := auth.Load(clients)
	if err != nil {
		t.Fatal(err)
	}
	bound, err := a.Mint("pos-bound", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// A pos-free token bound to this certificate by its issuer (RFC 8705).
	now := time.Now()
	cnfToken := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "pos-free", "iss": "membercenter",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "cnf": map[string]string{"x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])}})
	cnfToken.Header["kid"] = "pos-free"
	cnf, err := cnfToken.SignedString([]byte(strings.Repeat("b", 32)))
	if err != nil {
		t.Fatal(err)
	}
	free, err := a.Mint("pos-free", time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	otherConn, err := grpc.NewClient(r.GRPC, grpc.WithTransportCredentials(credentials.NewTLS(tlsFor(other))))
	if err != nil {
		t.Fatal(err)
	}
	defer otherConn.Close()
	n := 0
	resolve := func(conn *grpc.ClientConn, tok string, md ...string) error {
		n++
		ctx := metadata.AppendToOutgoingContext(ctx, append([]string{"authorization", "Bearer " + tok}, md...)...)
		_, err := mcv1.NewIdentityServiceClient(conn).Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true,
			IdempotencyKey: "bind-" + string(rune('a'+n)), Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13812340009"}}})
		return err
	}
	for _, tok := range []string{bound, cnf, free} {
		if err := resolve(r.Conn, tok); err != nil {
			t.Errorf("over gRPC with the bound certificate: %v", err)
		}
	}
	if err := resolve(otherConn, free); err != nil {
		t.Errorf("an unbound client with another certificate: %v", err)
	}
	for _, tok := range []string{bound, cnf} {
		if err := resolve(otherConn, tok); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "registered client certificate") {
			t.Errorf("a bound token over another certificate: %v, want Unauthenticated", err)
		}
		if err := resolve(otherConn, tok, gateway.ForwardedCertificateHeader, hex.EncodeToString(sum[:])); status.Code(err) != codes.Unauthenticated {
			t.Errorf("a bound token over another certificate, claiming the right one by header: %v, want Unauthenticated", err)
		}
	}

	post := func(c tls.Certificate, tok string, header ...string) int {
		t.Helper()
		n++
		body := `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13812340009"}],"channel":"CHANNEL_POS","createIfMissing":true,"idempotencyKey":"bind-http-` + string(rune('a'+n)) + `"}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+r.HTTP+"/membercenter.v1.IdentityService/Resolve", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsFor(c)}}
		defer client.CloseIdleConnections()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	for _, tok := range []string{bound, cnf} {
		if code := post(mine, tok); code != http.StatusOK {
			t.Errorf("gateway with the bound certificate: %d", code)
		}
		if code := post(other, tok); code != http.StatusUnauthorized {
			t.Errorf("gateway with another certificate: %d, want 401", code)
		}
		if code := post(other, tok, "Grpc-Metadata-"+gateway.ForwardedCertificateHeader, hex.EncodeToString(sum[:])); code != http.StatusUnauthorized {
			t.Errorf("gateway with another certificate, claiming the right one by header: %d, want 401", code)
		}
	}
}
