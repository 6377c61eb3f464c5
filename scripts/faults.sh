#!/usr/bin/env bash
# The fault suite (make faults): the platform as separate serve and pipeline
# processes under a workload, with processes killed and the servers
# restarted (services/faultsuite). It restarts the PostgreSQL, Kafka and
# ClickHouse that scripts/deps.sh starts, so nothing else may use them
# meanwhile. The report goes into BENCHMARKS.md's Reliability section.
# MC_FAULT_SERVERS=off skips the server restarts (processes only).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/deps.sh >/dev/null
mkdir -p .bin
report="$root/.bin/faults-report.md"
rm -f "$report"
status=0
MC_FAULT_SUITE=1 MC_FAULT_REPORT="$report" MC_FAULT_LOGS="$root/.bin/faults-logs" \
  go test -count=1 -timeout 20m -run TestFaultSuite -v ./services/faultsuite/ || status=$?
# The servers are left running, whatever happened.
scripts/deps.sh >/dev/null
if [[ -f "$report" && "${MC_FAULT_SERVERS:-}" != off ]]; then
  section="$(mktemp)"
  {
    echo "<!-- reliability:begin (scripts/faults.sh writes this section) -->"
    echo "## Reliability: the fault suite (issue 12)"
    echo
    echo "\`make faults\` on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1024/1024}' /proc/meminfo), $(date -u +%Y-%m-%d): \`serve\` and two \`pipeline\` instances (one consumer group, static members) as separate processes, 40 channel events/s over Kafka and 8 RPCs/s (Commit, Adjust, Redeem) whose clients retry with the same idempotency key, three live Subscribe streams that resume with their token, while the faults below are injected one after another. Process logs: \`.bin/faults-logs/\`."
    echo
    cat "$report"
    echo "<!-- reliability:end -->"
  } >"$section"
  python3 - "$root/BENCHMARKS.md" "$section" <<'PY'
import re, sys
path, section = sys.argv[1], open(sys.argv[2]).read()
text = open(path).read()
pattern = re.compile(r"<!-- reliability:begin.*?<!-- reliability:end -->\n?", re.S)
text = pattern.sub(lambda m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
  rm -f "$section"
  echo "faults: report written to BENCHMARKS.md (Reliability)"
fi
exit "$status"
