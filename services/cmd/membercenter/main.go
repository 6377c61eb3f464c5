// Command membercenter runs any part of Member Center: the gRPC services, the
// pipeline stages, migrations, and a demo.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/membercenter/membercenter/services/cli"
)

func main() {
	tuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "membercenter:", err)
		os.Exit(1)
	}
}

// tuneGC trades memory for CPU unless GOGC or GOMEMLIMIT say otherwise: the
// heap of a serving process is small and short-lived (requests, decoded
// member state), so collecting at 4× the live heap instead of 2× halves the
// collector's share of CPU, and a 2 GiB soft limit keeps a burst from
// growing the heap without bound.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(2 << 30)
	}
}
