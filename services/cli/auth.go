package cli

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/platform"
)

func authCmd(stdout io.Writer) *cobra.Command {
	var client, operator string
	var ttl time.Duration
	var members []string
	token := &cobra.Command{
		Use:   "token",
		Short: "Mint a signed token for a registered client (what its back end does with its secret)",
		Long: `Mint a token for a client of the clients file (MC_CHANNEL_CLIENTS): a JWT
(HS256) with the client id as key id, valid for --ttl. A member-bound client
(own_members: true) acts only for the --member ids the token names. Clients
send it as "authorization: Bearer <token>".`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := platform.LoadConfig(cmd.Context())
			if err != nil {
				return err
			}
			if cfg.Auth.ClientsPath == "" {
				return errors.New("MC_CHANNEL_CLIENTS is not set: it names the clients file")
			}
			a, err := cfg.Auth.Open()
			if err != nil {
				return err
			}
			t, err := a.MintFor(client, operator, ttl, members...)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, t)
			return nil
		},
	}
	token.Flags().StringVar(&client, "client", "", "client id")
	token.Flags().DurationVar(&ttl, "ttl", time.Hour, "validity")
	token.Flags().StringSliceVar(&members, "member", nil, "member ids a member-bound client may act for")
	token.Flags().StringVar(&operator, "operator", "", "for an operator tool: the person the token acts for (the audit trail's actor is client/operator)")
	_ = token.MarkFlagRequired("client")
	return group("auth", "Channel client credentials (MC_CHANNEL_CLIENTS)", token)
}
