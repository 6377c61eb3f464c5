#!/usr/bin/env bash
# Runs the benchmark suite against the servers deps.sh starts and rewrites
# BENCHMARKS.md. Every figure is printed beside the raw floor measured in the
# same run on the same servers; the machine is noisy, so read the ratios.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/.bin/membercenter}"
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

commas() { sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta' <<<"$1"; }

latency="$("$bin" bench latency --events "$events" --rate "$rate")"
resolve_cmd=(bench resolve --members "$r_members" --rate "$r_rate" --duration "$r_duration"
  --merges "$r_merges" --merge-concurrency "$r_merge_conc")
resolve="$("$bin" "${resolve_cmd[@]}")"

cat >"$out" <<MD
# Benchmarks

Figures from \`make bench\` (\`scripts/bench.sh\`). Each scenario is measured
beside its raw floor in the same run on the same servers; this machine is
noisy, so compare the ratios, not the absolute numbers.

- Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1024/1024}' /proc/meminfo), $(uname -sr)
- Servers: PostgreSQL 15, Kafka 4.1 (KRaft, one broker), ClickHouse 18.16, all on loopback, started by \`scripts/deps.sh\`
- Date: $(date -u +%Y-%m-%d), commit $(git -C "$root" rev-parse --short HEAD)

## Event → change on a Subscribe stream

Command: \`membercenter bench latency --events $events --rate $rate\`

A POS transaction published to \`channel.events.v1\` travels ingest (validate,
dedupe, resolve in PostgreSQL, Kafka transaction) → \`member.events.v1\` →
benefit worker (ledger, lot, balance and outbox in one PostgreSQL transaction)
→ outbox relay (LISTEN/NOTIFY) → \`member.changes.v1\` → sync hub →
\`SyncService.Subscribe\` stream. Events are published open-loop at a fixed
rate and timed from their intended send time to the arrival of their points
change on the stream. The floor is a plain franz-go produce → consume round
trip on a scratch topic of the same broker, at the same rate, in the same run.

$latency

## Resolve over gRPC with $(commas "$r_members") members (issue 3)

Command: \`membercenter ${resolve_cmd[*]}\`

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
MD
echo "bench: wrote $out"
