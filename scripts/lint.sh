#!/usr/bin/env bash
# Formatting, vet, staticcheck, and module hygiene: every module tidy, go.work
# in sync.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
modules=(proto storage pipeline services bench)

unformatted="$(gofmt -l proto/*.go storage pipeline services bench tools)"
if [[ -n "$unformatted" ]]; then
  echo "lint: gofmt needed:" >&2; echo "$unformatted" >&2; exit 1
fi
go vet ./proto/... ./storage/... ./pipeline/... ./services/... ./bench/...
# staticcheck, pinned in tools/staticcheck; checks turned off, each with its
# reason, are in staticcheck.conf.
bin="$("$root/scripts/tools.sh")"
"$bin/staticcheck" ./proto/... ./storage/... ./pipeline/... ./services/... ./bench/...

# go mod tidy must leave no diff (GOFLAGS=-mod=mod lets it resolve siblings
# through their replace directives, as a GOWORK=off build does).
for m in "${modules[@]}" tools/buf tools/gen tools/staticcheck; do
  scratch="$(mktemp -d)"
  cp "$m/go.mod" "$scratch/"; [[ -f "$m/go.sum" ]] && cp "$m/go.sum" "$scratch/"
  (cd "$m" && GOWORK=off go mod tidy >/dev/null 2>&1) || { echo "lint: go mod tidy failed in $m" >&2; exit 1; }
  if ! diff -q "$scratch/go.mod" "$m/go.mod" >/dev/null || ! diff -q "$scratch/go.sum" "$m/go.sum" >/dev/null 2>&1; then
    cp "$scratch/go.mod" "$m/"; [[ -f "$scratch/go.sum" ]] && cp "$scratch/go.sum" "$m/"
    echo "lint: $m is not tidy; run (cd $m && GOWORK=off go mod tidy)" >&2; exit 1
  fi
  rm -rf "$scratch"
done
# Each app module builds on its own, through its replace directives.
for m in "${modules[@]}"; do
  (cd "$m" && GOWORK=off go build ./...)
done
echo "lint: ok"
