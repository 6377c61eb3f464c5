package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/platform"
)

func authCmd(stdout io.Writer) *cobra.Command {
	var client, operator string
	var ttl time.Duration
	var members []string
	token := &cobra.Command{
		Use:   "token",
		Short: "Mint a signed token for a registered client (what its back end does with its secret)",
		Long: `Mint a token for a shared-secret client of the clients file
(MC_CHANNEL_CLIENTS): a JWT (HS256) with the client id as key id, valid for
--ttl (a third-party channel with a key set signs its own: see auth sign).
A member-bound client (own_members: true) acts only for the --member ids the
token names. Clients send it as "authorization: Bearer <token>".`,
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
	return group("auth", "Channel client credentials (MC_CHANNEL_CLIENTS)", token, keygenCmd(stdout), signCmd(stdout))
}

// keygenCmd makes a third-party channel's key pair: the private key for the
// channel, the public key for its JWKS.
func keygenCmd(stdout io.Writer) *cobra.Command {
	var alg, kid, keyFile, jwksFile string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Make a third-party channel's signing key pair and its JWKS entry",
		Long: `Make a key pair for a third-party channel that signs its own tokens
(EdDSA with Ed25519, or ES256 with P-256). The private key is written to
--private-key (PKCS 8 PEM, mode 0600; an existing file is never
overwritten): it belongs to the channel and is never given to the platform.
The public key, named by --kid, is added to the JWKS file --jwks (created
when missing; the file the clients file's "jwks:" names, or the one the
channel publishes at its https URL), or printed as a JWKS without --jwks.

Rotation: add the new key beside the old one, let the platform refresh
(MC_AUTH_JWKS_REFRESH), sign with the new kid, and withdraw the old key once
the tokens it signed have expired (MC_AUTH_MAX_TOKEN_LIFETIME).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			priv, pub, err := auth.GenerateKey(alg, kid)
			if err != nil {
				return usage(cmd, err)
			}
			var set jose.JSONWebKeySet
			if jwksFile != "" {
				src, err := os.ReadFile(jwksFile)
				switch {
				case errors.Is(err, os.ErrNotExist):
				case err != nil:
					return err
				default:
					if err := json.Unmarshal(src, &set); err != nil {
						return fmt.Errorf("%s: %w", jwksFile, err)
					}
					if len(set.Key(kid)) > 0 {
						return fmt.Errorf("%s already holds a key %q: choose another --kid", jwksFile, kid)
					}
				}
			}
			set.Keys = append(set.Keys, pub)
			doc, err := json.MarshalIndent(set, "", "  ")
			if err != nil {
				return err
			}
			f, err := os.OpenFile(keyFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("private key: %w", err)
			}
			if _, err := f.Write(priv); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			if jwksFile == "" {
				fmt.Fprintln(stdout, string(doc))
				return nil
			}
			if err := os.WriteFile(jwksFile, append(doc, '\n'), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "key %s (%s) added to %s, which now holds %d keys; private key in %s\n", kid, alg, jwksFile, len(set.Keys), keyFile)
			return nil
		},
	}
	cmd.Flags().StringVar(&alg, "alg", auth.AlgEdDSA, "EdDSA (Ed25519) or ES256 (P-256)")
	cmd.Flags().StringVar(&kid, "kid", "", "key id, unique in the channel's JWKS (e.g. mall-2026-07)")
	cmd.Flags().StringVar(&keyFile, "private-key", "", "file to write the private key to (not overwritten)")
	cmd.Flags().StringVar(&jwksFile, "jwks", "", "JWKS file to add the public key to (created when missing); empty: print a JWKS")
	_ = cmd.MarkFlagRequired("kid")
	_ = cmd.MarkFlagRequired("private-key")
	return cmd
}

// signCmd signs a token with a third-party channel's private key, as the
// channel's back end does: to check a channel's set-up end to end.
func signCmd(stdout io.Writer) *cobra.Command {
	var client, kid, keyFile, operator string
	var ttl time.Duration
	var members []string
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Sign a token with a third-party channel's private key (what its back end does)",
		Long: `Sign a token for a client registered with a "jwks:" key set, with its
private key (EdDSA or ES256 by the key's type): iss and sub are --client,
aud is membercenter, kid is --kid, valid for --ttl from now (the platform
refuses one longer than MC_AUTH_MAX_TOKEN_LIFETIME). Clients send it as
"authorization: Bearer <token>".`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, err := os.ReadFile(keyFile)
			if err != nil {
				return err
			}
			key, err := auth.ParsePrivateKey(src)
			if err != nil {
				return fmt.Errorf("%s: %w", keyFile, err)
			}
			t, err := auth.SignWithKey(key, kid, client, operator, time.Now(), ttl, members...)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, t)
			return nil
		},
	}
	cmd.Flags().StringVar(&client, "client", "", "client id")
	cmd.Flags().StringVar(&kid, "kid", "", "the key's id in the channel's JWKS")
	cmd.Flags().StringVar(&keyFile, "private-key", "", "the channel's private key (PKCS 8 PEM, as keygen writes it)")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "validity")
	cmd.Flags().StringSliceVar(&members, "member", nil, "member ids a member-bound client may act for")
	cmd.Flags().StringVar(&operator, "operator", "", "for an operator tool: the person the token acts for")
	for _, f := range []string{"client", "kid", "private-key"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}
