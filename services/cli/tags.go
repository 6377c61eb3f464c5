package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/profile"
	"github.com/membercenter/membercenter/services/tags"
)

func tagsCmd(stdout, stderr io.Writer) *cobra.Command {
	load := loadCmd(stdout, stderr, "Validate a label catalogue and make it the newest version; running services switch to it within seconds",
		`Validate a label catalogue (every label's expression, types, cycles, duplicate
ids and worked examples) and store it as the newest version. A catalogue that
fails validation is refused with every problem named by label, and the running
catalogue stays in place. After loading, run 'membercenter tags backfill' to
recompute every member's labels from history.`,
		tags.Catalogues, func(c *tags.Catalog) string {
			return fmt.Sprintf("label catalogue %s loaded: %d labels, %d purchase filters", c.Version, len(c.Labels), len(c.Filters))
		})
	check := &cobra.Command{
		Use:   "check [FILE]",
		Short: "Validate a label catalogue (the shipped one without FILE) and run its worked examples",
		Args:  cobra.MaximumNArgs(1),
		RunE: withCatalog(func(c *tags.Catalog) error {
			examples := 0
			for _, l := range c.Labels {
				examples += len(l.Examples)
			}
			fmt.Fprintf(stdout, "label catalogue %s is valid: %d labels, %d worked examples hold\n", c.Version, len(c.Labels), examples)
			return nil
		}),
	}
	var batch int
	var restart bool
	backfill := &cobra.Command{
		Use:   "backfill",
		Short: "Recompute every member's labels from the event history in ClickHouse (resumable, idempotent)",
		Long: `Recompute every active member's features and labels from ClickHouse's
member_events with the newest loaded catalogue. Progress is stored with each
batch: an interrupted backfill resumes where it stopped; a finished one does
nothing until --restart. Label changes go to the outbox and ClickHouse like
the worker's, only where a value differs.`,
		RunE: withEnv(io.Discard, func(cmd *cobra.Command, _ []string, e *env) error {
			ctx := cmd.Context()
			svc := tags.New(e.p.Pool(), changesWriter(e), e.tel.Logger)
			if err := svc.Reload(ctx); err != nil {
				return err
			}
			conn, err := e.p.OpenClickHouse(ctx)
			if err != nil {
				return err
			}
			defer conn.Close()
			bar := newProgress(stderr, "backfilling", "members")
			p, err := svc.Backfill(ctx, conn, tags.BackfillOptions{Batch: batch, Restart: restart, Progress: func(p tags.BackfillProgress) {
				bar.update(p.Done, p.Total)
			}})
			bar.finish()
			if err != nil {
				return err
			}
			switch {
			case p.AlreadyDone:
				fmt.Fprintf(stdout, "catalogue %s was already backfilled for %d members (use --restart to run it again)\n", p.Catalog, p.Done)
			default:
				fmt.Fprintf(stdout, "catalogue %s backfilled: %d of %d members, %d with changed labels, %d events read in %s%s\n",
					p.Catalog, p.Done, p.Total, p.Changed, p.Events, p.Elapsed.Round(time.Millisecond), map[bool]string{true: " (resumed)"}[p.Resumed])
			}
			return nil
		}),
	}
	backfill.Flags().IntVar(&batch, "batch", 500, "members per batch")
	backfill.Flags().BoolVar(&restart, "restart", false, "forget an earlier run of this catalogue version and start again")
	docs := &cobra.Command{
		Use:   "docs [FILE]",
		Short: "Print the catalogue's documentation as Markdown (docs/labels.md is this for the shipped catalogue)",
		Args:  cobra.MaximumNArgs(1),
		RunE: withCatalog(func(c *tags.Catalog) error {
			_, err := io.WriteString(stdout, c.Markdown())
			return err
		}),
	}
	return group("tags", "The label catalogue and its backfill (docs/analytics.md)", load, check, backfill, docs)
}

