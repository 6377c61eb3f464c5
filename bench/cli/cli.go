// Package cli defines the mc-bench command line: the benchmarks behind
// BENCHMARKS.md, the load generator and the demo workload. Each runs the
// platform, or the part it measures, in this process against the servers
// the environment names (MC_PG_URL, MC_KAFKA_BROKERS, MC_CLICKHOUSE_ADDR,
// ...), exactly as membercenter builds it.
package cli

import (
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
	"github.com/membercenter/membercenter/services/server"
)

// Execute runs the command line with args.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:   "mc-bench",
		Short: "Member Center's benchmarks, load generator and demo workload",
		Long: `mc-bench measures Member Center against floors taken in the same run on the
same servers (the figures in BENCHMARKS.md), generates a synthetic
retailer's load, and runs the demo workload. It is tooling, built apart from
the membercenter binary; its benchmarks write into scratch databases and
topics of their own.

Configuration comes from the environment (MC_PG_URL, MC_KAFKA_BROKERS,
MC_CLICKHOUSE_ADDR, ...); the defaults match what scripts/deps.sh starts.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddGroup(&cobra.Group{ID: "bench", Title: "Benchmarks (Markdown on stdout, progress on stderr):"})
	for _, c := range []*cobra.Command{latencyCmd(stdout), resolveCmd(stdout), benefitsCmd(stdout), tagsCmd(stdout), pipelineCmd(stdout)} {
		c.GroupID = "bench"
		root.AddCommand(c)
	}
	root.AddCommand(loadgenCmd(stdout, stderr), demoCmd(stdout))
	return root.ExecuteContext(ctx)
}

// setup opens the platform's environment as membercenter does, logging to
// logOut.
func setup(ctx context.Context, logOut io.Writer) (*platformtest.Env, error) {
	cfg, err := platform.LoadConfig(ctx)
	if err != nil {
		return nil, err
	}
	cfg.Server.AdminAddr = cfg.Server.Admin(server.DefaultAdminAddr)
	e, err := platformtest.Open(ctx, cfg, logOut)
	if err != nil {
		return nil, err
	}
	e.Tel.Logger.InfoContext(ctx, "configuration", "config", cfg)
	return e, nil
}

// setupLogged is setup with the platform's log in a fresh file named
// <name>.log in the temporary directory; done closes the environment and
// the file.
func setupLogged(ctx context.Context, name string) (*platformtest.Env, string, func(), error) {
	logPath := filepath.Join(os.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, "", nil, err
	}
	e, err := setup(ctx, logFile)
	if err != nil {
		logFile.Close()
		return nil, "", nil, err
	}
	return e, logPath, func() { e.Close(); logFile.Close() }, nil
}

func changesWriter(e *platformtest.Env) changes.Writer {
	return changes.Writer{Propagator: e.Tel.Propagator}
}
