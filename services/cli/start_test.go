package cli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/membercenter/membercenter/services/platform/platformtest"
	"github.com/membercenter/membercenter/services/server"
)

// busyPort returns an address something else listens on.
func busyPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// TestAProcessThatCannotListenExitsAtOnceSayingWhy: pipeline with a busy
// admin address, serve with a busy gRPC or HTTP address, end within
// seconds with an error naming the address and the variable to set,
// instead of running half-started until a signal.
func TestAProcessThatCannotListenExitsAtOnceSayingWhy(t *testing.T) {
	platformtest.Setenv(t)
	for _, tc := range []struct {
		name, env string
		args      []string
	}{
		{"pipeline, admin", "MC_ADMIN_ADDR", []string{"pipeline", "--stages=all"}},
		{"serve, admin", "MC_ADMIN_ADDR", []string{"serve"}},
		{"serve, gRPC", "MC_GRPC_ADDR", []string{"serve"}},
		{"serve, HTTP", "MC_HTTP_ADDR", []string{"serve"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := busyPort(t)
			t.Setenv(tc.env, addr)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var log bytes.Buffer
			start := time.Now()
			err := Execute(ctx, tc.args, &bytes.Buffer{}, &log)
			took := time.Since(start)
			if err == nil {
				t.Fatal("started on a busy address")
			}
			if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), tc.env) {
				t.Errorf("error %q does not name %s, the cause and %s", err, addr, tc.env)
			}
			// Loaded machine: connecting to PostgreSQL may take a while,
			// but nothing may wait for a signal or a timeout.
			if took > 15*time.Second {
				t.Errorf("exited after %v; want at once", took.Round(time.Millisecond))
			}
			if strings.Contains(log.String(), "stage started") || strings.Contains(log.String(), "platform started") {
				t.Errorf("something started before the listeners were bound:\n%s", log.String())
			}
		})
	}
}

// TestServeAndPipelineHaveTheirOwnAdminPorts: run side by side with the
// defaults, serve and pipeline do not fight over one admin port; an
// MC_ADMIN_ADDR that is set wins for both.
func TestServeAndPipelineHaveTheirOwnAdminPorts(t *testing.T) {
	// An unreachable PostgreSQL ends each command right after it logged
	// its effective configuration.
	t.Setenv("MC_PG_URL", "postgres://membercenter:membercenter@"+closedPort(t)+"/membercenter?sslmode=disable&connect_timeout=5")
	adminOf := func(args ...string) string {
		t.Helper()
		var log bytes.Buffer
		if err := Execute(context.Background(), args, &bytes.Buffer{}, &log); err == nil {
			t.Fatalf("%v started without PostgreSQL", args)
		}
		i := strings.Index(log.String(), `"admin":"`)
		if i < 0 {
			t.Fatalf("%v logged no admin address:\n%s", args, log.String())
		}
		rest := log.String()[i+len(`"admin":"`):]
		return rest[:strings.Index(rest, `"`)]
	}
	t.Setenv("MC_ADMIN_ADDR", "")
	if got := adminOf("serve"); got != server.DefaultAdminAddr {
		t.Errorf("serve's admin address %q, want %q", got, server.DefaultAdminAddr)
	}
	if got := adminOf("pipeline"); got != server.PipelineAdminAddr {
		t.Errorf("pipeline's admin address %q, want %q", got, server.PipelineAdminAddr)
	}
	t.Setenv("MC_ADMIN_ADDR", "127.0.0.1:19999")
	for _, cmd := range []string{"serve", "pipeline"} {
		if got := adminOf(cmd); got != "127.0.0.1:19999" {
			t.Errorf("%s ignored MC_ADMIN_ADDR: %q", cmd, got)
		}
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