// withCatalog is a RunE that runs run with the catalogue catalogArg parses.
func withCatalog(run func(c *tags.Catalog) error) func(*cobra.Command, []string) error {
	return func(_ *cobra.Command, args []string) error {
		c, err := catalogArg(args)
		if err != nil {
			return err
		}
		return run(c)
	}
}

// catalogArg parses the catalogue file named by the command's argument, or
// the shipped one without an argument.
func catalogArg(args []string) (*tags.Catalog, error) {
	src := tags.DefaultCatalog()
	if len(args) == 1 {
		var err error
		if src, err = os.ReadFile(args[0]); err != nil {
			return nil, err
		}
	}
	return tags.ParseCatalog(src)
}

func segmentCmd(stdout, stderr io.Writer) *cobra.Command {
	// withProfile is a RunE that runs run with a profile service reading
	// ClickHouse, closed when run returns.
	withProfile := func(run func(cmd *cobra.Command, args []string, ps *profile.Service) error) func(*cobra.Command, []string) error {
		return withEnv(io.Discard, func(cmd *cobra.Command, args []string, e *env) error {
			svc := tags.New(e.p.Pool(), changesWriter(e), e.tel.Logger)
			if err := svc.Reload(cmd.Context()); err != nil {
				return err
			}
			conn, err := e.p.OpenClickHouse(cmd.Context())
			if err != nil {
				return err
			}
			defer conn.Close()
			ps := profile.New(e.p.Pool(), svc, changesWriter(e))
			ps.SetFacts(conn)
			return run(cmd, args, ps)
		})
	}
	var showSQL bool
	var purposeName string
	// purpose is the --purpose flag's ConsentPurpose.
	purpose := func() (mcv1.ConsentPurpose, error) {
		p, ok := mcv1.ConsentPurpose_value["CONSENT_PURPOSE_"+strings.ToUpper(strings.ReplaceAll(purposeName, "-", "_"))]
		if !ok || p == 0 {
			return 0, fmt.Errorf("--purpose %q: what the segment is for, one of marketing, profiling, third-party-sharing, analytics (members without consent for it are left out)", purposeName)
		}
		return mcv1.ConsentPurpose(p), nil
	}
	count := &cobra.Command{
		Use:   "count EXPRESSION",
		Short: "Count the members whose current labels match, e.g. 'lifecycle_stage == \"loyal\" && affinity_coffee'",
		Args:  cobra.ExactArgs(1),
		RunE: withProfile(func(cmd *cobra.Command, args []string, ps *profile.Service) error {
			start := time.Now()
			p, err := purpose()
			if err != nil {
				return err
			}
			n, q, err := ps.CountSegment(cmd.Context(), args[0], p)
			if err != nil {
				return err
			}
			if showSQL {
				fmt.Fprintf(stderr, "WHERE %s\n", q.Where)
			}
			fmt.Fprintf(stdout, "%d\n", n)
			fmt.Fprintf(stderr, "%d members in %s\n", n, time.Since(start).Round(time.Millisecond))
			return nil
		}),
	}
	count.Flags().BoolVar(&showSQL, "sql", false, "print the ClickHouse condition the expression compiled to")
	export := &cobra.Command{
		Use:   "export EXPRESSION",
		Short: "Print the ids of the members whose current labels match, one per line",
		Args:  cobra.ExactArgs(1),
		RunE: withProfile(func(cmd *cobra.Command, args []string, ps *profile.Service) error {
			n := 0
			p, err := purpose()
			if err != nil {
				return err
			}
			err = ps.ExportSegment(cmd.Context(), args[0], p, 5000, func(ids []string) error {
				n += len(ids)
				_, err := io.WriteString(stdout, strings.Join(ids, "\n")+"\n")
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "%d members\n", n)
			return nil
		}),
	}
	for _, c := range []*cobra.Command{count, export} {
		c.Flags().StringVar(&purposeName, "purpose", "", "what the segment is for: marketing, profiling, third-party-sharing or analytics (required)")
		_ = c.MarkFlagRequired("purpose")
	}
	return group("segment", "Count or export the members a segment expression matches (docs/analytics.md)", count, export)
}
