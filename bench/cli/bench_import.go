package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/errgroup"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chbench"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"

	"github.com/membercenter/membercenter/services/migration"
	"github.com/membercenter/membercenter/services/platform"
)

func importBenchCmd(stdout io.Writer) *cobra.Command {
	var members, workers, batch, orders int
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Legacy import and verify of a generated export, beside a COPY of the same records",
		Long: `Generates a legacy export of --members members (JSON Lines: phone, e-mail
and card, PII and personal attributes, consents, three lots, a tier with
three months of history for one in five, a coupon for one in three), then,
in a fresh database (membercenter_import_bench), times membercenter import
(--workers transactions of --batch members at once) and import verify of it, and, as the floor, a COPY of
the same records (legacy id, identifiers, attributes and loyalty as JSON)
into a plain table of the same database. Prints a Markdown table.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runImportBench(cmd.Context(), stdout, members, workers, batch, orders, cpuProfile)
		},
	}
	cmd.Flags().IntVar(&members, "members", 20_000, "members in the generated export")
	cmd.Flags().IntVar(&workers, "workers", 2, "transactions importing at once (membercenter import's default on 2 cores)")
	cmd.Flags().IntVar(&batch, "batch", 500, "members per transaction")
	cmd.Flags().IntVar(&orders, "orders", 10, "orders per member in the order history")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this process during the import, the order history and verify (not the floor) to this file")
	return cmd
}

// genMember is one generated legacy member, in the export's JSON shape.
func genMember(i int, now time.Time) map[string]any {
	id := fmt.Sprintf("B%07d", i)
	m := map[string]any{
		"legacy_id":  id,
		"created_at": now.AddDate(-3, 0, -(i % 900)).Format(time.RFC3339),
		"identifiers": []map[string]string{
			{"type": "phone", "value": fmt.Sprintf("135%08d", i)},
			{"type": "email", "value": fmt.Sprintf("member%d@example.com", i)},
			{"type": "member_card", "value": fmt.Sprintf("CARD-%08d", i)},
		},
		"attributes": map[string]string{"birth_date": fmt.Sprintf("19%02d-%02d-%02d", 60+i%40, 1+i%12, 1+i%28),
			"city": []string{"Shanghai", "Beijing", "Hangzhou", "Suzhou"}[i%4], "name": fmt.Sprintf("Member %d", i)},
		"consents": map[string]bool{"marketing": i%3 != 0, "profiling": true},
	}
	var lots []map[string]any
	for l := 0; l < 3; l++ {
		earned := now.AddDate(0, -(l*3 + 1), -(i % 27))
		lots = append(lots, map[string]any{"ref": fmt.Sprintf("%s-L%d", id, l), "earned": 100 + (i+l)%900, "remaining": (100 + (i+l)%900) / (l + 1),
			"earned_at": earned.Format(time.RFC3339), "expires_at": earned.AddDate(1, 0, 0).Format(time.RFC3339)})
	}
	m["points"] = map[string]any{"lots": lots}
	if i%5 == 0 {
		var months []map[string]any
		for k := 1; k <= 3; k++ {
			months = append(months, map[string]any{"month": now.AddDate(0, -k, 0).Format("2006-01"), "spend": 50000 + i%100000, "points": 50 + i%100, "orders": 1 + i%5})
		}
		m["tier"] = map[string]any{"id": "silver", "since": now.AddDate(0, -4, 0).Format(time.RFC3339), "months": months}
	}
	if i%3 == 0 {
		m["coupons"] = []map[string]string{{"code": fmt.Sprintf("BC-%s", id), "template": "C10", "state": "issued",
			"valid_from": now.AddDate(0, 0, -5).Format(time.RFC3339), "valid_until": now.AddDate(0, 1, 0).Format(time.RFC3339),
			"issued_at": now.AddDate(0, 0, -5).Format(time.RFC3339)}}
	}
	return m
}

func runImportBench(ctx context.Context, out io.Writer, n, workers, batch, perMember int, cpuProfile string) error {
	configured := os.Getenv("MC_PG_URL")
	if configured == "" {
		configured = "postgres://membercenter:membercenter@127.0.0.1:55432/membercenter?sslmode=disable"
	}
	admin, err := pgxpool.New(ctx, configured)
	if err != nil {
		return err
	}
	defer admin.Close()
	const db = "membercenter_import_bench"
	if err := pgbench.RecreateDatabase(ctx, admin, db); err != nil {
		return err
	}
	url, err := pgbench.DatabaseURL(configured, db)
	if err != nil {
		return err
	}
	// As membercenter opens its pool (with the type map that sends member
	// ids as 16 bytes), its queries traced to a no-op provider.
	pool, err := postgres.Open(ctx, postgres.Config{URL: url, MaxConns: int32(workers + 4)}, tracenoop.NewTracerProvider())
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := postgres.Migrate(ctx, pool); err != nil {
		return err
	}

	// The export.
	now := time.Now()
	dir, err := os.MkdirTemp("", "mc-import-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := os.Create(filepath.Join(dir, "members.jsonl"))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	records := make([][]byte, n)
	for i := range n {
		b, err := json.Marshal(genMember(i, now))
		if err != nil {
			return err
		}
		records[i] = b
		w.Write(b)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		return err
	}
	f.Close()
	of, err := os.Create(filepath.Join(dir, "orders.jsonl"))
	if err != nil {
		return err
	}
	ow := bufio.NewWriter(of)
	for i := range n {
		for k := range perMember {
			b, _ := json.Marshal(map[string]any{"legacy_id": fmt.Sprintf("B%07d", i), "order_id": fmt.Sprintf("B%07d-%d", i, k),
				"at": now.AddDate(0, 0, -(k*17 + i%13 + 1)).Format(time.RFC3339), "channel": []string{"pos", "app", "miniprogram"}[k%3],
				"store_id": fmt.Sprintf("S%02d", i%40), "currency": "CNY", "total": 1000 + (i*7+k*131)%50000})
			ow.Write(b)
			ow.WriteByte('\n')
		}
	}
	if err := ow.Flush(); err != nil {
		return err
	}
	of.Close()
	pcfg, err := platform.LoadConfig(ctx)
	if err != nil {
		return err
	}
	chCfg := pcfg.ClickHouse
	chCfg.Database = "membercenter_import_bench"
	old, err := clickhouse.Open(ctx, chCfg)
	if err != nil {
		return err
	}
	if err := chbench.DropDatabase(ctx, old, chCfg.Database); err != nil {
		return err
	}
	old.Close()
	conn, err := clickhouse.Open(ctx, chCfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := clickhouse.Migrate(ctx, conn); err != nil {
		return err
	}

	im, err := migration.New(ctx, migration.Setup{Pool: pool, Log: slog.New(slog.DiscardHandler), Source: "bench"})
	if err != nil {
		return err
	}
	src, err := migration.Open(dir)
	if err != nil {
		return err
	}

	// The floor: the same records, COPY into a plain table.
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("B%07d", i)
	}
	t0 := time.Now()
	copied, err := pgbench.CopyRecords(ctx, pool, "import_floor", keys, records)
	if err != nil {
		return err
	}
	floor := time.Since(t0)

	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// As membercenter import runs it: with an order history, labels are
	// computed by the order phase.
	rep, err := im.Run(ctx, src, migration.Options{Workers: workers, Batch: batch, LabelsByOrders: perMember > 0})
	if err != nil {
		return err
	}
	if rep.Imported != n || len(rep.Refused) > 0 {
		return fmt.Errorf("import: %d of %d imported, %d refused (first: %v)", rep.Imported, n, len(rep.Refused), firstRefusal(rep))
	}
	ord, err := im.ImportOrders(ctx, src, conn, false, nil, nil)
	if err != nil {
		return err
	}
	if ord.Written != n*perMember || len(ord.Refused) > 0 {
		return fmt.Errorf("orders: %d of %d written, %d refused", ord.Written, n*perMember, len(ord.Refused))
	}
	// As membercenter import verify runs them: the members and the order
	// history at once.
	t1 := time.Now()
	var v migration.VerifyReport
	var so, co migration.OrderTotals
	var vo time.Duration
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		v, err = im.Verify(gctx, src, nil)
		return err
	})
	g.Go(func() (err error) {
		so, co, err = im.VerifyOrders(gctx, src, conn)
		vo = time.Since(t1)
		return err
	})
	if err := g.Wait(); err != nil {
		return err
	}
	wholeVerify := time.Since(t1)
	if !v.OK() {
		return fmt.Errorf("verify: %d of %d agree (first: %v)", v.Agreeing, v.Members, v.Mismatches[:min(1, len(v.Mismatches))])
	}
	if so != co {
		return fmt.Errorf("verify orders: source %s, ClickHouse %s", so, co)
	}
	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	atMillion := func(d time.Duration) time.Duration {
		return (time.Duration(float64(d) * 1e6 / float64(n))).Round(time.Second)
	}
	whole := rep.Took + ord.Took
	defer fmt.Fprintf(out, "\nWhole import (members, then the order history with every member's labels): %s, %.4f× the floor's rate; 1,000,000 members with %d,000,000 orders at this rate: %s. Whole verify (members and orders at once, as import verify runs them): %s; 1,000,000 members at this rate: %s.\n",
		whole.Round(10*time.Millisecond), rate(whole)/rate(floor), perMember, atMillion(whole), wholeVerify.Round(10*time.Millisecond), atMillion(wholeVerify))
	defer fmt.Fprintf(out, "\nOrder history: %d orders (%d per member) to ClickHouse with %d members' labels rebuilt from it in %s (%.0f orders/s; the rebuild %s of it); orders reconciled in %s, beside the members' verify.\n",
		ord.Written, perMember, ord.Rebuilt, ord.Took.Round(10*time.Millisecond), float64(ord.Written)/ord.Took.Seconds(), ord.RebuildTook.Round(10*time.Millisecond), vo.Round(time.Millisecond))
	fmt.Fprintf(out, "| members | workers × batch | import | members/s | verify | members/s | floor: COPY of the same records | records/s | import ÷ floor | 1,000,000 members at this rate |\n")
	fmt.Fprintf(out, "|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(out, "| %d | %d × %d | %s | %.0f | %s | %.0f | %s (%d rows) | %.0f | %.4f× | import %s, verify %s |\n",
		n, workers, batch, rep.Took.Round(10*time.Millisecond), rate(rep.Took), v.Took.Round(10*time.Millisecond), rate(v.Took),
		floor.Round(time.Millisecond), copied, rate(floor), rate(rep.Took)/rate(floor),
		(time.Duration(float64(time.Second) * 1e6 / rate(rep.Took))).Round(time.Minute), (time.Duration(float64(time.Second) * 1e6 / rate(v.Took))).Round(time.Minute))
	return nil
}

func firstRefusal(r migration.Report) string {
	if len(r.Refused) == 0 {
		return ""
	}
	return r.Refused[0].Error()
}
