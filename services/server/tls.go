package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"google.golang.org/grpc/credentials"
)

// TLSConfig says how the listeners speak TLS. Without a certificate they
// speak plaintext (development, the tests, the demo); with one, the gRPC,
// HTTP/JSON and admin listeners all speak TLS (1.2 or later), and channel
// clients on the gRPC and HTTP/JSON listeners may be held to a client
// certificate (mutual TLS). The admin listener never asks for one: metrics
// scrapers and health probes authenticate the server, not themselves.
type TLSConfig struct {
	// CertFile and KeyFile are PEM files: the certificate chain (leaf
	// first) and its private key. Both are read again when either file
	// changes, so a renewed certificate takes effect at the next
	// connection without a restart.
	CertFile string `env:"MC_TLS_CERT_FILE"`
	KeyFile  string `env:"MC_TLS_KEY_FILE"`
	// ClientCAFile holds the PEM certificates of the CAs that issue channel
	// clients' certificates (read again when it changes).
	ClientCAFile string `env:"MC_TLS_CLIENT_CA_FILE"`
	// ClientAuth is off (no client certificate asked for), request (a
	// certificate is asked for and, when one is sent, must be valid) or
	// require (a valid certificate is required). Empty: require when
	// ClientCAFile is set, off otherwise.
	ClientAuth string `env:"MC_TLS_CLIENT_AUTH"`
}

// Client certificate modes (TLSConfig.ClientAuth).
const (
	ClientAuthOff     = "off"
	ClientAuthRequest = "request"
	ClientAuthRequire = "require"
)

// Enabled reports whether the listeners speak TLS.
func (c TLSConfig) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" }

// Mode is the effective client certificate mode.
func (c TLSConfig) Mode() string {
	if c.ClientAuth != "" {
		return c.ClientAuth
	}
	if c.ClientCAFile != "" {
		return ClientAuthRequire
	}
	return ClientAuthOff
}

// Validate checks the settings agree and the files load.
func (c TLSConfig) Validate() error {
	var errs []error
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("MC_TLS_CERT_FILE and MC_TLS_KEY_FILE go together: set both (TLS) or neither (plaintext)"))
	}
	switch m := c.Mode(); {
	case m != ClientAuthOff && m != ClientAuthRequest && m != ClientAuthRequire:
		errs = append(errs, fmt.Errorf("MC_TLS_CLIENT_AUTH %q: want off, request or require", m))
	case m != ClientAuthOff && c.ClientCAFile == "":
		errs = append(errs, fmt.Errorf("MC_TLS_CLIENT_AUTH=%s needs MC_TLS_CLIENT_CA_FILE (the CAs of the channels' certificates)", m))
	case m == ClientAuthOff && c.ClientCAFile != "":
		errs = append(errs, errors.New("MC_TLS_CLIENT_CA_FILE is set but MC_TLS_CLIENT_AUTH=off: say request or require, or unset the CA file"))
	case c.ClientCAFile != "" && !c.Enabled():
		errs = append(errs, errors.New("MC_TLS_CLIENT_CA_FILE needs MC_TLS_CERT_FILE and MC_TLS_KEY_FILE: mutual TLS is TLS first"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if !c.Enabled() {
		return nil
	}
	_, err := c.load()
	return err
}

// Load reads the certificate, key and client CAs; nil (plaintext) when no
// certificate is configured. log hears of a changed file that does not
// load (the previous certificate stays in use).
func (c TLSConfig) Load(log *slog.Logger) (*TLS, error) {
	if !c.Enabled() {
		return nil, nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	m, err := c.load()
	if err != nil {
		return nil, err
	}
	return &TLS{cfg: c, log: log, mat: m}, nil
}

// material is what the files held when last read.
type material struct {
	stamp     string
	cert      *tls.Certificate
	clientCAs *x509.CertPool
}

func (c TLSConfig) files() []string {
	fs := []string{c.CertFile, c.KeyFile}
	if c.ClientCAFile != "" {
		fs = append(fs, c.ClientCAFile)
	}
	return fs
}

// stamp identifies the files' current versions (size and modification
// time), so that an unchanged file is not read again.
func (c TLSConfig) stamp() string {
	var b bytes.Buffer
	for _, f := range c.files() {
		if fi, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", f, fi.Size(), fi.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&b, "%s:missing;", f)
		}
	}
	return b.String()
}

func (c TLSConfig) load() (*material, error) {
	stamp := c.stamp()
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("MC_TLS_CERT_FILE / MC_TLS_KEY_FILE: %w", err)
	}
	m := &material{stamp: stamp, cert: &cert}
	if c.ClientCAFile != "" {
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("MC_TLS_CLIENT_CA_FILE: %w", err)
		}
		m.clientCAs = x509.NewCertPool()
		if !m.clientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("MC_TLS_CLIENT_CA_FILE %s: no PEM certificate in it", c.ClientCAFile)
		}
	}
	return m, nil
}

