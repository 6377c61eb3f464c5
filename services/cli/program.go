package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/benefits"
)

func programCmd(stdout, logOut io.Writer) *cobra.Command {
	load := loadCmd(stdout, logOut, "Validate a programme file and make it the newest version; running services switch to it within seconds", "",
		benefits.Programmes, func(p *benefits.Program) string {
			return fmt.Sprintf("programme %s loaded: %d tiers, %d campaigns, %d coupon templates, %d benefits",
				p.Version, len(p.Tiers), len(p.Campaigns), len(p.Coupons), len(p.Benefits))
		})
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
	return group("program", "The loyalty programme (docs/benefits.md)", load, check, show)
}
