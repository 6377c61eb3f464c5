package cli

import (
	"fmt"
	"io"
	"runtime"
	"time"
)

// reportPipeline prints the pipeline scenarios as Markdown.
func reportPipeline(w io.Writer, rs []pipelineResult, o pipelineOpts) {
	ratio := func(a, b float64) string {
		switch v := a / b; {
		case b == 0:
			return "–"
		case v >= 100:
			return fmt.Sprintf("%.0f×", v)
		case v >= 10:
			return fmt.Sprintf("%.1f×", v)
		default:
			return fmt.Sprintf("%.3g×", v)
		}
	}
	fmt.Fprintf(w, "Members: each scenario's database (`membercenter_pipeline_<members>`) holds the generator's shoppers, each preloaded with its phone as a retailer's existing member base (COPY of what `identity` stores, once; later runs reuse it and add what they create).\n\n")
	fmt.Fprintf(w, "A database whose members have no history yet first drains one pass of the workload unmeasured (the same shoppers under other event ids), so the measured pass meets members with feature state, ledgers and labels, as a running platform does; later runs find that history (and add their own).\n\n")
	fmt.Fprintf(w, "| members | preloaded (this run) | unmeasured warm-up pass | events ingested before the measured pass | members in the database after the run |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		loaded := "present"
		if r.preload.loaded > 0 {
			loaded = fmt.Sprintf("%s loaded in %s", thousands(int64(r.preload.loaded)), r.preload.took.Round(time.Second))
		}
		warm := "not needed"
		if r.warmUp > 0 {
			warm = fmt.Sprintf("drained in %s", r.warmUp.Round(100*time.Millisecond))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", thousands(int64(r.members)), loaded, warm, thousands(int64(r.history)), thousands(int64(r.dbMembers)))
	}

	fmt.Fprintf(w, "\n### Throughput\n\n%d records per scenario (the generator's mix, malformed ones included), published before the platform starts, so the pipeline drains a backlog at its own pace. Floors, same records, same run, same servers: a plain franz-go consume → clickhouse-go batch insert (no logic), and one autocommitted PostgreSQL upsert per record with four writers.\n\n", o.events)
	fmt.Fprintf(w, "| members | events (malformed) | pipeline events/s | floor: consume → ClickHouse events/s | floor: PG upsert events/s | ÷ ClickHouse floor | ÷ PG floor | drained in | malformed records in the dead-letter topic | other dead letters |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(w, "| %s | %d (%d) | %.0f | %.0f | %.0f | %s | %s | %s | %d of %d | %d |\n",
			thousands(int64(r.members)), r.events, r.malformed, r.rate, r.chFloor, r.pgFloor, ratio(r.rate, r.chFloor), ratio(r.rate, r.pgFloor),
			r.drain.Round(100*time.Millisecond), r.dlqMalformed, r.malformed, r.dlqOther)
	}

	fmt.Fprintf(w, "\n### Resources\n\nCPU seconds per 1,000 events of each process (from /proc) while the pipeline drained, and while the two floors moved the same records (their sum); peak memory of each process over the scenario (sampled every 2 s during the drain and after the freshness and API runs; membercenter's own peak from VmHWM; PostgreSQL as the proportional set size summed over its processes, so shared buffers count once) beside the same processes' memory just after the floors ran. membercenter's figure after the floors is this process before the measured platform starts: the load generator's shopper tables (about 90 MiB per million shoppers), what the warm-up pass's platform left when one ran, and a Go heap allowed to grow to five times its live data between collections (GOGC=400, the binary's default, which trades memory for CPU; GOMEMLIMIT 2 GiB caps it).\n\n")
	fmt.Fprintf(w, "| members | process | CPU s / 1,000 events: pipeline | floors | ÷ floors | peak memory MiB: pipeline | after floors | ÷ after floors |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		rows := []struct {
			name     string
			cpu, fl  float64
			mem, fmm int
		}{
			{"membercenter", r.cpu.self, r.floorCPU.self, r.rss.self, r.floorRSS.self},
			{"PostgreSQL", r.cpu.postgres, r.floorCPU.postgres, r.rss.postgres, r.floorRSS.postgres},
			{"Kafka", r.cpu.kafka, r.floorCPU.kafka, r.rss.kafka, r.floorRSS.kafka},
			{"ClickHouse", r.cpu.clickhouse, r.floorCPU.clickhouse, r.rss.clickhouse, r.floorRSS.clickhouse},
			{"all four", r.cpu.total(), r.floorCPU.total(), r.rss.self + r.rss.postgres + r.rss.kafka + r.rss.clickhouse,
				r.floorRSS.self + r.floorRSS.postgres + r.floorRSS.kafka + r.floorRSS.clickhouse},
		}
		// /proc counts CPU in ticks: a floor that used none used less than
		// one tick over its events.
		tick := 1.0 / userHZ / (float64(r.events) / 1000)
		for _, x := range rows {
			fl, rat := fmt.Sprintf("%.3f", x.fl), ratio(x.cpu, x.fl)
			if x.fl == 0 {
				fl, rat = fmt.Sprintf("< %.3f", tick), "> "+ratio(x.cpu, tick)
			}
			fmt.Fprintf(w, "| %s | %s | %.2f | %s | %s | %d | %d | %s |\n", thousands(int64(r.members)), x.name, x.cpu, fl, rat,
				x.mem, x.fmm, ratio(float64(x.mem), float64(x.fmm)))
		}
	}
	fmt.Fprintf(w, "\nConsumer lag (records behind, summed over partitions) sampled every 2 s while the pipeline drained, per stage ingest / benefits / tags / sink; the floors drained the same backlog in the time their events/s above imply:\n\n")
	for _, r := range rs {
		fmt.Fprintf(w, "- %s members: %s\n", thousands(int64(r.members)), r.lag)
	}
	if rs[0].profile != "" || rs[0].pgBusy != "" {
		fmt.Fprintf(w, "\nWhere the drain's time went: membercenter's CPU profile (`--cpuprofile`) and the PostgreSQL statements running, sampled from `pg_stat_activity` ten times a second (with the average number of sessions running a statement):\n\n")
		for _, r := range rs {
			if r.profile != "" {
				fmt.Fprintf(w, "- %s members, membercenter: %s\n", thousands(int64(r.members)), r.profile)
			}
			fmt.Fprintf(w, "- %s members, PostgreSQL (%.1f sessions running on average): %s\n", thousands(int64(r.members)), r.pgRunning, r.pgBusy)
		}
	}

	fmt.Fprintf(w, "\n### Freshness\n\nAfter each drain, on the same running platform: %d POS purchases of distinct preloaded shoppers, open loop at %d/s, timed from the intended send time to (a) the purchase's points change on an unfiltered `SyncService.Subscribe` stream, (b) `GetProfile` showing labels computed after it (a connection LISTENs on the tag engine's NOTIFY channel, sent at the commit of each label change; on each notification or every 20 ms the pending members' feature-state version is read, and `GetProfile` is called for those with a new one), (c) a new version of the member's row in ClickHouse's `member_profiles` (polled every 10 ms). The floor is a plain franz-go produce → consume round trip on a scratch topic of the same broker at the same rate, just before.\n\n", o.freshEvents, o.freshRate)
	fmt.Fprintf(w, "| members | path | events | p50 ms | p99 ms | max ms | p50 ÷ floor | p99 ÷ floor | not shown in %s |\n|---|---|---|---|---|---|---|---|---|\n", freshTimeout)
	for _, r := range rs {
		f := r.fresh
		row := func(name string, s Summary, miss int) {
			fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s | %s | %d |\n", thousands(int64(r.members)), name, f.n, ms(s.Median), ms(s.P99), ms(s.Max),
				ratio(float64(s.Median), float64(f.floor.Median)), ratio(float64(s.P99), float64(f.floor.P99)), miss)
		}
		row("floor: Kafka produce → consume", f.floor, 0)
		row("POS purchase → points change on a Subscribe stream", f.points, f.missPoints)
		row("POS purchase → labels in `GetProfile`", f.profile, f.missProfile)
		row("POS purchase → new row in ClickHouse `member_profiles`", f.ch, f.missCH)
	}

	fmt.Fprintf(w, "\n### APIs\n\nAfter the freshness run: open loop at %d req/s for %s each (latency from the intended send time), %d of the generator's shoppers, beside `grpc.health.v1.Health/Check` on the same server (the floor).\n\n", apiRate, apiDuration, apiShoppers)
	fmt.Fprintf(w, "| members | RPC | achieved req/s | p50 ms | p99 ms | errors | p50 ÷ floor | p99 ÷ floor |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		floor := r.api[0].sum
		for _, a := range r.api {
			fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s | %d | %.1f× | %.1f× |\n", thousands(int64(r.members)), a.rpc, a.achieved,
				ms(a.sum.Median), ms(a.sum.P99), a.errs, float64(a.sum.Median)/float64(floor.Median), float64(a.sum.P99)/float64(floor.P99))
		}
	}
	fmt.Fprintf(w, "\nGOMAXPROCS %d; membercenter runs every stage and service in one process, beside PostgreSQL, Kafka and ClickHouse on the same cores.\n", runtime.GOMAXPROCS(0))
}
