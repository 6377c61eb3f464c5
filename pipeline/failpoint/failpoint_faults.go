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

// Env names the failpoints that crash the process: a comma-separated list
// of names, each optionally with @N to crash at its Nth hit (default the
// first), e.g. MC_FAILPOINTS=relay/after-commit@3.
const Env = "MC_FAILPOINTS"

var (
	mu    sync.Mutex
	hits  = map[string]int{}
	armed map[string]int
)

func load() {
	if armed != nil {
		return
	}
	armed = map[string]int{}
	for _, f := range strings.Split(os.Getenv(Env), ",") {
		name, at, _ := strings.Cut(strings.TrimSpace(f), "@")
		if name == "" {
			continue
		}
		n, err := strconv.Atoi(at)
		if err != nil || n < 1 {
			n = 1
		}
		armed[name] = n
	}
}

// Inject kills the process with SIGKILL, as a crash or an OOM kill would,
// when name is armed in MC_FAILPOINTS and this is its chosen hit. Nothing
// after the call runs: no deferred function, no flush, no goodbye.
func Inject(name string) {
	mu.Lock()
	load()
	at, ok := armed[name]
	hits[name]++
	hit := hits[name]
	mu.Unlock()
	if !ok || hit != at {
		return
	}
	fmt.Fprintf(os.Stderr, "failpoint %s: killing the process (hit %d)\n", name, hit)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
