// Package faulttest puts a loopback TCP proxy between a client and a real
// server so that a test can cut the connection, as a server restart or a
// network fault would, and restore it. SQLError fakes a PostgreSQL error for
// a test of how fault.Classify sorts it.
//
// Toxiproxy was considered first: its Go package runs a proxy only inside
// its API server (with its own metrics, logging and HTTP routing modules);
// cutting and restoring a connection is all these tests need.
package faulttest

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards connections from a loopback address to a server. While
// cut, it resets every open connection and refuses new ones.
type Proxy struct {
	target string
	lis    net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewProxy starts a proxy to target, closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faulttest: %v", err)
	}
	p := &Proxy{target: target, lis: lis, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the address clients connect to instead of the server's.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Dial connects to the proxy whatever address is asked for. A Kafka client
// dialing with it (kafka.Config.Dial) reaches the brokers the cluster
// advertises through the proxy: the single test broker here.
func (p *Proxy) Dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, p.Addr())
}

// Cut resets every connection through the proxy and refuses new ones until
// Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		reset(c)
		delete(p.conns, c)
	}
}

// Restore accepts connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

func (p *Proxy) close() {
	p.lis.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *Proxy) serve(c net.Conn) {
	if !p.track(c) {
		reset(c)
		return
	}
	s, err := net.Dial("tcp", p.target)
	if err != nil || !p.track(s) {
		if s != nil {
			reset(s)
		}
		p.untrack(c)
		reset(c)
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(s, c)
	go pipe(c, s)
	<-done
	// One side ended: end both, and wait for the other copy.
	p.untrack(c)
	p.untrack(s)
	reset(c)
	reset(s)
	<-done
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// reset closes c at once with a TCP reset, as a dying server's kernel does.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
