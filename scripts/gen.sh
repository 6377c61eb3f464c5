#!/usr/bin/env bash
# Regenerates the Go API in proto/gen from proto/membercenter/v1 with the
# pinned tools, after linting the schema and checking the vendored
# validate.proto against the protovalidate Go module.
#
#   scripts/gen.sh          regenerate in place
#   scripts/gen.sh --check  regenerate into a scratch copy and fail if the
#                           committed code differs (CI and `make test` run this)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$("$root/scripts/tools.sh")"
export PATH="$bin:$PATH"

check=0
[[ "${1:-}" == "--check" ]] && check=1

work="$root/proto"
if (( check )); then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  cp -r "$root/proto/." "$scratch/"
  work="$scratch"
fi

cd "$work"
buf lint
buf format --diff --exit-code
buf build third_party/protovalidate --exclude-source-info -o "$work/.validate.binpb"
checkvalidate "$work/.validate.binpb"
rm -f "$work/.validate.binpb"
buf generate

if (( check )); then
  if ! diff -r "$root/proto/gen" "$work/gen"; then
    echo "gen.sh --check: proto/gen is stale; run scripts/gen.sh and commit the result" >&2
    exit 1
  fi
  echo "gen.sh --check: generated code is up to date"
fi
