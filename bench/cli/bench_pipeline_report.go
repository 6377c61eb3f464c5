package cli

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/membercenter/membercenter/bench/floor"
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
	fmt.Fprintf(w, "Members: each scenario's database (`membercenter_pipeline_<members>`) holds the generator's shoppers, each preloaded with its phone as a retailer's existing member base (COPY of what `identity` stores, once; later runs reuse it). Each run works on a fresh copy of it (`membercenter_pipeline_<members>_run`, `CREATE DATABASE … TEMPLATE`), so what a run adds is not carried into the next. Before 2026-12-06 the runs added their events to the database itself, and the heaviest shoppers' states and open lots grew run after run. ClickHouse gets a database of the scenario's own (`<MC_CLICKHOUSE_DB>_pipeline_<members>`), dropped and created anew each run: before 2026-12-07 the runs shared one, where an earlier run's profile row of the same member and version stood for a new one.\n\n")
	fmt.Fprintf(w, "The copy first drains one pass of the workload of the day before unmeasured (its span ends a day earlier: the same shoppers buy what they bought, a day earlier in the week, under other event ids), so the measured pass meets members with feature state, ledgers and labels, as a running platform does, and every run, on any day, meets a history one day behind its records. Until 2026-12-08 the history was the workload of the day the database was built, drained into it once: a run on that day replayed its history at the same instants, which moved few labels (106,337 label changes for 20,000 events at 100,000 members), while a run on any later day moved twelve times as many and drained at half the rate with the same binary. The databases in use on 2026-12-07 were built that day: the figures of that day in this file were measured on the database's own day and flatter the pipeline by about two (earlier days' figures may be of either kind).\n\n")
	fmt.Fprintf(w, "Labels that change with the clock alone (a window ends, a day begins: 16:00 UTC is midnight in Shanghai) are recomputed by a running platform's sweeper. A run that finds members due after the warm-up (a day may have begun during it) first lets a platform with no new events bring them up to date, unmeasured, so that the drain measures the events and not the day's recompute.\n\n")
	fmt.Fprintf(w, "| members | preloaded (this run) | unmeasured warm-up pass | members due for the sweeper, brought up to date unmeasured | events ingested before the measured pass | members in the database after the run |\n|---|---|---|---|---|---|\n")
	for _, r := range rs {
		loaded := "present"
		if r.preload.loaded > 0 {
			loaded = fmt.Sprintf("%s loaded in %s", thousands(int64(r.preload.loaded)), r.preload.took.Round(time.Second))
		}
		warm := fmt.Sprintf("drained in %s", r.warmUp.Round(100*time.Millisecond))
		swept := "none"
		if r.due > 0 {
			swept = fmt.Sprintf("%s in %s", thousands(int64(r.due)), r.catchUp.Round(100*time.Millisecond))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", thousands(int64(r.members)), loaded, warm, swept, thousands(int64(r.history)), thousands(int64(r.dbMembers)))
	}

	fmt.Fprintf(w, "\n### Throughput\n\n%d records per scenario (the generator's mix, malformed ones included), published before the platform starts, so the pipeline drains a backlog at its own pace. The pipeline's time runs from the platform's start (its consumer groups' joins included) to its last durable effect: when the platform's own counters of records handled and changes published (`mc.stage.records`, `mc.relay.published`, read in this process every 100 ms) last moved, once every stage's group has committed every offset (the sink's of the relay's changes too) and the counts in PostgreSQL and ClickHouse are complete (offsets are committed every second, after the effects, so the commits alone read a drain up to a second long). Floors, same records, same run, same servers, one after the other before the pipeline starts:\n\n", o.events)
	fmt.Fprintf(w, "- **consume → ClickHouse**: a plain franz-go consume → clickhouse-go batch insert, no logic;\n")
	fmt.Fprintf(w, "- **PG upsert**: one autocommitted PostgreSQL upsert per record into an unlogged table, four writers;\n")
	fmt.Fprintf(w, "- **exactly-once batch** (issue 14): what a stage must do durably and exactly once, done in batches — a consumer group (franz-go, offsets committed to Kafka only after the effects), and per polled partition batch (the topic's partitions concurrently) one PostgreSQL transaction on logged tables: the batch's event ids claimed in one `INSERT … SELECT unnest($1) ON CONFLICT DO NOTHING RETURNING event_id`, the states of its members (a 2 KB bytea each) loaded and locked once in one `SELECT … WHERE member_id = ANY($1) ORDER BY member_id FOR UPDATE`, the new events applied to them in Go, the states written back in one multi-row `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE`, one append-only ledger row and one outbox row per event in one multi-row insert each, then COMMIT (synchronous);\n")
	fmt.Fprintf(w, "- **in-memory state** (issue 14): the same consumption, but the worker owning a partition keeps its members' 2 KB states in memory (loaded once, on first sight, one query per batch), applies each record there, and every 100 ms (or 10,000 records, or when caught up) writes the changed states behind in one multi-row upsert together with the partition's next offset, in one transaction; on assignment a partition resumes from that stored offset, the exactly-once mark, so it keeps no processed ids (and writes no ledger or outbox rows).\n\n")
	fmt.Fprintf(w, "Both exactly-once floors take a record's event id from its value (a ChannelEvent's `event_id`, or the record's position when it has none) and its member from its key, so they touch one member per distinct record key (the pipeline resolves keys to the shoppers behind them); every member starts with a 2 KB state (copied in before the clock starts), and each floor's totals are checked (every record applied once) before its figure counts. `bench/floor`'s test stops each floor half-way through a topic and checks that a restart applies every record exactly once. Each drains the records %d times (new tables and consumer group each time): its events/s are the median round's, from the first record received to the last effect durable (the group's join left out), and its CPU the average of the rounds, each over the whole drain. Issue 14's target is the whole pipeline at ≥ 0.2× the exactly-once batch floor.\n\n", floorRounds)
	fmt.Fprintf(w, "| members | events (malformed) | pipeline events/s | floor: consume → ClickHouse events/s | floor: PG upsert events/s | floor: exactly-once batch events/s | floor: in-memory state events/s | ÷ ClickHouse floor | ÷ PG floor | ÷ exactly-once batch floor | ÷ in-memory state floor | drained in | malformed records in the dead-letter topic | other dead letters |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(w, "| %s | %d (%d) | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s | %d of %d | %d |\n",
			thousands(int64(r.members)), r.events, r.malformed, r.rate, r.chFloor, r.pgFloor, r.eo.batch.Rate(), r.eo.mem.Rate(),
			ratio(r.rate, r.chFloor), ratio(r.rate, r.pgFloor), ratio(r.rate, r.eo.batch.Rate()), ratio(r.rate, r.eo.mem.Rate()),
			r.drain.Round(100*time.Millisecond), r.dlqMalformed, r.malformed, r.dlqOther)
	}
	fmt.Fprintf(w, "\nThe exactly-once floors in detail: the members they touched (one per record key) beside the shoppers behind the records, a state's stored size (`pg_column_size`: kept in the row, `STORAGE MAIN`), the transactions of the median round, and CPU per event of this process (the floor's client) and PostgreSQL together.\n\n")
	fmt.Fprintf(w, "| members | floor | events/s | members touched (shoppers) | stored state bytes | transactions | events per transaction | client + PostgreSQL CPU ms/event | pipeline ÷ floor | issue 14's target (≥ 0.2×) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		for _, f := range []struct {
			name string
			res  floor.Result
			cpu  cpuSeconds
		}{{"exactly-once batch", r.eo.batch, r.eo.batchCPU}, {"in-memory state, write-behind", r.eo.mem, r.eo.memCPU}} {
			target := "–"
			if f.name == "exactly-once batch" {
				target = "not met"
				if r.rate >= 0.2*f.res.Rate() {
					target = "met"
				}
			}
			perTxn := 0.0
			if f.res.Transactions > 0 {
				perTxn = float64(f.res.Records) / float64(f.res.Transactions)
			}
			fmt.Fprintf(w, "| %s | %s | %.0f | %s (%s) | %.0f | %d | %.0f | %.3f | %s | %s |\n", thousands(int64(r.members)), f.name, f.res.Rate(),
				thousands(int64(r.eo.members)), thousands(int64(r.eo.shoppers)), r.eo.stateBytes, f.res.Transactions, perTxn,
				f.cpu.self+f.cpu.postgres, ratio(r.rate, f.res.Rate()), target)
		}
	}

	fmt.Fprintf(w, "\n### Resources\n\nCPU seconds per 1,000 events of each process (from /proc; membercenter's less what the memory sampler below took in this process, measured per thread) while the pipeline drained, while the two plain floors (consume → ClickHouse, PG upsert) moved the same records (their sum), and while each exactly-once floor did (the floors run in this process, so its row is their client's CPU); peak memory of each process over the scenario (sampled every 2 s during the drain, PostgreSQL every 10 s, whose sampling is dear; every process at the drain's end and after the freshness and API runs; membercenter's own peak from VmHWM; PostgreSQL as the proportional set size summed over its processes, so shared buffers count once) beside the same processes' memory just after the floors ran. membercenter's figure after the floors is this process before the measured platform starts: the load generator's shopper tables (about 90 MiB per million shoppers), what the warm-up pass's platform left when one ran, and a Go heap allowed to grow to five times its live data between collections (GOGC=400, the binary's default, which trades memory for CPU; GOMEMLIMIT 2 GiB caps it).\n\n")
	fmt.Fprintf(w, "| members | process | CPU s / 1,000 events: pipeline | plain floors | ÷ plain floors | exactly-once batch floor | ÷ exactly-once batch floor | in-memory state floor | ÷ in-memory state floor | peak memory MiB: pipeline | after floors | ÷ after floors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		rows := []struct {
			name             string
			cpu, fl, eo, inm float64
			mem, fmm         int
		}{
			{"membercenter", r.cpu.self, r.floorCPU.self, r.eo.batchCPU.self, r.eo.memCPU.self, r.rss.self, r.floorRSS.self},
			{"PostgreSQL", r.cpu.postgres, r.floorCPU.postgres, r.eo.batchCPU.postgres, r.eo.memCPU.postgres, r.rss.postgres, r.floorRSS.postgres},
			{"Kafka", r.cpu.kafka, r.floorCPU.kafka, r.eo.batchCPU.kafka, r.eo.memCPU.kafka, r.rss.kafka, r.floorRSS.kafka},
			{"ClickHouse", r.cpu.clickhouse, r.floorCPU.clickhouse, r.eo.batchCPU.clickhouse, r.eo.memCPU.clickhouse, r.rss.clickhouse, r.floorRSS.clickhouse},
			{"all four", r.cpu.total(), r.floorCPU.total(), r.eo.batchCPU.total(), r.eo.memCPU.total(), r.rss.self + r.rss.postgres + r.rss.kafka + r.rss.clickhouse,
				r.floorRSS.self + r.floorRSS.postgres + r.floorRSS.kafka + r.floorRSS.clickhouse},
		}
		// /proc counts CPU in ticks: a floor that used none used less than
		// one tick over its events (over all its rounds for the
		// exactly-once floors).
		tick := 1.0 / userHZ / (float64(r.events) / 1000)
		cell := func(cpu, fl, tick float64) (string, string) {
			if fl == 0 {
				return fmt.Sprintf("< %.3f", tick), "> " + ratio(cpu, tick)
			}
			return fmt.Sprintf("%.3f", fl), ratio(cpu, fl)
		}
		for _, x := range rows {
			fl, rat := cell(x.cpu, x.fl, tick)
			eo, eoRat := cell(x.cpu, x.eo, tick/floorRounds)
			inm, inmRat := cell(x.cpu, x.inm, tick/floorRounds)
			fmt.Fprintf(w, "| %s | %s | %.2f | %s | %s | %s | %s | %s | %s | %d | %d | %s |\n", thousands(int64(r.members)), x.name, x.cpu, fl, rat,
				eo, eoRat, inm, inmRat, x.mem, x.fmm, ratio(float64(x.mem), float64(x.fmm)))
		}
	}
	fmt.Fprintf(w, "\nConsumer lag (records behind, summed over partitions) sampled every 2 s while the pipeline drained, per consumer group ingest / members (the benefit and tag stages) / sink; the floors drained the same backlog in the time their events/s above imply:\n\n")
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

	fmt.Fprintf(w, "\n### Freshness\n\nAfter each drain, on the same running platform: %d POS purchases of distinct preloaded shoppers, open loop at %d/s, timed from the intended send time to (a) the purchase's points change on an unfiltered `SyncService.Subscribe` stream (read on the wire: the checker runs in the platform's process, and decoding every change of the run there took about a tenth of its CPU), (b) `GetProfile` showing labels computed after it (every %s a connection reads the pending members' feature-state version, and `GetProfile` is called for those with a new one, up to %d at once), (c) a new version of the member's row in ClickHouse's `member_profiles` (polled every %s). The polls run beside the platform on the same cores, so they are no more frequent than the paths' targets need (a twentieth of each: 500 ms and 2 s); a time is late by up to one interval. The floor is a plain franz-go produce → consume round trip on a scratch topic of the same broker at the same rate, just before.\n\n", o.freshEvents, o.freshRate, versionPoll, freshProfileCallers, chPoll)
	if o.freshFirst {
		fmt.Fprintf(w, "The timed purchase is each shopper's first (`--fresh-first`): the preload stores identifiers only, so the member has no labels yet, and the purchase gives every label of the catalogue its first value — a `LabelsChanged` of about 230 labels on the stream and as many ClickHouse rows.\n\n")
	} else {
		fmt.Fprintf(w, "Each timed shopper first makes one purchase, unmeasured, and the platform is left to settle (every purchase through both member stages, changes published and consumed, labels exported to ClickHouse: %s), so that the timed purchase is of a member with labels, as a retailer's existing members are (the legacy import computes them). The preload stores identifiers only: without it a preloaded member's timed purchase would be its first, which gives every label of the catalogue its first value (a `LabelsChanged` of about 230 labels, and as many ClickHouse rows); `--fresh-first` times that. A shopper whose labels that purchase did not change (behavioural labels withheld) is left out.\n\n", settledTimes(rs))
	}
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
	for _, r := range rs {
		if r.fresh.resyncs > 0 {
			fmt.Fprintf(w, "\n%s members: the hub ended the stream %d times while the checker fell behind (`ResyncRequired`: its queue in the hub full); the checker resumed it each time with its last resume token, so the stream's times include those gaps.\n", thousands(int64(r.members)), r.fresh.resyncs)
		}
	}

	fmt.Fprintf(w, "\nCPU seconds per 1,000 purchases of each process over the freshness run, from the first send to the end of the last path's checker: membercenter's holds the checkers', which run in its process (their `GetProfile` calls and version polls), and PostgreSQL's and ClickHouse's the polls they answer.\n\n")
	fmt.Fprintf(w, "| members | seconds | membercenter and checkers | PostgreSQL | Kafka | ClickHouse | all four |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		c := r.fresh.cpu
		fmt.Fprintf(w, "| %s | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", thousands(int64(r.members)), r.fresh.span.Seconds(), c.self, c.postgres, c.kafka, c.clickhouse, c.total())
	}

	if len(rs) > 0 && len(rs[0].fresh.hops) > 0 {
		fmt.Fprintf(w, "\nWhere the freshness run's time went, by the platform's own histograms (its `/metrics`, read before and after the run; each figure is the histogram bucket the quantile falls in, ms). A stage's time runs from the record it consumed being produced to its effects being durable, so it holds the wait for the batch before and, after ingest, the previous stage's Kafka commit. What follows the relay's commit to the Subscribe stream is the sync hub and the stream.\n\n")
		fmt.Fprintf(w, "| members | hop | records | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|---|\n")
		for _, r := range rs {
			for _, h := range r.fresh.hops {
				fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s |\n", thousands(int64(r.members)), h.name, h.n, bucketMS(h.p50), bucketMS(h.p90), bucketMS(h.p99))
			}
		}
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
	if o.trace {
		fmt.Fprintf(w, "Spans: every span recorded (`--trace`), handed to a batch span processor whose exporter discards them.\n")
	}
}

// settledTimes lists how long each scenario's unmeasured first purchases
// took to settle.
func settledTimes(rs []pipelineResult) string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = fmt.Sprintf("%s at %s members", r.fresh.settled.Round(100*time.Millisecond), thousands(int64(r.members)))
	}
	return strings.Join(out, ", ")
}
