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

latency="$("$bin" bench latency --events "$events" --rate "$rate")"

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
MD
echo "bench: wrote $out"
