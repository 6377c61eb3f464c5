#!/usr/bin/env bash
# Regenerates the Go API and the HTTP/JSON API's OpenAPI document in
# proto/gen from proto/membercenter/v1 with the pinned tools, after linting
# the schema and checking the vendored validate.proto against the
# protovalidate Go module.
#
#   scripts/gen.sh          regenerate in place
#   scripts/gen.sh --check  regenerate into a scratch copy and fail if the
#                           committed code differs, or if the schema breaks
#                           its wire or JSON compatibility with the last
#                           commit (CI and `make test` run this)
#
# The compatibility check (`buf breaking`, rules in proto/buf.yaml) compares
# what changed since the last commit: the working tree against HEAD when
# proto/ has uncommitted changes (a developer before committing), otherwise
# HEAD against its parent (CI on a fresh clone: the commit under test). A CI
# job checking a whole branch sets MC_BUF_AGAINST to a buf input, e.g.
# MC_BUF_AGAINST='.git#branch=origin/main,subdir=proto' (relative to the
# repository root). A shallow clone without the parent commit fails the
# check: fetch with --depth=2 or more.
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

# breaking_against runs buf breaking in the current directory against the
# input MC_BUF_AGAINST names or, by default, the last commit (see above).
breaking_against() {
  local against="${MC_BUF_AGAINST:-}"
  if [[ -n "$against" ]]; then
    [[ "$against" == .git* ]] && against="$root/$against"
  else
    if ! git -C "$root" rev-parse --verify -q HEAD >/dev/null; then
      echo "gen.sh --check: not a git checkout with commits; compatibility check skipped"
      return
    fi
    local ref=HEAD
    if [[ -z "$(git -C "$root" status --porcelain -- proto)" ]]; then
      ref=HEAD~1
      if ! git -C "$root" rev-parse --verify -q HEAD~1 >/dev/null; then
        if [[ "$(git -C "$root" rev-parse --is-shallow-repository)" == true ]]; then
          echo "gen.sh --check: shallow clone without the parent of HEAD: fetch with --depth=2 or more, or set MC_BUF_AGAINST" >&2
          exit 1
        fi
        echo "gen.sh --check: HEAD is the first commit; compatibility check skipped"
        return
      fi
    fi
    against="$root/.git#ref=$ref,subdir=proto"
  fi
  if ! buf breaking --against "$against"; then
    echo "gen.sh --check: the schema breaks compatibility with ${against#"$root/"} (see above): keep field numbers, names and types, add instead of changing" >&2
    exit 1
  fi
  echo "gen.sh --check: no breaking change against ${against#"$root/"}"
}

cd "$work"
buf lint
buf format --diff --exit-code
if (( check )); then
  breaking_against
fi
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
