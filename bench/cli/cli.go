// Package cli defines the mc-bench command line: the benchmarks behind
// BENCHMARKS.md, the load generator and the demo workload. Each runs the
// platform, or the part it measures, in this process against the servers
// the environment names (MC_PG_URL, MC_KAFKA_BROKERS, MC_CLICKHOUSE_ADDR,
// ...), exactly as membercenter builds it.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"

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
	for _, c := range []*cobra.Command{latencyCmd(stdout), resolveCmd(stdout), benefitsCmd(stdout), tagsCmd(stdout), pipelineCmd(stdout), importBenchCmd(stdout)} {
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

// bench is what the benchmarks on the benchmark database share: their
// environment, where the report goes and where progress goes.
type bench struct {
	name          string // as progress lines name it
	e             *platformtest.Env
	out, progress io.Writer
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "bench "+b.name+": "+format+"\n", args...)
}

// runE runs a benchmark as a command: its environment logs to
// membercenter-bench-<name>.log in the temporary directory, named first.
func (b *bench) runE(run func(ctx context.Context) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		e, logPath, done, err := setupLogged(cmd.Context(), "membercenter-bench-"+b.name)
		if err != nil {
			return err
		}
		defer done()
		b.e, b.progress = e, cmd.ErrOrStderr()
		b.logf("server log in %s", logPath)
		return run(cmd.Context())
	}
}

// openBenchDB opens a platform like the environment's over the benchmark
// database of the configured PostgreSQL server (created and migrated when
// missing), its configuration edited by edit, and returns it with the
// database's URL.
func (b *bench) openBenchDB(ctx context.Context, edit func(*platform.Config)) (*platform.Platform, string, error) {
	url, err := pgbench.DatabaseURL(b.e.Config.Postgres.URL, benchDatabase)
	if err != nil {
		return nil, "", err
	}
	if err := pgbench.CreateDatabase(ctx, b.e.P.Pool(), benchDatabase); err != nil {
		return nil, "", err
	}
	cfg := b.e.Config
	cfg.Postgres.URL = url
	if edit != nil {
		edit(&cfg)
	}
	p, err := platform.Open(ctx, cfg, b.e.Tel)
	if err != nil {
		return nil, "", err
	}
	if _, err := postgres.Migrate(ctx, p.Pool()); err != nil {
		p.Close()
		return nil, "", err
	}
	return p, url, nil
}
