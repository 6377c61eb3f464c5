// Package cli defines the membercenter command line: serve, pipeline,
// migrate, the operator's commands and version, each reading its
// configuration from the environment.
package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/telemetry"
	"github.com/membercenter/membercenter/services/version"
)

// Execute runs the command line with args. A line it cannot act on is
// refused with a *UsageError.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:   "membercenter",
		Short: "Member Center: the single source of truth about a retailer's members",
		Long: `Member Center unifies shoppers' identities, keeps the points ledger, computes
profiles and benefits, and pushes every change of a member to every channel.

Configuration comes from the environment (MC_PG_URL, MC_KAFKA_BROKERS,
MC_CLICKHOUSE_ADDR, ...); the defaults match what scripts/deps.sh starts.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Read().Short(),
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(serveCmd(stderr), pipelineCmd(stderr), migrateCmd(stderr), dlqCmd(stdout, stderr), piiCmd(stdout, stderr), programCmd(stdout, stderr), tagsCmd(stdout, stderr), segmentCmd(stdout, stderr), authCmd(stdout))
	root.AddCommand(versionCmd(stdout))
	return execute(ctx, root)
}

// env is what every command starts from: configuration, telemetry and the
// platform's shared connections.
type env struct {
	cfg platform.Config
	tel *telemetry.Telemetry
	p   *platform.Platform
}

func setup(ctx context.Context, logOut io.Writer) (*env, func(), error) {
	return setupAdmin(ctx, logOut, server.DefaultAdminAddr)
}

// setupAdmin is setup for a command whose admin address, unless
// MC_ADMIN_ADDR names one, is adminAddr.
func setupAdmin(ctx context.Context, logOut io.Writer, adminAddr string) (*env, func(), error) {
	cfg, err := platform.LoadConfig(ctx)
	if err != nil {
		return nil, nil, err
	}
	cfg.Server.AdminAddr = cfg.Server.Admin(adminAddr)
	tel, err := telemetry.Setup(ctx, cfg.Telemetry, logOut)
	if err != nil {
		return nil, nil, err
	}
	v := version.Read()
	tel.Logger.InfoContext(ctx, "configuration", "version", v.Short(), "commit", v.Revision, "config", cfg)
	p, err := platform.Open(ctx, cfg, tel)
	if err != nil {
		_ = tel.Shutdown(context.Background())
		return nil, nil, err
	}
	cleanup := func() {
		p.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}
	return &env{cfg: cfg, tel: tel, p: p}, cleanup, nil
}

func serveCmd(logOut io.Writer) *cobra.Command {
	var services string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the gRPC services (with health, reflection and admin HTTP)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := platform.ParseSelection("service", services, platform.AllServices)
			if err != nil {
				return usage(cmd, err)
			}
			e, done, err := setup(cmd.Context(), logOut)
			if err != nil {
				return err
			}
			defer done()
			return e.p.Run(cmd.Context(), platform.Options{Services: sel})
		},
	}
	cmd.Flags().StringVar(&services, "services", "all", fmt.Sprintf("services to serve: all or a comma-separated list of %v", platform.AllServices))
	return cmd
}

func pipelineCmd(logOut io.Writer) *cobra.Command {
	var stages string
	cmd := &cobra.Command{
		Use:   "pipeline",
		Short: "Run the Kafka pipeline stages (admin HTTP on " + server.PipelineAdminAddr + " unless MC_ADMIN_ADDR is set)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := platform.ParseSelection("stage", stages, platform.AllStages)
			if err != nil {
				return usage(cmd, err)
			}
			// Its own admin port by default, so that it runs beside serve.
			e, done, err := setupAdmin(cmd.Context(), logOut, server.PipelineAdminAddr)
			if err != nil {
				return err
			}
			defer done()
			return e.p.Run(cmd.Context(), platform.Options{Stages: sel})
		},
	}
	cmd.Flags().StringVar(&stages, "stages", "all", fmt.Sprintf("stages to run: all or a comma-separated list of %v", platform.AllStages))
	return cmd
}

func migrateCmd(logOut io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply PostgreSQL and ClickHouse migrations and create Kafka topics (idempotent)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, done, err := setup(cmd.Context(), logOut)
			if err != nil {
				return err
			}
			defer done()
			return e.p.Migrate(cmd.Context())
		},
	}
}

func changesWriter(e *env) changes.Writer { return changes.Writer{Propagator: e.tel.Propagator} }
