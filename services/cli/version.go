package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/version"
)

func versionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and commit time of this binary",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprint(stdout, version.Read())
			return err
		},
	}
}
