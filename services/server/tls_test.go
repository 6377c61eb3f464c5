package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/server/servertest"
)

// pki is a test's certificates on disk: a server certificate issued by
// ca, and the client CA file of clientCA.
type pki struct {
	dir, cert, key string
	ca, clientCA   *servertest.CA
	clientCAFile   string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), ca: servertest.NewCA(t, "test server CA"), clientCA: servertest.NewCA(t, "test channel CA")}
	p.cert, p.key = servertest.WriteKeyPair(t, p.dir, "server", p.ca.Server(t))
	p.clientCAFile = p.clientCA.WriteCA(t, p.dir, "clients")
	return p
}

func (p *pki) config(mode string) server.TLSConfig {
	c := server.TLSConfig{CertFile: p.cert, KeyFile: p.key}
	if mode != server.ClientAuthOff {
		c.ClientCAFile, c.ClientAuth = p.clientCAFile, mode
	}
	return c
}

// serveTLS serves a fake identity service over TLS as cfg says.
func serveTLS(t *testing.T, cfg server.TLSConfig) (string, *fakeIdentity) {
	t.Helper()
	gs, _, err := server.New(server.Config{TLS: cfg}, servertest.Telemetry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := &fakeIdentity{}
	mcv1.RegisterIdentityServiceServer(gs, id)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String(), id
}

// resolve calls Resolve on addr with creds.
func resolve(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = mcv1.NewIdentityServiceClient(conn).Resolve(ctx, &mcv1.ResolveRequest{
		Identifiers:    []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13812345678"}},
		Channel:        mcv1.Channel_CHANNEL_POS,
		IdempotencyKey: "tls-1",
	})
	return err
}

// clientCreds trusts roots and presents cert, when given, whatever CAs the
// server names as acceptable (crypto/tls would otherwise send nothing).
func clientCreds(roots *x509.CertPool, cert ...tls.Certificate) credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if len(cert) == 0 {
				return &tls.Certificate{}, nil
			}
			return &cert[0], nil
		}})
}

// TestGRPCOverTLS: with a certificate configured the gRPC server speaks
// TLS: a client trusting its CA calls it; a plaintext client and a client
// trusting another CA do not reach the service.
func TestGRPCOverTLS(t *testing.T) {
	p := newPKI(t)
	addr, id := serveTLS(t, p.config(server.ClientAuthOff))
	if err := resolve(t, addr, clientCreds(p.ca.Pool())); err != nil {
		t.Fatalf("Resolve over TLS: %v", err)
	}
	if err := resolve(t, addr, insecure.NewCredentials()); status.Code(err) != codes.Unavailable {
		t.Errorf("plaintext client: %v, want Unavailable", err)
	}
	other := servertest.NewCA(t, "someone else's CA")
	if err := resolve(t, addr, clientCreds(other.Pool())); status.Code(err) != codes.Unavailable {
		t.Errorf("client trusting another CA: %v, want Unavailable", err)
	}
	if n := id.calls.Load(); n != 1 {
		t.Errorf("%d calls reached the service, want 1", n)
	}
}

// TestMutualTLSRefusesClientsWithoutAValidCertificate: with client
// certificates required, a client without one, with one issued by another
// CA, or with a server certificate of the right CA (not for client
// authentication) is refused before any call reaches the service; a
// channel's certificate passes. With client certificates requested, a
// client without one passes and one with an invalid one is refused.
func TestMutualTLSRefusesClientsWithoutAValidCertificate(t *testing.T) {
	p := newPKI(t)
	other := servertest.NewCA(t, "someone else's CA")
	roots := p.ca.Pool()

	t.Run("require", func(t *testing.T) {
		addr, id := serveTLS(t, p.config(server.ClientAuthRequire))
		for name, creds := range map[string]credentials.TransportCredentials{
			"no certificate":           clientCreds(roots),
			"another CA's certificate": clientCreds(roots, other.Client(t, "pos-sh")),
			"a server certificate":     clientCreds(roots, p.clientCA.Server(t)),
		} {
			if err := resolve(t, addr, creds); status.Code(err) != codes.Unavailable {
				t.Errorf("%s: %v, want Unavailable (the handshake refused)", name, err)
			}
		}
		if n := id.calls.Load(); n != 0 {
			t.Fatalf("%d calls reached the service without a valid client certificate", n)
		}
		if err := resolve(t, addr, clientCreds(roots, p.clientCA.Client(t, "pos-sh"))); err != nil {
			t.Fatalf("a channel's certificate: %v", err)
		}
	})

	t.Run("request", func(t *testing.T) {
		addr, id := serveTLS(t, p.config(server.ClientAuthRequest))
		if err := resolve(t, addr, clientCreds(roots)); err != nil {
			t.Errorf("no certificate, requested only: %v", err)
		}
		if err := resolve(t, addr, clientCreds(roots, other.Client(t, "pos-sh"))); status.Code(err) != codes.Unavailable {
			t.Errorf("another CA's certificate: %v, want Unavailable", err)
		}
		if err := resolve(t, addr, clientCreds(roots, p.clientCA.Client(t, "pos-sh"))); err != nil {
			t.Errorf("a channel's certificate: %v", err)
		}
		if n := id.calls.Load(); n != 2 {
			t.Errorf("%d calls reached the service, want 2", n)
		}
	})
}

