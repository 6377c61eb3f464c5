// Command mc-bench runs Member Center's benchmarks, load generator and demo
// workload: the tooling that stays out of the membercenter binary.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/membercenter/membercenter/bench/cli"
	"github.com/membercenter/membercenter/services/platform"
)

func main() {
	platform.TuneGC() // the platform measured runs as membercenter runs it
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mc-bench:", err)
		os.Exit(1)
	}
}
