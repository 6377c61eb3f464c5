package faultsuite_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one membercenter process of the platform under test. It is
// restarted when it dies of anything but the suite's own kill (a failpoint
// crash, say), and every such exit is remembered for the report.
type proc struct {
	name    string
	bin     string
	args    []string
	env     []string
	admin   string // admin address: /readyz
	logPath string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	killing  bool
	stopped  bool
	starts   int
	exits    []string // unexpected exits, for the report
	extraEnv []string // for the next start only (failpoints)
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	if err := p.spawn(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
}

func (p *proc) spawn() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	log, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(append(os.Environ(), p.env...), p.extraEnv...)
	p.extraEnv = nil
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(log, "\n==== %s start %d at %s\n", p.name, p.starts+1, time.Now().Format(time.RFC3339Nano))
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	p.starts++
	p.cmd, p.done, p.killing = cmd, make(chan struct{}), false
	done := p.done
	go func() {
		err := cmd.Wait()
		log.Close()
		p.mu.Lock()
		expected := p.killing || p.stopped
		if !expected {
			p.exits = append(p.exits, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
		}
		close(done)
		p.mu.Unlock()
		if !expected {
			// Restarted at once, as a supervisor (systemd, Kubernetes) would.
			_ = p.spawn()
		}
	}()
	return nil
}

// ending sets flag (p.killing or p.stopped: the exit is the suite's own)
// and returns the running command, nil if it never started, and the channel
// closed once it has exited.
func (p *proc) ending(flag *bool) (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	*flag = true
	return p.cmd, p.done
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	cmd, done := p.ending(&p.killing)
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// stop ends the process gracefully (SIGTERM), for the end of the suite.
func (p *proc) stop() {
	cmd, done := p.ending(&p.stopped)
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// restart kills the process and starts it again at once, with extra
// environment for the new start only.
func (p *proc) restart(t *testing.T, extra ...string) {
	p.kill()
	p.mu.Lock()
	p.extraEnv = extra
	p.mu.Unlock()
	p.start(t)
}

func (p *proc) unexpectedExits() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.exits...)
}

// waitReady waits until the process answers /readyz with 200.
func (p *proc) waitReady(ctx context.Context) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %v)", p.name, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePort returns a loopback address nothing listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// servers drives the shared PostgreSQL, Kafka and ClickHouse through
// scripts/deps.sh.
type servers struct{ deps string }

func (s servers) run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, s.deps, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("deps.sh %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (s servers) restart(ctx context.Context, name string) error { return s.run(ctx, "restart", name) }
func (s servers) stop(ctx context.Context, name string) error    { return s.run(ctx, "stop", name) }
func (s servers) start(ctx context.Context, name string) error   { return s.run(ctx, "start-one", name) }

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal(errors.New("no go.work above the test directory"))
		}
		dir = parent
	}
}
