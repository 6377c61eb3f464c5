#!/usr/bin/env bash
# Runs the benchmark suite (mc-bench, the tooling binary: make mc-bench)
# against the servers deps.sh starts and rewrites BENCHMARKS.md. Every figure is printed beside the raw floor measured in the
# same run on the same servers; the machine is noisy, so read the ratios.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${1:-$root/.bin/mc-bench}")"
out="$root/BENCHMARKS.md"
events="${BENCH_EVENTS:-1000}"
rate="${BENCH_RATE:-200}"
# Issue 3's resolve benchmark: members preloaded once into membercenter_bench
# (reused by later runs), open-loop rate and duration, closed-loop merges.
r_members="${BENCH_RESOLVE_MEMBERS:-1000000}"
r_rate="${BENCH_RESOLVE_RATE:-2000}"
r_duration="${BENCH_RESOLVE_DURATION:-20s}"
r_merges="${BENCH_RESOLVE_MERGES:-2000}"
r_merge_conc="${BENCH_RESOLVE_MERGE_CONCURRENCY:-8}"
# Issue 4's benefits benchmark: warmed members in membercenter_bench, Quote and
# Commit over gRPC, Commit at saturation, direct appliers and the Kafka worker.
b_members="${BENCH_BENEFITS_MEMBERS:-20000}"
b_warm="${BENCH_BENEFITS_WARM:-2000}"
b_rate="${BENCH_BENEFITS_RATE:-2000}"
b_commit_rate="${BENCH_BENEFITS_COMMIT_RATE:-500,2000}"
b_duration="${BENCH_BENEFITS_DURATION:-20s}"
b_events="${BENCH_BENEFITS_EVENTS:-4000}"
b_kafka_events="${BENCH_BENEFITS_KAFKA_EVENTS:-20000}"
# Issue 5's tag / profile benchmark: fresh members of membercenter_bench given
# a history, the tag worker direct and over Kafka, event → label visible,
# GetProfile, and CountSegment over synthetic profiles preloaded once into
# ClickHouse's membercenter_bench (reused by later runs).
t_members="${BENCH_TAGS_MEMBERS:-1500}"
t_history="${BENCH_TAGS_HISTORY:-10}"
t_events="${BENCH_TAGS_EVENTS:-3000}"
t_kafka_events="${BENCH_TAGS_KAFKA_EVENTS:-6000}"
t_vis_rate="${BENCH_TAGS_VISIBILITY_RATE:-100}"
t_vis_events="${BENCH_TAGS_VISIBILITY_EVENTS:-1000}"
t_rate="${BENCH_TAGS_RATE:-500,2000}"
t_duration="${BENCH_TAGS_DURATION:-20s}"
t_profiles="${BENCH_TAGS_PROFILES:-1000000}"
t_segment_runs="${BENCH_TAGS_SEGMENT_RUNS:-30}"

