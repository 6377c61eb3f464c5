package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/membercenter/membercenter/pipeline/cdc"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/migration"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/server"
)

// importer builds what an import needs on the environment's database.
func importer(ctx context.Context, e *env, source string) (*migration.Importer, error) {
	schema, err := attributes.Load(e.cfg.Profile.AttributeSchema)
	if err != nil {
		return nil, err
	}
	schema.SetDefaultRegion(e.cfg.Identity.DefaultRegion)
	return migration.New(ctx, migration.Setup{Pool: e.p.Pool(), KeyStore: e.p.KeyStore(), Identity: e.cfg.Identity, Schema: schema,
		Changes: changesWriter(e), Log: e.tel.Logger, Source: source})
}

// factsOpener connects to ClickHouse.
type factsOpener func(context.Context) (driver.Conn, error)

// importOrders imports the export's order history into ClickHouse.
func importOrders(ctx context.Context, im *migration.Importer, src *migration.Source, dryRun bool, accepted map[string]bool, openFacts factsOpener) (migration.OrdersReport, error) {
	conn, err := openFacts(ctx)
	if err != nil {
		return migration.OrdersReport{}, err
	}
	defer conn.Close()
	return im.ImportOrders(ctx, src, conn, dryRun, accepted, nil)
}

func importCmd(stdout, stderr io.Writer) *cobra.Command {
	var source, reportPath string
	var dryRun bool
	var workers, batch int
	// withImporter runs run with the export its argument names, an
	// importer for source and a progress bar (described by what) that
	// knows how many member records the export holds; report is where the
	// command's --report goes.
	withImporter := func(source, report *string, what func() string, run func(ctx context.Context, im *migration.Importer, src *migration.Source, progress func(int), openFacts factsOpener) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			switch {
			case strings.TrimSpace(*source) == "":
				return usage(cmd, errors.New("--source is empty: name the legacy system (its legacy ids are unique within it)"))
			case batch < 1:
				return usage(cmd, fmt.Errorf("--batch %d: at least 1 member per transaction", batch))
			case workers < 0:
				return usage(cmd, fmt.Errorf("--workers %d: 0 (one per CPU) or more", workers))
			}
			// A report that cannot be written is found before the run, not
			// after it (an import of millions of members).
			if err := canWrite(*report); err != nil {
				return usage(cmd, fmt.Errorf("--report: %w", err))
			}
			src, err := migration.Open(args[0])
			if err != nil {
				return usage(cmd, err)
			}
			return runEnv(cmd, args, stderr, server.DefaultAdminAddr, func(cmd *cobra.Command, _ []string, e *env) error {
				im, err := importer(cmd.Context(), e, *source)
				if err != nil {
					return err
				}
				total, err := src.CountMembers()
				if err != nil {
					return err
				}
				bar := newProgress(stderr, what(), "members")
				defer bar.finish()
				return run(cmd.Context(), im, src, func(n int) { bar.update(int64(n), int64(total)) }, e.p.OpenClickHouse)
			})
		}
	}
	cmd := &cobra.Command{
		Use:   "import DIR",
		Short: "Import members from a legacy system's export (docs/migration.md)",
		Long: `Import the members of a legacy export in DIR: members.jsonl (one member per
line), or members.csv with lots.csv, months.csv and coupons.csv (formats in
docs/migration.md). Each member is imported whole or not at all: identifiers
(sealed and hashed like a channel's; placeholder values ignored), attributes
(the attribute schema applies), consents, points as lots with their dates,
tier with its date and monthly history, coupons. Nothing is re-earned.
A member already imported (by legacy id) is skipped, so a run after a kill
continues and a second run doubles nothing. A record that cannot be imported
is refused alone, with its file, line and reason; a legacy member whose
phone (or other unique identifier) belongs to another member is a conflict,
never merged. Imported members' changes go to the change stream and their
labels are computed. Exit 0 when every record is imported (or was), 1 when
any was refused.`,
		Args: cobra.ExactArgs(1),
		RunE: withImporter(&source, &reportPath, func() string {
			if dryRun {
				return "checking (dry run)"
			}
			return "importing"
		}, func(ctx context.Context, im *migration.Importer, src *migration.Source, progress func(int), openFacts factsOpener) error {
			// With an order history, labels are computed once, by the
			// order phase (from the orders, or without for members that
			// have none).
			rep, err := im.Run(ctx, src, migration.Options{DryRun: dryRun, Workers: workers, Batch: batch, Progress: progress,
				LabelsByOrders: src.HasOrders() && !dryRun})
			var orders *migration.OrdersReport
			if err == nil && src.HasOrders() {
				var o migration.OrdersReport
				if o, err = importOrders(ctx, im, src, dryRun, rep.Accepted, openFacts); err == nil {
					orders = &o
				}
			}
			if werr := writeImportReport(stdout, reportPath, rep, orders); werr != nil && err == nil {
				err = werr
			}
			if err != nil {
				return err
			}
			if refused := len(rep.Refused) + refusedOrders(orders); refused > 0 {
				return fmt.Errorf("%d records refused (listed above)", refused)
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&source, "source", "legacy", "name of the legacy system: a legacy id is unique within it")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "check every record against the platform without keeping anything, and report")
	cmd.Flags().StringVar(&reportPath, "report", "", "also write the report to this file")
	cmd.Flags().IntVar(&workers, "workers", 0, "transactions importing at once (0: one per CPU, at least 2)")
	cmd.Flags().IntVar(&batch, "batch", 500, "members per transaction (each still whole or not at all)")

	var vsource, vreport string
	verify := &cobra.Command{
		Use:   "verify DIR",
		Short: "Reconcile a legacy export with the platform; exit 1 on any difference",
		Long: `Compare every member of the legacy export in DIR with what the platform
holds: imported; each identifier finds the member; attributes (PII by keyed
hash); consents; balance, open lots (points and expiry), tier and its date;
coupons (template and state). Prints every difference with its file, line
and legacy id, per-field agreement and point totals. Changes nothing. Exit
0 at 100% agreement, 1 otherwise: a migration runbook can gate on it.`,
		Args: cobra.ExactArgs(1),
		RunE: withImporter(&vsource, &vreport, func() string { return "verifying" }, func(ctx context.Context, im *migration.Importer, src *migration.Source, progress func(int), openFacts factsOpener) error {
			// The members and the order history are reconciled at once
			// (both only read).
			g, gctx := errgroup.WithContext(ctx)
			var rep migration.VerifyReport
			g.Go(func() (err error) {
				rep, err = im.Verify(gctx, src, progress)
				return err
			})
			var orders string
			ordersOK := true
			if src.HasOrders() {
				conn, err := openFacts(ctx)
				if err != nil {
					return err
				}
				defer conn.Close()
				g.Go(func() error {
					source, stored, err := im.VerifyOrders(gctx, src, conn)
					ordersOK = source == stored
					orders = fmt.Sprintf("orders of imported members: source %s, ClickHouse %s\n", source, stored)
					return err
				})
			}
			if err := g.Wait(); err != nil {
				return err
			}
			if err := writeVerifyReport(stdout, vreport, rep, orders); err != nil {
				return err
			}
			if !rep.OK() || !ordersOK {
				return fmt.Errorf("%d of %d members agree: %d differences; orders agree: %v", rep.Agreeing, rep.Members, len(rep.Mismatches), ordersOK)
			}
			return nil
		}),
	}
	verify.Flags().StringVar(&vsource, "source", "legacy", "name of the legacy system the export was imported as")
	verify.Flags().StringVar(&vreport, "report", "", "also write the report to this file")
	cmd.AddCommand(verify, catchUpCmd(stdout, stderr), cdcCmd(stdout, stderr))
	return cmd
}

// catchUp builds a catch-up of source on the environment's databases, with
// ClickHouse for orders (closed by the returned func).
func catchUp(ctx context.Context, e *env, source string) (*migration.CatchUp, func(), error) {
	im, err := importer(ctx, e, source)
	if err != nil {
		return nil, nil, err
	}
	conn, err := e.p.OpenClickHouse(ctx)
	if err != nil {
		return nil, nil, err
	}
	return &migration.CatchUp{Importer: im, Facts: conn}, func() { conn.Close() }, nil
}

func catchUpCmd(stdout, stderr io.Writer) *cobra.Command {
	var source, reportPath string
	cmd := &cobra.Command{
		Use:   "catch-up DIR",
		Short: "Apply a legacy system's dated delta files, each change once (docs/migration.md)",
		Long: `Apply the delta files in DIR (delta-<date>.jsonl, e.g. delta-2026-12-01T10.jsonl)
in date order, while the legacy system still runs. Each line is one change of
a legacy row with its position: {"pos": 1042, "table": "lots", "op": "u",
"before": {...}, "after": {...}} (tables members, identifiers, lots, months,
coupons, orders, with the columns of the CSV export; op c, u, d or r). The
platform's state derived from the row becomes the row's new value: points
credited or debited against the migration account (never earned),
identifiers linked or unlinked (a unique one another member holds is a
conflict, never merged), attributes, consents, tier, coupons, orders to
ClickHouse; a member the platform does not know is imported whole. Each
change is applied once: a change at or before the last one applied to its
row is skipped, so a file applied twice changes nothing. A change that
cannot be applied is refused alone with its file, line and reason; a
deleted member is reported, not erased. Exit 0 when nothing was refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := migration.DeltaFiles(args[0])
			if err != nil {
				return usage(cmd, err)
			}
			total, err := countLines(args[0], files)
			if err != nil {
				return usage(cmd, err)
			}
			return runEnv(cmd, args, stderr, server.DefaultAdminAddr, func(cmd *cobra.Command, _ []string, e *env) error {
				cu, done, err := catchUp(cmd.Context(), e, source)
				if err != nil {
					return err
				}
				defer done()
				bar := newProgress(stderr, "catching up", "changes")
				rep, err := cu.ApplyFiles(cmd.Context(), args[0], func(n int) { bar.update(int64(n), int64(total)) })
				bar.finish()
				return catchUpDone(stdout, reportPath, rep, err, "refused")
			})
		},
	}
	cmd.Flags().StringVar(&source, "source", "legacy", "name of the legacy system, as imported")
	cmd.Flags().StringVar(&reportPath, "report", "", "also write the report to this file")
	return cmd
}

func cdcCmd(stdout, stderr io.Writer) *cobra.Command {
	var source, reportPath, group string
	var topics []string
	var until bool
	cmd := &cobra.Command{
		Use:   "cdc --topic T",
		Short: "Apply a legacy system's Debezium change-data-capture topic, each change once (docs/migration.md)",
		Long: `Consume the Debezium JSON change events of a legacy database (with or without
the schema/payload wrapper; op c, u, d, r; tombstones ignored) from the
topics --topic names and apply each change as "import catch-up" applies a
delta file's line: the legacy tables members, identifiers, lots, months,
coupons and orders (the CSV export's columns), ordered by the source's
position (PostgreSQL lsn, MySQL binlog file, pos and row, Oracle scn). A
change at or before the last one applied to its row is skipped, so a topic
read twice, or holding the stream twice, changes nothing the second time.
A record that cannot be applied is dead-lettered (dlq.v1, sealed with the
PII keys) with its reason and the partition moves on. Offsets are
committed after the effects are stored, under the consumer group of the
source (--group). With --until-caught-up it stops once the end the topics
had at its start is committed, and prints what it did; otherwise it runs
until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(topics) == 0 {
				return usage(cmd, fmt.Errorf("--topic names the CDC topic(s) to read"))
			}
			return runEnv(cmd, args, stderr, server.DefaultAdminAddr, func(cmd *cobra.Command, _ []string, e *env) error {
				cu, done, err := catchUp(cmd.Context(), e, source)
				if err != nil {
					return err
				}
				defer done()
				kcfg := e.cfg.Kafka
				kcfg.DLQSealer = cu.Identity.PII() // refused rows hold the legacy system's raw identifiers
				if group == "" {
					group = kcfg.Group("import-cdc-" + source)
				}
				start := time.Now()
				err = cdc.Run(cmd.Context(), kcfg, platform.KafkaTelemetry(e.tel), cdc.Config{Topics: topics, Group: group, DLQTopic: kcfg.Topics.DLQ, UntilCaughtUp: until}, cu)
				rep := cu.Report()
				rep.Took = time.Since(start)
				return catchUpDone(stdout, reportPath, rep, err, "refused and dead-lettered")
			})
		},
	}
	cmd.Flags().StringSliceVar(&topics, "topic", nil, "CDC topic to read (repeat, or separate with commas)")
	cmd.Flags().StringVar(&source, "source", "legacy", "name of the legacy system, as imported")
	cmd.Flags().StringVar(&group, "group", "", "consumer group (default: <prefix>-import-cdc-<source>)")
	cmd.Flags().BoolVar(&until, "until-caught-up", false, "stop once the topics' end at the start is applied and committed")
	cmd.Flags().StringVar(&reportPath, "report", "", "also write the report to this file")
	return cmd
}

// countLines counts the lines of the delta files, for the progress bar.
func countLines(dir string, files []string) (int, error) {
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return 0, err
		}
		n += bytes.Count(b, []byte("\n"))
	}
	return n, nil
}

