package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/server"
)

func programCmd(stdout, logOut io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "program", Short: "The loyalty programme (docs/benefits.md)"}
	load := &cobra.Command{
		Use:   "load FILE",
		Short: "Validate a programme file and make it the newest version; running services switch to it within seconds",
		Args:  cobra.ExactArgs(1),
		RunE: withFile(logOut, func(cmd *cobra.Command, e *env, src []byte) error {
			p, err := benefits.LoadProgram(cmd.Context(), e.p.Pool(), src)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "programme %s loaded: %d tiers, %d campaigns, %d coupon templates, %d benefits\n",
				p.Version, len(p.Tiers), len(p.Campaigns), len(p.Coupons), len(p.Benefits))
			return nil
		}),
	}
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a programme file without loading it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			p, err := benefits.ParseProgram(src)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "programme %s is valid\n", p.Version)
			return nil
		},
	}
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the programme in force",
		RunE: withEnv(logOut, func(cmd *cobra.Command, _ []string, e *env) error {
			svc := benefits.New(e.p.Pool(), changesWriter(e), e.tel.Logger)
			if err := svc.Reload(cmd.Context()); err != nil {
				return err
			}
			_, err := stdout.Write(svc.Program().Source)
			return err
		}),
	}
	cmd.AddCommand(load, check, show)
	return cmd
}

// withFile is the RunE of a command that loads the file its argument names:
// it reads the file, then runs load with the environment setup opens.
func withFile(logOut io.Writer, load func(cmd *cobra.Command, e *env, src []byte) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		src, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		return runEnv(cmd, args, logOut, server.DefaultAdminAddr, func(cmd *cobra.Command, _ []string, e *env) error {
			return load(cmd, e, src)
		})
	}
}
