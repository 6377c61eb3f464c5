package platform_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/server/servertest"
	"github.com/membercenter/membercenter/storage/clickhouse"
)

// tlsPeer is a loopback TLS server standing in for a broker or a database
// server that requires client certificates: it completes each handshake,
// reports the client certificate's common name, and hangs up. The
// platform's servers run plaintext here; this shows what the clients would
// do against TLS ones.
func tlsPeer(t *testing.T, cert tls.Certificate, clientCAs *x509.CertPool) (string, <-chan string) {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	peers := make(chan string, 16)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				select {
				case peers <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName:
				default:
				}
			}
			c.Close()
		}
	}()
	return lis.Addr().String(), peers
}

// clientTLS is a test's certificates for a client: the server's CA (the
// one it trusts), and a client certificate from the CA the server trusts.
type clientTLS struct {
	serverCA, clientCA        *servertest.CA
	caFile, certFile, keyFile string
}

func newClientTLS(t *testing.T, cn string) *clientTLS {
	t.Helper()
	dir := t.TempDir()
	c := &clientTLS{serverCA: servertest.NewCA(t, "server CA"), clientCA: servertest.NewCA(t, "client CA")}
	c.caFile = c.serverCA.WriteCA(t, dir, "server-ca")
	c.certFile, c.keyFile = servertest.WriteKeyPair(t, dir, "client", c.clientCA.Client(t, cn))
	return c
}

func handshook(t *testing.T, ctx context.Context, peers <-chan string) string {
	t.Helper()
	select {
	case cn := <-peers:
		return cn
	case <-ctx.Done():
		t.Fatal("no TLS handshake completed")
		return ""
	}
}

// refusesAnotherCA checks that a client refuses a server (what: a broker,
// a database server) whose certificate another CA issued: ping reaches the
// server at addr as the client would, and must fail verifying it, with no
// handshake completed.
func refusesAnotherCA(t *testing.T, c *clientTLS, what string, ping func(addr string) error) {
	t.Helper()
	other := servertest.NewCA(t, "someone else's CA")
	addr, peers := tlsPeer(t, other.Server(t), c.clientCA.Pool())
	if err := ping(addr); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("a %s with another CA's certificate: %v, want the certificate refused", what, err)
	}
	if len(peers) != 0 {
		t.Errorf("a handshake completed with a %s the client does not trust", what)
	}
}

func noopKafkaTelemetry() kafka.Telemetry {
	return kafka.Telemetry{Tracers: tracenoop.NewTracerProvider(), Meters: noop.NewMeterProvider(), Propagator: propagation.TraceContext{}}
}

// TestKafkaClientsSpeakTLSAsConfigured: with MC_KAFKA_TLS_* set, a client
// verifies the broker against the configured CA and presents its
// certificate; a broker whose certificate another CA issued is refused;
// a TLS client against the (plaintext) broker of the test servers fails
// rather than falling back to plaintext.
func TestKafkaClientsSpeakTLSAsConfigured(t *testing.T) {
	c := newClientTLS(t, "membercenter-kafka")
	addr, peers := tlsPeer(t, c.serverCA.Server(t), c.clientCA.Pool())
	cfg := kafka.Config{Brokers: []string{addr}, Topics: kafka.DefaultTopics(), TLSCAFile: c.caFile, TLSCertFile: c.certFile, TLSKeyFile: c.keyFile}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kafka.NewClient(cfg, noopKafkaTelemetry(), "")
	if err != nil {
		t.Fatal(err)
	}
	_ = cl.Ping(ctx) // the stand-in hangs up after the handshake
	cl.Close()
	if cn := handshook(t, ctx, peers); cn != "membercenter-kafka" {
		t.Errorf("the broker saw client certificate %q, want membercenter-kafka", cn)
	}

	// Through a Dialer (tests' proxies) the handshake runs over its
	// connection.
	viaDial := cfg
	var dialled atomic.Int32
	viaDial.Dial = func(ctx context.Context, network, host string) (net.Conn, error) {
		dialled.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, host)
	}
	cl, err = kafka.NewClient(viaDial, noopKafkaTelemetry(), "")
	if err != nil {
		t.Fatal(err)
	}
	_ = cl.Ping(ctx)
	cl.Close()
	if cn := handshook(t, ctx, peers); cn != "membercenter-kafka" || dialled.Load() == 0 {
		t.Errorf("through the Dialer: client certificate %q after %d dials", cn, dialled.Load())
	}

	// Another CA's broker certificate is refused.
	refusesAnotherCA(t, c, "broker", func(addr string) error {
		wrong := cfg
		wrong.Brokers = []string{addr}
		cl, err := kafka.NewClient(wrong, noopKafkaTelemetry(), "")
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.Ping(ctx)
	})

	// A missing file is refused at start, naming the variable.
	bad := cfg
	bad.TLSCAFile += ".missing"
	if _, err := kafka.NewClient(bad, noopKafkaTelemetry(), ""); err == nil || !strings.Contains(err.Error(), "MC_KAFKA_TLS_CA_FILE") {
		t.Errorf("a missing CA file: %v", err)
	}

	if brokers := os.Getenv("MC_KAFKA_BROKERS"); brokers != "" {
		plain := kafka.Config{Brokers: strings.Split(brokers, ","), TLS: true, TLSCAFile: c.caFile}
		cl, err := kafka.NewClient(plain, noopKafkaTelemetry(), "")
		if err != nil {
			t.Fatal(err)
		}
		err = cl.Ping(ctx)
		cl.Close()
		if err == nil || !strings.Contains(err.Error(), "TLS") {
			t.Errorf("a TLS client against the plaintext broker: %v, want an error saying TLS is the likely cause", err)
		}
		t.Logf("TLS client against the plaintext broker: %v", err)
	}
}

// TestClickHouseConnectionsSpeakTLSAsConfigured: with
// MC_CLICKHOUSE_TLS_* set, connections verify the server against the
// configured CA and present the client certificate; a server whose
// certificate another CA issued is refused.
func TestClickHouseConnectionsSpeakTLSAsConfigured(t *testing.T) {
	c := newClientTLS(t, "membercenter-clickhouse")
	addr, peers := tlsPeer(t, c.serverCA.Server(t), c.clientCA.Pool())
	cfg := clickhouse.Config{Addr: addr, Database: "membercenter", User: "default",
		TLSCAFile: c.caFile, TLSCertFile: c.certFile, TLSKeyFile: c.keyFile}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := clickhouse.Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.Ping(ctx) // the stand-in hangs up after the handshake
	conn.Close()
	if cn := handshook(t, ctx, peers); cn != "membercenter-clickhouse" {
		t.Errorf("the server saw client certificate %q, want membercenter-clickhouse", cn)
	}

	refusesAnotherCA(t, c, "server", func(addr string) error {
		wrong := cfg
		wrong.Addr = addr
		conn, err := clickhouse.Dial(wrong)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.Ping(ctx)
	})

	bad := cfg
	bad.TLSKeyFile = ""
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "MC_CLICKHOUSE_TLS_KEY_FILE") {
		t.Errorf("a certificate without its key: %v", err)
	}
}