// TLS is the listeners' TLS: the certificate (read again when its files
// change) and the verification of channel clients' certificates. One TLS
// serves every listener of a process and the gateway's own connection to
// the gRPC server.
type TLS struct {
	cfg TLSConfig
	log *slog.Logger

	mu  sync.Mutex
	mat *material
}

// current returns what the files hold now: the same material while the
// files are unchanged, and the previous material when a changed file does
// not load (a renewal caught half-written), said in the log.
func (t *TLS) current() *material {
	stamp := t.cfg.stamp()
	t.mu.Lock()
	defer t.mu.Unlock()
	if stamp == t.mat.stamp {
		return t.mat
	}
	m, err := t.cfg.load()
	if err != nil {
		if t.log != nil {
			t.log.Warn("TLS files changed but do not load; keeping the previous certificate", "err", err)
		}
		// Not again until the files change once more.
		t.mat = &material{stamp: stamp, cert: t.mat.cert, clientCAs: t.mat.clientCAs}
		return t.mat
	}
	if t.log != nil {
		t.log.Info("TLS files reloaded", "cert", t.cfg.CertFile, "client_ca", t.cfg.ClientCAFile)
	}
	t.mat = m
	return m
}

// serverConfig is the configuration of a listener offering protos (ALPN);
// channel listeners hold clients to the configured client certificate
// mode, the admin listener does not.
func (t *TLS) serverConfig(channels bool, protos ...string) *tls.Config {
	mode := ClientAuthOff
	if channels {
		mode = t.cfg.Mode()
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		// Built per connection, from the files as they are now.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := t.current()
			c := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: protos, Certificates: []tls.Certificate{*m.cert}}
			switch mode {
			case ClientAuthRequest:
				c.ClientAuth = tls.RequestClientCert
			case ClientAuthRequire:
				c.ClientAuth = tls.RequireAnyClientCert
			default:
				return c, nil
			}
			// The certificate is verified here rather than by crypto/tls
			// so that the gateway's own connection, which presents the
			// server's certificate (proving it holds the server's key),
			// passes beside the channels' certificates.
			c.ClientCAs = m.clientCAs
			c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error { return verifyClient(m, raw) }
			return c, nil
		},
	}
}

// verifyClient accepts no certificate (the mode decides whether one is
// required), the server's own certificate, or a client certificate chained
// to a configured client CA.
func verifyClient(m *material, raw [][]byte) error {
	if len(raw) == 0 {
		return nil
	}
	if len(m.cert.Certificate) > 0 && bytes.Equal(raw[0], m.cert.Certificate[0]) {
		return nil
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("client certificate: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: m.clientCAs, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	return nil
}

// Credentials are the gRPC server's transport credentials.
func (t *TLS) Credentials() credentials.TransportCredentials {
	return credentials.NewTLS(t.serverConfig(true, "h2"))
}

// Listener serves TLS over lis: channels is true for the HTTP/JSON
// listener (client certificates as configured), false for admin.
func (t *TLS) Listener(lis net.Listener, channels bool) net.Listener {
	return tls.NewListener(lis, t.serverConfig(channels, "h2", "http/1.1"))
}

// IsOwn reports whether a certificate (DER) is this process's own — the
// one its HTTP/JSON gateway's connection presents (LoopbackCredentials).
func (t *TLS) IsOwn(der []byte) bool {
	own := t.current().cert.Certificate
	return len(own) > 0 && bytes.Equal(der, own[0])
}

// LoopbackCredentials are the credentials of this process's own
// connection to its gRPC server (the HTTP/JSON gateway's): the server must
// present this process's certificate (pinned, so that a listen address
// missing from the certificate's names does not matter), and the
// connection presents that certificate as its client certificate when the
// server asks for one.
func (t *TLS) LoopbackCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain and name checks are replaced by the pin below.
		InsecureSkipVerify: true, //nolint:gosec // pinned to our own certificate in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			own := t.current().cert.Certificate
			if len(cs.PeerCertificates) == 0 || len(own) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, own[0]) {
				return errors.New("the gRPC server did not present this process's certificate")
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return t.current().cert, nil
		},
	})
}

// Describe says how the listeners speak, for the start-up log.
func (c TLSConfig) Describe() string {
	if !c.Enabled() {
		return "plaintext"
	}
	return "tls, client certificates " + c.Mode()
}
