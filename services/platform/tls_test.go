package platform_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/server/servertest"
	"github.com/membercenter/membercenter/services/telemetry"
)

// mutualTLS is a platform configuration whose listeners speak TLS with a
// server certificate of ca and require channels' client certificates of
// clientCA (files in dir), and a client TLS configuration presenting certs.
func mutualTLS(t *testing.T, dir string) (cfg platform.Config, clientCA *servertest.CA, tlsFor func(certs ...tls.Certificate) *tls.Config) {
	t.Helper()
	ca, clientCA := servertest.NewCA(t, "test server CA"), servertest.NewCA(t, "test channel CA")
	certFile, keyFile := servertest.WriteKeyPair(t, dir, "server", ca.Server(t))
	cfg = platform.Config{
		Postgres:  postgres.Config{URL: pgtest.NewDB(t), MaxConns: 4},
		Telemetry: telemetry.Config{ServiceName: "membercenter-tls-test", LogLevel: "error"},
		Server: server.Config{GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Grace: 5 * time.Second, TLS: server.TLSConfig{
			CertFile: certFile, KeyFile: keyFile, ClientCAFile: clientCA.WriteCA(t, dir, "clients"), ClientAuth: server.ClientAuthRequire,
		}},
	}
	if err := cfg.Server.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg, clientCA, func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: certs, MinVersion: tls.VersionTLS12}
	}
}

// TestListenersOverMutualTLS: with MC_TLS_* set, the platform serves gRPC,
// the HTTP/JSON gateway and admin over TLS. A channel with a certificate of
// the client CA calls gRPC and the gateway (whose own connection to the
// gRPC server passes the required client certificate check); the gateway
// refuses an HTTPS client without a certificate; admin answers probes
// without one.
func TestListenersOverMutualTLS(t *testing.T) {
	cfg, clientCA, tlsFor := mutualTLS(t, t.TempDir())
	channel := clientCA.Client(t, "miniprogram")
	e := platformtest.OpenT(t, cfg, io.Discard)
	r := platformtest.StartT(t, e.P, platform.Options{Services: []string{"identity"}, Now: clocktest.New().Now},
		platformtest.WithGateway(), platformtest.WithDialOptions(grpc.WithTransportCredentials(credentials.NewTLS(tlsFor(channel)))))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := mcv1.NewIdentityServiceClient(r.Conn).Resolve(ctx, &mcv1.ResolveRequest{
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13812340001"}},
		Channel:     mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "tls-grpc-1",
	})
	if err != nil {
		t.Fatalf("Resolve over mutual TLS: %v", err)
	}

	post := func(client *http.Client) (map[string]any, error) {
		body := `{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"13812340001"}],"channel":"CHANNEL_MINIPROGRAM","idempotencyKey":"tls-http-1"}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+r.HTTP+"/membercenter.v1.IdentityService/Resolve", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		out := map[string]any{}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("gateway over TLS: %d %s", resp.StatusCode, b)
		}
		return out, json.Unmarshal(b, &out)
	}
	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsFor(channel), ForceAttemptHTTP2: true}}
	defer withCert.CloseIdleConnections()
	got, err := post(withCert)
	if err != nil {
		t.Fatalf("gateway over mutual TLS: %v", err)
	}
	if got["memberId"] != res.GetMemberId() {
		t.Errorf("gateway answered member %v, want %s (the one gRPC created)", got["memberId"], res.GetMemberId())
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsFor()}}
	defer noCert.CloseIdleConnections()
	if _, err := post(noCert); err == nil {
		t.Error("the gateway answered an HTTPS client without a client certificate")
	}

	// Probes and scrapers present no certificate.
	resp, err := noCert.Get("https://" + r.Admin + "/healthz")
	if err != nil {
		t.Fatalf("admin over TLS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz over TLS: %d", resp.StatusCode)
	}
}
