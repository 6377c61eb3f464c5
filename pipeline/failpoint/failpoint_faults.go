//go:build faults

package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Enabled reports whether this build carries failpoints.
const Enabled = true

// Env arms failpoints: a comma-separated list of name=action, where action
// is crash (exit at once with status ExitCode, the default) or kill
// (SIGKILL), optionally followed by @N to fire at the Nth hit instead of
// the first, e.g. MC_FAILPOINTS=relay-after-publish=crash.
const Env = "MC_FAILPOINTS"

// ExitCode is the exit status of a crash failpoint, so a supervisor's log
// tells it from any other exit.
const ExitCode = 86

type arm struct {
	action string
	at     int
}

var (
	mu    sync.Mutex
	hits  = map[string]int{}
	armed map[string]arm
)

func load() {
	if armed != nil {
		return
	}
	armed = map[string]arm{}
	for _, f := range strings.Split(os.Getenv(Env), ",") {
		f = strings.TrimSpace(f)
		f, at, _ := strings.Cut(f, "@")
		name, action, _ := strings.Cut(f, "=")
		if name == "" {
			continue
		}
		n, err := strconv.Atoi(at)
		if err != nil || n < 1 {
			n = 1
		}
		if action == "" {
			action = "crash"
		}
		armed[name] = arm{action: action, at: n}
	}
}

// Inject ends the process when name is armed in MC_FAILPOINTS and this is
// its chosen hit, as a crash or an OOM kill would: nothing after the call
// runs, no deferred function, no flush, no goodbye.
func Inject(name string) {
	mu.Lock()
	load()
	a, ok := armed[name]
	hits[name]++
	hit := hits[name]
	mu.Unlock()
	if !ok || hit != a.at {
		return
	}
	fmt.Fprintf(os.Stderr, "failpoint %s: %s (hit %d)\n", name, a.action, hit)
	if a.action == "kill" {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	os.Exit(ExitCode)
}
