#!/usr/bin/env bash
# Runs the unit and integration tests with the test clock pinned to each of
# the dates the calendar rules care about (a weekday, a weekend, a month end,
# 29 February, 31 December), so that no test depends on the day it runs.
# Usage: scripts/testdates.sh [go test flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
MODULES=(./proto/... ./storage/... ./pipeline/... ./services/... ./bench/...)
DATES=(
	2026-03-18T12:00:00+08:00 # a Wednesday
	2026-12-05T10:30:00+08:00 # a Saturday
	2026-04-30T23:59:30+08:00 # the last seconds of a month
	2028-02-29T12:00:00+08:00 # a leap day
	2026-12-31T23:59:30+08:00 # the last seconds of a year
)
failed=()
for d in "${DATES[@]}"; do
	echo "== MC_TEST_CLOCK=$d"
	if ! MC_TEST_CLOCK="$d" go test -count=1 -timeout 30m "$@" "${MODULES[@]}"; then
		failed+=("$d")
	fi
done
if ((${#failed[@]})); then
	echo "testdates: FAILED at ${failed[*]}" >&2
	exit 1
fi
echo "testdates: ok at ${#DATES[@]} dates"