// catchUpDone prints a catch-up's report (and writes it to path) and
// returns the run's error, or one counting the changes refused (exit 1).
func catchUpDone(stdout io.Writer, path string, rep migration.CatchUpReport, err error, refused string) error {
	if werr := writeCatchUpReport(stdout, path, rep); werr != nil && err == nil {
		err = werr
	}
	if err == nil && len(rep.Refused) > 0 {
		err = fmt.Errorf("%d changes %s (listed above)", len(rep.Refused), refused)
	}
	return err
}

func writeCatchUpReport(stdout io.Writer, path string, rep migration.CatchUpReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "catch-up: %d changes read in %s; %d applied, %d members imported, %d skipped (applied before, or older than the last applied to their row), %d of members erased at their request, %d deletions reported, %d refused (%d conflicts)\n",
		rep.Read, rep.Took.Round(time.Millisecond), rep.Applied, rep.Imported, rep.Stale, rep.Erased, len(rep.Deleted), len(rep.Refused), rep.Conflicts)
	if len(rep.Files) > 0 {
		fmt.Fprintf(&b, "files: %s\n", strings.Join(rep.Files, ", "))
	}
	for _, d := range rep.Deleted {
		fmt.Fprintf(&b, "deleted %s\n", d)
	}
	for _, r := range rep.Refused {
		fmt.Fprintf(&b, "refused %s\n", r)
	}
	for _, g := range rep.Ignored {
		fmt.Fprintf(&b, "ignored %s\n", g)
	}
	return emit(stdout, path, b.String())
}