// TestLoopbackCredentialsUnderMutualTLS: the process's own connection to
// its gRPC server (the gateway's) passes a server that requires client
// certificates, and accepts no server but its own.
func TestLoopbackCredentialsUnderMutualTLS(t *testing.T) {
	p := newPKI(t)
	cfg := p.config(server.ClientAuthRequire)
	certs, err := cfg.Load(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, cfg)
	if err := resolve(t, addr, certs.LoopbackCredentials()); err != nil {
		t.Fatalf("loopback under mutual TLS: %v", err)
	}
	// Another server with a certificate of the same CA is not ours.
	q := &pki{dir: t.TempDir(), ca: p.ca}
	q.cert, q.key = servertest.WriteKeyPair(t, q.dir, "server", p.ca.Server(t))
	otherAddr, id := serveTLS(t, q.config(server.ClientAuthOff))
	if err := resolve(t, otherAddr, certs.LoopbackCredentials()); status.Code(err) != codes.Unavailable {
		t.Errorf("loopback to a server with another certificate: %v, want Unavailable", err)
	}
	if id.calls.Load() != 0 {
		t.Error("the loopback connection called a server that is not its own")
	}
}

// TestAdminOverTLS: the admin listener speaks TLS with the same
// certificate and asks for no client certificate, even where channels
// must present one (scrapers and probes authenticate the server only).
func TestAdminOverTLS(t *testing.T) {
	p := newPKI(t)
	cfg := server.Config{Grace: time.Second, TLS: p.config(server.ClientAuthRequire)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, cfg, slog.New(slog.DiscardHandler), nil, nil, nil, server.AdminHandler(http.NotFoundHandler(), nil), lis)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("admin server: %v", err)
		}
	})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + lis.Addr().String() + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz over TLS: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != "ok" {
		t.Errorf("/healthz: %d %q", resp.StatusCode, b)
	}
}

// TestCertificateReloadedWhenItsFilesChange: a renewed certificate is
// served from the next connection on, without a restart; a changed file
// that does not load leaves the previous certificate in use.
func TestCertificateReloadedWhenItsFilesChange(t *testing.T) {
	p := newPKI(t)
	cfg := p.config(server.ClientAuthOff)
	addr, _ := serveTLS(t, cfg)
	serial := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	// The renewal: new files, written with a later modification time.
	renewed := p.ca.Server(t)
	servertest.WriteKeyPair(t, p.dir, "server", renewed)
	later := time.Now().Add(time.Hour)
	for _, f := range []string{p.cert, p.key} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	if got := serial(); got != renewed.Leaf.SerialNumber.String() || got == first {
		t.Fatalf("after renewal the server presents serial %s, want the renewed %s", got, renewed.Leaf.SerialNumber)
	}
	// A half-written renewal does not take the listener down.
	if err := os.WriteFile(p.cert, []byte("-----BEGIN CERT"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != renewed.Leaf.SerialNumber.String() {
		t.Errorf("after a broken file the server presents serial %s, want the last good %s", got, renewed.Leaf.SerialNumber)
	}
}

// TestTLSConfigValidate: settings that disagree are refused, naming the
// variables.
func TestTLSConfigValidate(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		name string
		cfg  server.TLSConfig
		want string
	}{
		{"cert without key", server.TLSConfig{CertFile: p.cert}, "MC_TLS_KEY_FILE"},
		{"unknown mode", server.TLSConfig{CertFile: p.cert, KeyFile: p.key, ClientCAFile: p.clientCAFile, ClientAuth: "sometimes"}, "off, request or require"},
		{"require without CA", server.TLSConfig{CertFile: p.cert, KeyFile: p.key, ClientAuth: "require"}, "MC_TLS_CLIENT_CA_FILE"},
		{"CA with mode off", server.TLSConfig{CertFile: p.cert, KeyFile: p.key, ClientCAFile: p.clientCAFile, ClientAuth: "off"}, "MC_TLS_CLIENT_AUTH=off"},
		{"CA without TLS", server.TLSConfig{ClientCAFile: p.clientCAFile}, "mutual TLS is TLS first"},
		{"missing file", server.TLSConfig{CertFile: p.cert + ".missing", KeyFile: p.key}, "no such file"},
		{"CA not PEM", server.TLSConfig{CertFile: p.cert, KeyFile: p.key, ClientCAFile: p.key}, "no PEM certificate"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if err := (server.TLSConfig{}).Validate(); err != nil {
		t.Errorf("plaintext: %v", err)
	}
	if m := (server.TLSConfig{CertFile: p.cert, KeyFile: p.key, ClientCAFile: p.clientCAFile}).Mode(); m != server.ClientAuthRequire {
		t.Errorf("a client CA without a mode: %s, want require", m)
	}
}
