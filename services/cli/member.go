package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/profile"
	"github.com/membercenter/membercenter/services/server"
)

func memberCmd(stdout, stderr io.Writer) *cobra.Command {
	var out string
	var operator *string
	export := &cobra.Command{
		Use:   "export MEMBER_ID --operator NAME",
		Short: "Write everything the platform holds about a member, decrypted, as one JSON document (a data-subject access request)",
		Long: `Write the member's data as ExportMemberData answers it (docs/security.md,
"Data-subject requests"): the rows of every PostgreSQL table that names the
member or a member merged into it, read in one consistent transaction, with
identifiers and PII attributes decrypted; and their ClickHouse rows. A merged
member's id exports the member it was merged into. The document holds
personal data in the clear: --out writes it readable by its owner only. The
export is recorded in the operator audit as made by "cli/NAME" (--operator).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := uuid.Parse(args[0])
			if err != nil {
				return usage(cmd, fmt.Errorf("member id %q: %w", args[0], err))
			}
			return runEnv(cmd, args, io.Discard, server.DefaultAdminAddr, func(cmd *cobra.Command, _ []string, e *env) error {
				ctx := cmd.Context()
				ids, err := e.p.NewIdentity(changesWriter(e))
				if err != nil {
					return err
				}
				conn, err := e.p.OpenClickHouse(ctx)
				if err != nil {
					return err
				}
				defer conn.Close()
				schema, err := attributes.Load(e.cfg.Profile.AttributeSchema)
				if err != nil {
					return err
				}
				ps := profile.New(e.p.Pool(), nil, changesWriter(e))
				ps.SetAttributes(schema, ids.PII())
				ps.SetFacts(conn)
				d, err := ps.ExportMemberData(auth.WithActor(ctx, "cli/"+*operator), id)
				if err != nil {
					return err
				}
				var doc bytes.Buffer
				if err := json.Indent(&doc, d.Document, "", "  "); err != nil {
					return err
				}
				doc.WriteByte('\n')
				where := "standard output"
				if out == "" {
					_, err = doc.WriteTo(stdout)
				} else {
					where, err = out, writePrivate(out, doc.Bytes())
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(stderr, "member %s exported to %s at %s\n", d.MemberID, where, d.ExportedAt.Format("2006-01-02T15:04:05Z07:00"))
				return nil
			})
		},
	}
	export.Flags().StringVar(&out, "out", "", "write the document to this file (mode 0600) instead of standard output")
	operator = requireOperator(export, "who asks for the export (recorded in the operator audit as cli/NAME)")
	return group("member", "A member's data-subject requests (docs/security.md)", export)
}

// writePrivate writes b to the file path, readable and writable by its
// owner only (an existing file too: os.OpenFile keeps an existing file's
// mode, so it is changed before anything is written).
func writePrivate(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(b)
	}
	if err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