func refusedOrders(o *migration.OrdersReport) int {
	if o == nil {
		return 0
	}
	return len(o.Refused)
}

func writeImportReport(stdout io.Writer, path string, rep migration.Report, orders *migration.OrdersReport) error {
	var b strings.Builder
	mode := "import"
	if rep.DryRun {
		mode = "dry run (nothing kept)"
	}
	// A refused line of a side file (lots.csv, …) refuses its member too:
	// the summary counts members, and the side lines apart.
	members, sides := 0, 0
	for _, r := range rep.Refused {
		if strings.HasPrefix(r.File, "members.") {
			members++
		} else {
			sides++
		}
	}
	fmt.Fprintf(&b, "%s: %d member records read in %s; %d imported (%d points in open lots), %d imported before (%d changed since, %d erased since at their request), %d refused (%d conflicts)",
		mode, rep.Read, rep.Took.Round(time.Millisecond), rep.Imported, rep.Points, rep.Already, rep.Changed, rep.Erased, members, rep.Conflicts)
	if sides > 0 {
		fmt.Fprintf(&b, ", for %d refused lines of other files among others", sides)
	}
	b.WriteString("\n")
	for _, r := range rep.Refused {
		fmt.Fprintf(&b, "refused %s\n", r)
	}
	for _, g := range rep.Ignored {
		fmt.Fprintf(&b, "ignored %s\n", g)
	}
	if orders != nil {
		fmt.Fprintf(&b, "orders: %d read in %s; %d written to ClickHouse (amount %d, %d lines), features and labels of %d members rebuilt, %d of erased members left out, %d refused",
			orders.Read, orders.Took.Round(time.Millisecond), orders.Written, orders.Amount, orders.Lines, orders.Rebuilt, orders.OfErased, len(orders.Refused))
		if orders.Labelled > 0 {
			fmt.Fprintf(&b, "; labels of %d members without orders computed", orders.Labelled)
		}
		b.WriteString("\n")
		for _, r := range orders.Refused {
			fmt.Fprintf(&b, "refused %s\n", r)
		}
	}
	return emit(stdout, path, b.String())
}

