#!/usr/bin/env bash
# Smoke test of the built binary as an operator runs it: `membercenter
# migrate`, `serve` and `pipeline` as separate processes; grpcurl lists and
# calls the services through reflection; health and readiness answer; a bad
# request gets InvalidArgument naming the field; SIGTERM shuts both down
# cleanly.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/.bin/membercenter}"
tools="$("$root/scripts/tools.sh")"
grpcurl="$tools/grpcurl"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "smoke: FAIL: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done; exit 1; }

# Ports the kernel has free now: a fixed one can be the local end of some
# client's connection (the ephemeral range reaches 60999).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export MC_GRPC_ADDR="127.0.0.1:$(free_port)" MC_ADMIN_ADDR="127.0.0.1:$(free_port)" MC_HTTP_ADDR="127.0.0.1:$(free_port)"
wait_http() { for _ in $(seq 1 150); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

"$bin" migrate >"$work/migrate.log" 2>&1 || fail "migrate"
"$bin" migrate >>"$work/migrate.log" 2>&1 || fail "second migrate (must be idempotent)"

"$bin" serve --services=all >"$work/serve.log" 2>&1 &
pids+=($!); serve_pid=$!
wait_http "http://$MC_ADMIN_ADDR/readyz" || fail "serve never became ready"

list="$("$grpcurl" -plaintext "$MC_GRPC_ADDR" list)"
for svc in membercenter.v1.IdentityService membercenter.v1.ProfileService membercenter.v1.BenefitsService \
           membercenter.v1.SyncService grpc.health.v1.Health grpc.reflection.v1.ServerReflection; do
  grep -qx "$svc" <<<"$list" || fail "grpcurl list lacks $svc: $list"
done
echo "smoke: grpcurl list shows every service"

health="$("$grpcurl" -plaintext -d '{"service":"membercenter.v1.IdentityService"}' "$MC_GRPC_ADDR" grpc.health.v1.Health/Check)"
grep -q SERVING <<<"$health" ||
  fail "health check"

set +e
bad="$("$grpcurl" -plaintext -d '{"identifiers":[],"channel":"CHANNEL_POS","idempotency_key":"k"}' \
  "$MC_GRPC_ADDR" membercenter.v1.IdentityService/Resolve 2>&1)"
set -e
grep -q "InvalidArgument" <<<"$bad" && grep -q "identifiers" <<<"$bad" || fail "bad request answered: $bad"
echo "smoke: invalid Resolve → InvalidArgument naming the field"

phone="139$(printf '%08d' $((RANDOM * RANDOM % 100000000)))"
ok="$("$grpcurl" -plaintext -d "{\"identifiers\":[{\"type\":\"IDENTIFIER_TYPE_PHONE\",\"value\":\"$phone\"}],\"channel\":\"CHANNEL_POS\",\"create_if_missing\":true,\"idempotency_key\":\"smoke-$phone\"}" \
  "$MC_GRPC_ADDR" membercenter.v1.IdentityService/Resolve)"
member="$(sed -n 's/.*"memberId": "\([^"]*\)".*/\1/p' <<<"$ok")"
[[ -n "$member" ]] || fail "Resolve returned no member: $ok"
again="$("$grpcurl" -plaintext -d "{\"identifiers\":[{\"type\":\"IDENTIFIER_TYPE_PHONE\",\"value\":\"$phone\"}],\"channel\":\"CHANNEL_POS\",\"create_if_missing\":true,\"idempotency_key\":\"smoke-$phone\"}" \
  "$MC_GRPC_ADDR" membercenter.v1.IdentityService/Resolve)"
[[ "$again" == "$ok" ]] || fail "retried Resolve answered differently: $again"
balance="$("$grpcurl" -plaintext -d "{\"member_id\":\"$member\"}" "$MC_GRPC_ADDR" membercenter.v1.BenefitsService/GetBalance)"
grep -q "$member" <<<"$balance" ||
  fail "GetBalance"
echo "smoke: Resolve created member $member; the retry got the same answer"

# Read the whole page first: grep -q closing the pipe early would fail curl.
metrics="$(curl -fsS "http://$MC_ADMIN_ADDR/metrics")"
grep -q '^rpc_server_call_duration_seconds\|^rpc_server_duration' <<<"$metrics" ||
  fail "RPC latency metric missing from /metrics"

export MC_ADMIN_ADDR="127.0.0.1:$(free_port)" MC_GRPC_ADDR="127.0.0.1:$(free_port)"
"$bin" pipeline --stages=all >"$work/pipeline.log" 2>&1 &
pids+=($!); pipeline_pid=$!
wait_http "http://$MC_ADMIN_ADDR/readyz" || fail "pipeline never became ready"
echo "smoke: pipeline ready"

if "$bin" serve --services=identity,nope >"$work/bad-flag.log" 2>&1; then fail "unknown service accepted"; fi
grep -q 'unknown service "nope"' "$work/bad-flag.log" || fail "unknown service error: $(cat "$work/bad-flag.log")"

for p in $serve_pid $pipeline_pid; do
  kill -TERM "$p"
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then fail "process $p did not stop within 10s of SIGTERM"; fi
  wait "$p" || fail "process $p exited with status $?"
done
echo "smoke: ok"
