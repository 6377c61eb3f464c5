// Command membercenter runs any part of Member Center: the gRPC services, the
// pipeline stages, migrations and the operator's commands. It exits 2 on a
// command line it cannot act on, 1 on any other failure.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/membercenter/membercenter/services/cli"
	"github.com/membercenter/membercenter/services/platform"
)

func main() {
	platform.TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "membercenter:", err)
		var u *cli.UsageError
		if errors.As(err, &u) {
			fmt.Fprintln(os.Stderr, u.Hint())
		}
	}
	os.Exit(exitCode(err))
}

// exitCode is 0 on success, 2 for a command line that cannot be acted on
// (an unknown command or flag, a bad flag value or argument: the shell
// convention), 1 for any other failure.
func exitCode(err error) int {
	var u *cli.UsageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &u):
		return 2
	}
	return 1
}