func writeVerifyReport(stdout io.Writer, path string, rep migration.VerifyReport, orders string) error {
	var b strings.Builder
	pct := 0.0
	if rep.Members > 0 {
		pct = 100 * float64(rep.Agreeing) / float64(rep.Members)
	}
	fmt.Fprintf(&b, "verify: %d of %d members agree (%.2f%%; %d of them erased since at their request, %d merged into another since) in %s; points: source %d, platform %d\n",
		rep.Agreeing, rep.Members, pct, rep.Erased, rep.Merged, rep.Took.Round(time.Millisecond), rep.SourcePoints, rep.PlatformPoints)
	if rep.Absorbing > 0 {
		fmt.Fprintf(&b, "%d members had others merged into them since: their loyalty holds the others' and is not compared\n", rep.Absorbing)
	}
	for _, f := range []string{"imported", "identifiers", "attributes", "consents", "balance", "lots", "tier", "coupons"} {
		fmt.Fprintf(&b, "  %-12s %d of %d\n", f, rep.Fields[f], rep.Members)
	}
	b.WriteString(orders)
	for _, m := range rep.Mismatches {
		fmt.Fprintf(&b, "differs %s\n", m)
	}
	return emit(stdout, path, b.String())
}

// canWrite says whether a report can be written at path ("" can): a
// temporary file is made beside it and removed, so that neither an empty
// report nor an earlier run's is left as this run's when the run fails.
func canWrite(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return fmt.Errorf("%s cannot be written: %w", path, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// emit prints a report, and writes it to path when set.
func emit(stdout io.Writer, path, report string) error {
	fmt.Fprint(stdout, report)
	if path == "" {
		return nil
	}
	return os.WriteFile(path, []byte(report), 0o600)
}
