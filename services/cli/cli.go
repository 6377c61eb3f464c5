// Package cli defines the membercenter command line: serve, pipeline,
// migrate, the operator's commands and version, each reading its
// configuration from the environment.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"time"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/server"
	"github.com/membercenter/membercenter/services/telemetry"
	"github.com/membercenter/membercenter/services/version"
	"github.com/membercenter/membercenter/services/versioned"
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
	root.AddCommand(serveCmd(stderr), pipelineCmd(stderr), migrateCmd(stderr), dlqCmd(stdout, stderr), piiCmd(stdout, stderr), programCmd(stdout, stderr), tagsCmd(stdout, stderr), segmentCmd(stdout, stderr), memberCmd(stdout, stderr), importCmd(stdout, stderr), authCmd(stdout))
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

// withEnv is a command's RunE that runs run with the environment setup
// opens (logging to logOut), closed when run returns.
func withEnv(logOut io.Writer, run func(cmd *cobra.Command, args []string, e *env) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return runEnv(cmd, args, logOut, server.DefaultAdminAddr, run)
	}
}

// loadCmd is the load command of a versioned document (the programme, the
// label catalogue): it reads the file its argument names, then, with the
// environment setup opens, validates it and stores it as the newest
// version, recorded in the configuration audit as loaded by the operator
// --operator names ("cli/NAME"); it prints what loaded says of that.
//
// The operator is a required flag rather than the OS user: on the hosts and
// containers operators run this from, the OS user is a shared account
// (root, a deploy user) that names no one. The OS user and host are
// recorded beside it, as what the machine says.
func loadCmd[T any](stdout, logOut io.Writer, short, long string, f versioned.Format[T], loaded func(*T) string) *cobra.Command {
	var operator *string
	cmd := &cobra.Command{
		Use:   "load FILE --operator NAME",
		Short: short,
		Long:  long,
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			by := versioned.Loader{Actor: "cli/" + *operator, Detail: map[string]string{"file": args[0]}}
			if abs, err := filepath.Abs(args[0]); err == nil {
				by.Detail["file"] = abs
			}
			if u, err := user.Current(); err == nil {
				by.Detail["os_user"] = u.Username
			}
			if h, err := os.Hostname(); err == nil {
				by.Detail["host"] = h
			}
			return runEnv(cmd, args, logOut, server.DefaultAdminAddr, func(cmd *cobra.Command, _ []string, e *env) error {
				doc, err := f.Store(cmd.Context(), e.p.Pool(), src, by)
				if err != nil {
					return err
				}
				fmt.Fprintln(stdout, loaded(doc))
				return nil
			})
		},
	}
	operator = requireOperator(cmd, "who loads it, recorded in the audit as cli/NAME (required)")
	return cmd
}

// operatorName is what --operator accepts: a person's handle, one word.
var operatorName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// checkOperator refuses an --operator that names no one recognisably.
// requireOperator gives cmd, which takes one argument, a required
// --operator flag (described by what) naming who acts, for the audit, and
// checks it; the name is read through the pointer once the flags are
// parsed.
func requireOperator(cmd *cobra.Command, what string) *string {
	operator := new(string)
	cmd.Flags().StringVar(operator, "operator", "", what)
	_ = cmd.MarkFlagRequired("operator")
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(1)(cmd, args); err != nil {
			return err
		}
		if !cmd.Flags().Changed("operator") {
			return nil // cobra's check of required flags names it
		}
		return checkOperator(*operator)
	}
	return operator
}

func checkOperator(name string) error {
	if !operatorName.MatchString(name) {
		return fmt.Errorf("--operator %q: the person loading it, one word of letters, digits, '.', '_', '@' or '-' (at most 64)", name)
	}
	return nil
}

// group is a command that groups the commands subs.
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short}
	cmd.AddCommand(subs...)
	return cmd
}

// runEnv runs run with the environment setupAdmin opens, closed when run
// returns.
func runEnv(cmd *cobra.Command, args []string, logOut io.Writer, adminAddr string, run func(cmd *cobra.Command, args []string, e *env) error) error {
	e, done, err := setupAdmin(cmd.Context(), logOut, adminAddr)
	if err != nil {
		return err
	}
	defer done()
	return run(cmd, args, e)
}

func serveCmd(logOut io.Writer) *cobra.Command {
	return runCmd(&cobra.Command{
		Use:   "serve",
		Short: "Serve the gRPC services (with health, reflection and admin HTTP)",
	}, logOut, "service", "services to serve", platform.AllServices, server.DefaultAdminAddr,
		func(sel []string) platform.Options { return platform.Options{Services: sel} })
}

func pipelineCmd(logOut io.Writer) *cobra.Command {
	// Its own admin port by default, so that it runs beside serve.
	return runCmd(&cobra.Command{
		Use:   "pipeline",
		Short: "Run the Kafka pipeline stages (admin HTTP on " + server.PipelineAdminAddr + " unless MC_ADMIN_ADDR is set)",
	}, logOut, "stage", "stages to run", platform.AllStages, server.PipelineAdminAddr,
		func(sel []string) platform.Options { return platform.Options{Stages: sel} })
}

// runCmd makes cmd run the platform with the selection of what (a service
// or a stage) its flag --whats names, all or a list of valid; its admin
// address, unless MC_ADMIN_ADDR names one, is adminAddr.
func runCmd(cmd *cobra.Command, logOut io.Writer, what, help string, valid []string, adminAddr string, opts func(sel []string) platform.Options) *cobra.Command {
	var names string
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		sel, err := platform.ParseSelection(what, names, valid)
		if err != nil {
			return usage(cmd, err)
		}
		return runEnv(cmd, args, logOut, adminAddr, func(cmd *cobra.Command, _ []string, e *env) error {
			return e.p.Run(cmd.Context(), opts(sel))
		})
	}
	cmd.Flags().StringVar(&names, what+"s", "all", fmt.Sprintf("%s: all or a comma-separated list of %v", help, valid))
	return cmd
}

func migrateCmd(logOut io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply PostgreSQL and ClickHouse migrations and create Kafka topics (idempotent)",
		RunE: withEnv(logOut, func(cmd *cobra.Command, _ []string, e *env) error {
			return e.p.Migrate(cmd.Context())
		}),
	}
}

func changesWriter(e *env) changes.Writer { return changes.Writer{Propagator: e.tel.Propagator} }
