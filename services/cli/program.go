package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/benefits"
)

func programCmd(stdout, logOut io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "program", Short: "The loyalty programme (docs/benefits.md)"}
	load := &cobra.Command{
		Use:   "load FILE",
		Short: "Validate a programme file and make it the newest version; running services switch to it within seconds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			e, done, err := setup(cmd.Context(), logOut)
			if err != nil {
				return err
			}
			defer done()
			p, err := benefits.LoadProgram(cmd.Context(), e.p.Pool(), src)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "programme %s loaded: %d tiers, %d campaigns, %d coupon templates, %d benefits\n",
				p.Version, len(p.Tiers), len(p.Campaigns), len(p.Coupons), len(p.Benefits))
			return nil
		},
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
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, done, err := setup(cmd.Context(), logOut)
			if err != nil {
				return err
			}
			defer done()
			svc := benefits.New(e.p.Pool(), changesWriter(e), e.tel.Logger)
			if err := svc.Reload(cmd.Context()); err != nil {
				return err
			}
			_, err = stdout.Write(svc.Program().Source)
			return err
		},
	}
	cmd.AddCommand(load, check, show)
	return cmd
}
