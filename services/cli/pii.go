package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/profile"
)

func piiCmd(stdout, logOut io.Writer) *cobra.Command {
	var batch int
	reencrypt := &cobra.Command{
		Use:   "reencrypt",
		Short: "Move PII ciphertexts under members' data keys and wrap those under the active key (MC_PII_ENC_KEY_ID), so old keys can be retired; seal PII attributes stored unsealed",
		Long: `Rotating the PII encryption key:
  1. add the new key to MC_PII_ENC_KEYS (or the keys file) and make it active,
     keeping the old key listed; restart the platform;
  2. run 'membercenter pii reencrypt';
  3. remove the old key.
It also seals the stored values of attributes the schema (MC_ATTRIBUTE_SCHEMA)
declares PII that are not sealed yet: written before the schema declared
them, or before the platform had an attribute schema.
Safe to run while the platform serves, and to run again.`,
		RunE: withEnv(logOut, func(cmd *cobra.Command, _ []string, e *env) error {
			svc, err := e.p.NewIdentity(changesWriter(e))
			if err != nil {
				return err
			}
			bar := newProgress(stdout, "re-encrypting", "ciphertexts")
			n, err := svc.Reencrypt(cmd.Context(), batch, bar.update)
			bar.finish()
			fmt.Fprintf(stdout, "moved %d ciphertexts under their members' data keys\n", n)
			if err != nil {
				return err
			}
			bar = newProgress(stdout, "re-wrapping", "member keys")
			k, err := svc.PII().Rewrap(cmd.Context(), batch, bar.update)
			bar.finish()
			fmt.Fprintf(stdout, "wrapped %d member data keys under %s\n", k, svc.PII().ActiveKeyID())
			if err != nil {
				return err
			}
			schema, err := attributes.Load(e.cfg.Profile.AttributeSchema)
			if err != nil {
				return err
			}
			schema.SetDefaultRegion(e.cfg.Identity.DefaultRegion)
			ps := profile.New(e.p.Pool(), nil, changesWriter(e))
			ps.SetAttributes(schema, svc.PII())
			bar = newProgress(stdout, "sealing attributes", "members")
			m, err := ps.SealAttributes(cmd.Context(), batch, bar.update)
			bar.finish()
			fmt.Fprintf(stdout, "sealed or re-sealed the attributes of %d members\n", m)
			return err
		}),
	}
	reencrypt.Flags().IntVar(&batch, "batch", 500, "rows per transaction")
	return group("pii", "PII key operations", reencrypt)
}
