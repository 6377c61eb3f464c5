// Package clickhouse owns Member Center's ClickHouse side: connection config,
// DDL migrations and the batch writers of the facts marketing queries.
package clickhouse

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Config says how to reach ClickHouse over the native protocol (the HTTP
// protocol of clickhouse-go fails against 18.16). Defaults match deps.sh.
type Config struct {
	Addr     string `env:"MC_CLICKHOUSE_ADDR, default=127.0.0.1:59000"`
	Database string `env:"MC_CLICKHOUSE_DB, default=membercenter"`
	User     string `env:"MC_CLICKHOUSE_USER, default=default"`
	Password string `env:"MC_CLICKHOUSE_PASSWORD"`
	// Cluster, when set, names a cluster of the servers' <remote_servers>
	// over which the per-member tables are sharded: each is a local table
	// on every node and a Distributed table in front of them (see Schema
	// and docs/scaling-clickhouse.md). Addr must be one of its nodes. Empty:
	// one server, one database.
	Cluster string `env:"MC_CLICKHOUSE_CLUSTER"`
	// TLS to the server (its secure native port, 9440 by convention): on
	// with MC_CLICKHOUSE_TLS=true (the system's CAs) or when any TLS file
	// is set. CAFile (PEM) replaces the system's CAs; CertFile and KeyFile
	// are this client's certificate for a server that requires one;
	// ServerName overrides the name checked in the server's certificate
	// (default: Addr's host).
	TLS           bool   `env:"MC_CLICKHOUSE_TLS"`
	TLSCAFile     string `env:"MC_CLICKHOUSE_TLS_CA_FILE"`
	TLSCertFile   string `env:"MC_CLICKHOUSE_TLS_CERT_FILE"`
	TLSKeyFile    string `env:"MC_CLICKHOUSE_TLS_KEY_FILE"`
	TLSServerName string `env:"MC_CLICKHOUSE_TLS_SERVER_NAME"`
}

// TLSEnabled reports whether connections speak TLS.
func (c Config) TLSEnabled() bool {
	return c.TLS || c.TLSCAFile != "" || c.TLSCertFile != "" || c.TLSKeyFile != ""
}

// TLSConfig is the connections' TLS configuration, nil for plaintext.
func (c Config) TLSConfig() (*tls.Config, error) {
	if !c.TLSEnabled() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("MC_CLICKHOUSE_TLS_CA_FILE: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("MC_CLICKHOUSE_TLS_CA_FILE %s: no PEM certificate in it", c.TLSCAFile)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return nil, errors.New("MC_CLICKHOUSE_TLS_CERT_FILE and MC_CLICKHOUSE_TLS_KEY_FILE go together")
	}
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("MC_CLICKHOUSE_TLS_CERT_FILE / MC_CLICKHOUSE_TLS_KEY_FILE: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// clusterName is what a <remote_servers> element name may be here: it is
// written into Distributed engine arguments as a quoted literal.
var clusterName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("MC_CLICKHOUSE_ADDR is empty"))
	}
	if !identifier.MatchString(c.Database) {
		errs = append(errs, fmt.Errorf("MC_CLICKHOUSE_DB %q is not a plain identifier", c.Database))
	}
	if c.Cluster != "" && !clusterName.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("MC_CLICKHOUSE_CLUSTER %q is not a cluster name (letters, digits, _ . -)", c.Cluster))
	}
	if _, err := c.TLSConfig(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Open connects to the configured database, creating it when missing.
// WithTracerProvider makes its calls spans.
func Open(ctx context.Context, cfg Config, opts ...Option) (driver.Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	boot, err := connect(cfg, "default")
	if err != nil {
		return nil, err
	}
	err = boot.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+cfg.Database)
	boot.Close()
	if err != nil {
		return nil, fmt.Errorf("create clickhouse database %s: %w", cfg.Database, err)
	}
	conn, err := connect(cfg, cfg.Database)
	if err != nil {
		return nil, err
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("ping clickhouse at %s: %w", cfg.Addr, err)
	}
	return withOptions(conn, cfg, opts), nil
}

// Dial returns a connection pool to the configured database without
// contacting the server: connections are made when first used, so a process
// that starts while ClickHouse is away runs, and its queries fail (as
// transient errors) until ClickHouse is back. The database must exist
// (membercenter migrate creates it). WithTracerProvider makes its calls
// spans.
func Dial(cfg Config, opts ...Option) (driver.Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := connect(cfg, cfg.Database)
	if err != nil {
		return nil, err
	}
	return withOptions(conn, cfg, opts), nil
}

func withOptions(conn driver.Conn, cfg Config, opts []Option) driver.Conn {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.tracers != nil {
		conn = traced(conn, o.tracers, cfg)
	}
	return conn
}

func connect(cfg Config, db string) (driver.Conn, error) {
	tc, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	opts := &ch.Options{
		TLS:             tc,
		Protocol:        ch.Native,
		Addr:            []string{cfg.Addr},
		Auth:            ch.Auth{Database: db, Username: cfg.User, Password: cfg.Password},
		DialTimeout:     5 * time.Second,
		MaxOpenConns:    8,
		MaxIdleConns:    4,
		ConnMaxLifetime: time.Hour,
	}
	if cfg.Cluster != "" {
		// An insert into a Distributed table returns once every shard
		// holds its rows, not when they are queued on the node that took
		// them: the sink and the exporter acknowledge (commit offsets,
		// dequeue) only what is stored, and a failed shard fails the
		// insert, which is then retried whole (the tables collapse what
		// was written twice).
		opts.Settings = ch.Settings{"insert_distributed_sync": 1}
	}
	conn, err := ch.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", cfg.Addr, err)
	}
	return conn, nil
}
