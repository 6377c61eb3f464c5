// Package platformtest starts the whole platform, or a part of it, inside the
// calling process: for the end-to-end tests, the benchmarks and the demo
// workload (mc-bench). It is tooling and never part of the membercenter
// binary.
//
// Open builds an Env (telemetry and the platform's shared connections) from a
// configuration; Start runs a selection of services and stages on loopback
// listeners of its own, waits until everything has started, and dials the
// gRPC server. OpenT and StartT are the same for a test: they fail it when
// something does not start and clean up when it ends.
package platformtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/telemetry"
)

// Env is a configuration, its telemetry and the platform opened over them:
// what every command of a process shares.
type Env struct {
	Config platform.Config
	Tel    *telemetry.Telemetry
	P      *platform.Platform
}

// Open sets up telemetry, logging to logOut, and opens the platform (its
// PostgreSQL pool) for cfg.
func Open(ctx context.Context, cfg platform.Config, logOut io.Writer, opts ...telemetry.Option) (*Env, error) {
	tel, err := telemetry.Setup(ctx, cfg.Telemetry, logOut, opts...)
	if err != nil {
		return nil, err
	}
	p, err := platform.Open(ctx, cfg, tel)
	if err != nil {
		_ = tel.Shutdown(context.Background())
		return nil, err
	}
	return &Env{Config: cfg, Tel: tel, P: p}, nil
}

// Close closes the platform's connections and flushes the telemetry.
func (e *Env) Close() {
	e.P.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = e.Tel.Shutdown(ctx)
}

// Kafka is the telemetry for the environment's Kafka clients.
func (e *Env) Kafka() kafka.Telemetry {
	return platform.KafkaTelemetry(e.Tel)
}

// OpenT is Open for a test, closed when the test ends.
func OpenT(t testing.TB, cfg platform.Config, logOut io.Writer, opts ...telemetry.Option) *Env {
	t.Helper()
	e, err := Open(context.Background(), cfg, logOut, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// Option changes what Start starts.
type Option func(*settings)

type settings struct {
	gateway  bool
	dialOpts []grpc.DialOption
}

// WithGateway serves the HTTP/JSON gateway too, on a loopback port of its
// own (Running.HTTP).
func WithGateway() Option { return func(s *settings) { s.gateway = true } }

// WithDialOptions adds options to the connections Running dials (a stats
// handler, say); the transport is always plain TCP.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOpts = append(s.dialOpts, opts...) }
}

// Running is a platform started by Start.
type Running struct {
	// GRPC, Admin and HTTP are the host:port each listens on (HTTP only
	// with WithGateway).
	GRPC, Admin, HTTP string
	// Conn is a connection to the gRPC server.
	Conn *grpc.ClientConn

	dialOpts []grpc.DialOption
	eg       *errgroup.Group
	gctx     context.Context
	cancel   context.CancelFunc

	mu    sync.Mutex
	conns []*grpc.ClientConn

	once sync.Once
	err  error
}

// Start runs p with o's services and stages on loopback listeners of its
// own (gRPC and admin; the gateway WithGateway) until ctx ends or Stop, and
// returns once every one of them has started, with a connection to the
// gRPC server. o's listeners and Ready are Start's to set. A platform that
// ends before it is ready is stopped, and its error returned.
func Start(ctx context.Context, p *platform.Platform, o platform.Options, opts ...Option) (*Running, error) {
	var s settings
	for _, opt := range opts {
		opt(&s)
	}
	// Every listener is bound before anything starts, as platform.Run binds
	// its own.
	var bound []net.Listener
	listen := func() (net.Listener, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, b := range bound {
				b.Close()
			}
			return nil, err
		}
		bound = append(bound, l)
		return l, nil
	}
	var err error
	if o.GRPC, err = listen(); err != nil {
		return nil, err
	}
	if o.Admin, err = listen(); err != nil {
		return nil, err
	}
	o.HTTP = nil
	if s.gateway {
		if o.HTTP, err = listen(); err != nil {
			return nil, err
		}
	}
	r := &Running{GRPC: o.GRPC.Addr().String(), Admin: o.Admin.Addr().String(),
		dialOpts: append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, s.dialOpts...)}
	if o.HTTP != nil {
		r.HTTP = o.HTTP.Addr().String()
	}
	ready := make(chan struct{})
	o.Ready = func() { close(ready) }
	pctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.eg, r.gctx = errgroup.WithContext(pctx)
	r.eg.Go(func() error { return p.Run(r.gctx, o) })
	select {
	case <-ready:
	case <-r.gctx.Done():
		err := r.Stop()
		if err == nil {
			err = r.gctx.Err()
		}
		return nil, fmt.Errorf("platform did not start: %w", err)
	}
	conn, err := r.Dial()
	if err != nil {
		_ = r.Stop()
		return nil, err
	}
	r.Conn = conn
	return r, nil
}

// StartT is Start for a test: the test fails when the platform does not
// start, and when it ends the platform is stopped; an error the platform
// ended with fails the test.
func StartT(t testing.TB, p *platform.Platform, o platform.Options, opts ...Option) *Running {
	t.Helper()
	r, err := Start(context.Background(), p, o, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("platform: %v", err)
		}
	})
	return r
}

// Dial opens another connection to the gRPC server; Stop closes it.
func (r *Running) Dial() (*grpc.ClientConn, error) {
	c, err := grpc.NewClient(r.GRPC, r.dialOpts...)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
	return c, nil
}

// Conns dials n connections and starts connecting each, so that requests
// can be spread over them.
func (r *Running) Conns(n int) ([]*grpc.ClientConn, error) {
	out := make([]*grpc.ClientConn, 0, n)
	for range n {
		c, err := r.Dial()
		if err != nil {
			return nil, err
		}
		c.Connect()
		out = append(out, c)
	}
	return out, nil
}

// Stopped is closed when the platform has stopped, or begun to.
func (r *Running) Stopped() <-chan struct{} { return r.gctx.Done() }

// Stop closes the connections Running dialled, stops the platform and
// waits for it; it returns why the platform ended unless it was stopped.
// It may be called more than once.
func (r *Running) Stop() error {
	r.once.Do(func() {
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.cancel()
		if err := r.eg.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			r.err = err
		}
	})
	return r.err
}