commas() { sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta' <<<"$1"; }

fan_subs="${BENCH_FANOUT_SUBSCRIBERS:-1000,2000,4000}"
fan_events="${BENCH_FANOUT_EVENTS:-100}"
fan_rate="${BENCH_FANOUT_RATE:-20}"
latency_cmd=(latency --events "$events" --rate "$rate" --subscribers "$fan_subs" --fanout-events "$fan_events" --fanout-rate "$fan_rate")
latency="$("$bin" "${latency_cmd[@]}")"
resolve_cmd=(resolve --members "$r_members" --rate "$r_rate" --duration "$r_duration"
  --merges "$r_merges" --merge-concurrency "$r_merge_conc")
resolve="$("$bin" "${resolve_cmd[@]}")"
benefits_cmd=(benefits --members "$b_members" --warm "$b_warm" --rate "$b_rate" --commit-rate "$b_commit_rate"
  --duration "$b_duration" --events "$b_events" --kafka-events "$b_kafka_events")
benefits="$("$bin" "${benefits_cmd[@]}")"
tags_cmd=(tags --members "$t_members" --history "$t_history" --events "$t_events" --kafka-events "$t_kafka_events"
  --visibility-rate "$t_vis_rate" --visibility-events "$t_vis_events" --rate "$t_rate" --duration "$t_duration"
  --profiles "$t_profiles" --segment-runs "$t_segment_runs")
tags="$("$bin" "${tags_cmd[@]}")"
# Issue 7's pipeline scenarios: the load generator's workload at each member
# count, drained by the whole pipeline, beside plain floors.
p_members="${BENCH_PIPELINE_MEMBERS:-10000,100000,1000000}"
p_events="${BENCH_PIPELINE_EVENTS:-20000}"
p_fresh="${BENCH_PIPELINE_FRESH_EVENTS:-6000}"
p_fresh_rate="${BENCH_PIPELINE_FRESH_RATE:-2000}"
# The platform's CPU profile of each drain (the mc-bench process runs it),
# kept beside this file.
p_profiles="docs/profiles"
pipeline_cmd=(pipeline --members "$p_members" --events "$p_events" --fresh-events "$p_fresh" --fresh-rate "$p_fresh_rate"
  --cpuprofile "$p_profiles")
pipeline="$(cd "$root" && "$bin" "${pipeline_cmd[@]}")"
took=$((SECONDS / 60))m$((SECONDS % 60))s

# The fault suite's section (scripts/faults.sh) is kept as it is, and so is
# the history written by hand between runs (the "Later:" sections, the
# legacy import's figures): a run rewrites only what it measures.
reliability="$(sed -n '/^<!-- reliability:begin/,/^<!-- reliability:end -->/p' "$out" 2>/dev/null || true)"
history="$(sed -n '/^<!-- history:begin/,/^<!-- history:end -->/p' "$out" 2>/dev/null || true)"

cat >"$out" <<MD
# Benchmarks

Figures from \`make bench\` (\`scripts/bench.sh\`). Each scenario is measured
beside its raw floor in the same run on the same servers; this machine is
noisy, so compare the ratios, not the absolute numbers.

- Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1024/1024}' /proc/meminfo), $(uname -sr)
- Servers: PostgreSQL 15, Kafka 4.1 (KRaft, one broker), ClickHouse 18.16, all on loopback, started by \`scripts/deps.sh\`
- Date: $(date -u +%Y-%m-%d), commit $(git -C "$root" rev-parse --short HEAD)
- \`make bench\` wrote this file in $took (every section below but the "Later:" sections written by hand between runs, which it keeps, and the fault suite's, in one unattended run, including any preloading)

## Event → change on a Subscribe stream

Command: \`mc-bench ${latency_cmd[*]}\`

A POS transaction published to \`channel.events.v1\` travels ingest (validate,
dedupe, resolve in PostgreSQL, Kafka transaction) → \`member.events.v1\` →
benefit worker (ledger, lots, balance and outbox, one PostgreSQL transaction per partition batch)
→ outbox relay (wakes on the outbox sequence, publishes in batches) → \`member.changes.v1\` → sync hub →
\`SyncService.Subscribe\` stream; the tag worker, the ClickHouse sink and the
profile exporter run beside it on the same two cores. Events are published open-loop at a fixed
rate and timed from their intended send time to the arrival of their points
change on the stream. The floor is a plain franz-go produce → consume round
trip on a scratch topic of the same broker, at the same rate, in the same run.

$latency

## Resolve over gRPC with $(commas "$r_members") members (issue 3)

Command: \`mc-bench ${resolve_cmd[*]}\`

The database \`membercenter_bench\` on the same PostgreSQL server holds
$(commas "$r_members") members, each with a mainland-China mobile number stored as the
identity service stores it (keyed HMAC, AES-GCM ciphertext, masked form),
preloaded once with \`identity.Service.Normalize\` and COPY and reused by later
runs. The IdentityService runs in process behind the production gRPC stack
(otelgrpc, recovery, protovalidate, error translation), built as
\`membercenter serve\` builds it, on loopback. Requests are sent open-loop at
the target rate over four client connections, each in its own goroutine, and
timed from their intended send time, after an unmeasured 3 s warm-up. The
floor is \`grpc.health.v1.Health/Check\` on the same server, client and
connections at the same rate in the same run: the cost of the gRPC stack
alone. \`Resolve\` looks up a random preloaded phone with
\`create_if_missing\` and a fresh idempotency key, so each call is one
PostgreSQL transaction (idempotency check, identifier advisory lock and
lookup, identifier count, idempotency record, commit). Merges fold member
i+1 into member i for pairs no earlier run merged, closed loop.

$resolve

## Benefits: Quote, Commit and the benefit worker (issue 4)

Command: \`mc-bench ${benefits_cmd[*]}\`

Each run takes $(commas "$b_warm") members of \`membercenter_bench\` that have no loyalty
history (the earliest $(commas "$b_members") such members, reusing the resolve benchmark's,
created by COPY when missing) and gives each a history through the service
itself: three \`Commit\`s dated 70, 40 and 10 days ago, so the ledger, lots,
tier inputs, missions and coupons are what the engine wrote and obey the ledger
invariants (checked at the end of the run). The BenefitsService then runs in
process behind the production gRPC stack, built as \`membercenter serve\`
builds it. Open loop at a fixed rate over four client connections, each
request in its own goroutine, timed from its intended send time after an
unmeasured 3 s warm-up: the floor is \`grpc.health.v1.Health/Check\` on the same
server; \`Quote\` evaluates a random 2–3 line basket (a coffee line in three of
ten, ¥20–¥800, server time) for a random warmed member in a read-only
transaction; \`Commit\` applies a fresh order with a fresh idempotency key in one
read-write transaction. The higher Commit rate is above what the machine can
commit, so its row shows what is achieved and how requests fail when offered
more. Then Commit closed loop (16 callers, 10 s) gives the saturation
throughput. The benefit worker's effect path, \`benefits.Service.Apply\` of
Transaction member events partitioned by member over 1, 4 and 8 appliers, is
compared with one autocommitted \`INSERT … ON CONFLICT\` per event at the same
concurrency; the whole Kafka path (the benefit worker as \`platform.Run\` builds
it, over a scratch topic of 6 partitions) with a plain franz-go consume of the
same records. PostgreSQL round trips are counted from the pgx spans of each
request or event; CPU comes from /proc.

$benefits

## Tag / profile engine

Command: \`mc-bench ${tags_cmd[*]}\`

The tag worker's events per second with the full shipped catalogue, directly
(\`tags.Service.Apply\` by 1, 4 and 8 appliers beside a plain PostgreSQL upsert
per event) and over Kafka (the tag worker as \`platform.Run\` builds it beside a
plain franz-go consume); event → label visible in \`GetProfile\` and in
ClickHouse's \`member_profiles\` beside a plain Kafka produce → consume round
trip; \`GetProfile\` beside \`grpc.health.v1.Health/Check\`; and \`CountSegment\`
for a three-label expression over $(commas "$t_profiles") profiles beside
\`SELECT count()\` with and without \`FINAL\`. Each part says what it measures
and what its floor is.

$tags

## Whole pipeline on the load generator's workload, at 10k, 100k and 1M members (issue 7)

Command: \`mc-bench ${pipeline_cmd[*]}\`

\`mc-bench loadgen\`'s deterministic omnichannel retailer (several
identifiers per shopper with deliberate overlaps, Pareto spend, POS / app /
mini-program mix, refunds, redemptions, check-ins, referrals, reviews, sign-ups
and about 1% malformed records) over a database of that many members. The
whole platform (ingest, benefit and tag workers, outbox relay, sync hub,
ClickHouse sink and profile exporter, every gRPC service) runs in one
process. A drain is done when every record is either ingested — with its
benefit and tag effects, its ClickHouse row and every outbox change
published — or dead-lettered. Each part says what its floor is; the CPU
profiles of the drains are in \`$p_profiles/\` (\`go tool pprof -top .bin/mc-bench $p_profiles/pipeline-1000000.pprof\`).

Throughput and CPU are set beside four floors on the same records in the
same run. Two are plain: a Kafka → ClickHouse copy and a PostgreSQL upsert
per record. Two (issue 14, \`bench/floor\`) do the durable, exactly-once work a
stage must do, in batches, as well as Kafka and PostgreSQL allow it: the
*exactly-once batch floor* runs one PostgreSQL transaction per polled
partition batch on logged tables (event ids claimed in bulk, each member's
2 KB state loaded and locked once, written back in one multi-row upsert, a
ledger and an outbox row per event, Kafka offsets committed after), and the
*in-memory state floor* keeps each partition's member states in the worker
that owns the partition and writes the changed ones behind every 100 ms
with the partition's offset in the same transaction. Both are crash-tested:
stopped half-way and restarted, they apply every record exactly once. Issue
14's target for the whole pipeline is at least 0.2× the exactly-once batch
floor.

$pipeline
MD
if [[ -n "$history" ]]; then printf '\n%s\n' "$history" >>"$out"; fi
if [[ -n "$reliability" ]]; then printf '\n%s\n' "$reliability" >>"$out"; fi
echo "bench: wrote $out"
