#!/usr/bin/env bash
# Installs (when missing) and starts the real servers the platform and its
# tests use, each on loopback with its data under .data/ (git-ignored):
#
#   PostgreSQL 15  Debian package, own cluster     127.0.0.1:${MC_PG_PORT:-55432}
#   Kafka 4.x      jars from Maven Central, KRaft   127.0.0.1:${MC_KAFKA_PORT:-59092}
#   ClickHouse     Debian package (18.16)           127.0.0.1:${MC_CLICKHOUSE_PORT:-59000}
#
#   scripts/deps.sh          install what is missing, start what is not running,
#                            wait until each answers, create topics, print settings
#   scripts/deps.sh stop     stop all three
#   scripts/deps.sh env      print the settings only
#
# Idempotent: a second run with everything up returns in a few seconds.
# Nothing is downloaded from anywhere but Debian's and Maven Central's
# registries.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
data="${MC_DATA_DIR:-$root/.data}"
pg_port="${MC_PG_PORT:-55432}"
kafka_port="${MC_KAFKA_PORT:-59092}"
kafka_ctl_port="${MC_KAFKA_CONTROLLER_PORT:-59093}"
ch_port="${MC_CLICKHOUSE_PORT:-59000}"
ch_http_port="${MC_CLICKHOUSE_HTTP_PORT:-58123}"
pg_bin="/usr/lib/postgresql/15/bin"

# Topics and their partition counts; ordering is per member, so member topics
# are keyed by member id and spread over partitions.
topics=(
  "channel.events.v1:6"
  "member.events.v1:6"
  "member.changes.v1:6"
  "dlq.v1:3"
)

log() { printf '[deps] %s\n' "$*" >&2; }
die() { printf '[deps] error: %s\n' "$*" >&2; exit 1; }

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# as_pg runs a PostgreSQL server binary: the server refuses to run as root.
as_pg() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

apt_install() {
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "$@" >"$data/apt.log" 2>&1; then
    as_root apt-get update >>"$data/apt.log" 2>&1
    as_root apt-get install -y --no-install-recommends "$@" >>"$data/apt.log" 2>&1 ||
      die "apt-get install $* failed; see $data/apt.log"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what did not answer within ${secs}s"
    sleep 0.2
  done
}

install_missing() {
  local pkgs=()
  [[ -x "$pg_bin/postgres" ]] || pkgs+=(postgresql postgresql-contrib)
  command -v psql >/dev/null || pkgs+=(postgresql-client)
  [[ -x /usr/sbin/clickhouse-server ]] || pkgs+=(clickhouse-server)
  command -v clickhouse-client >/dev/null || pkgs+=(clickhouse-client)
  command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || pkgs+=(maven)
  if ((${#pkgs[@]})); then apt_install "${pkgs[@]}"; fi
}

# ---------------------------------------------------------------- PostgreSQL

pg_dir="$data/postgres"
pg_run="$data/postgres-run"

pg_ready() { psql "postgres://membercenter:membercenter@127.0.0.1:$pg_port/membercenter?sslmode=disable" -Atqc 'select 1'; }

start_postgres() {
  if pg_ready >/dev/null 2>&1; then log "postgres: running on :$pg_port"; return; fi
  mkdir -p "$pg_dir" "$pg_run"
  [[ $EUID -eq 0 ]] && chown postgres:postgres "$pg_dir" "$pg_run" && chmod 700 "$pg_dir"
  if [[ ! -f "$pg_dir/PG_VERSION" ]]; then
    log "postgres: initialising cluster in $pg_dir"
    as_pg "$pg_bin/initdb" -D "$pg_dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$data/postgres-init.log" 2>&1 ||
      die "initdb failed; see $data/postgres-init.log"
    cat >>"$pg_dir/postgresql.conf" <<EOF
# Member Center dev/test cluster (scripts/deps.sh)
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg_run'
max_connections = 400
shared_buffers = 512MB
wal_level = logical
max_wal_size = 2GB
log_min_messages = warning
EOF
    cat >"$pg_dir/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
  fi
  # Statement statistics for benchmarks and operators (pg_stat_statements);
  # added to clusters initialised before it was.
  grep -q "^shared_preload_libraries" "$pg_dir/postgresql.conf" ||
    echo "shared_preload_libraries = 'pg_stat_statements'" >>"$pg_dir/postgresql.conf"
  log "postgres: starting on :$pg_port"
  as_pg "$pg_bin/pg_ctl" -D "$pg_dir" -l "$pg_run/postgres.log" -w -t 60 start >/dev/null ||
    die "postgres did not start; see $pg_run/postgres.log"
  as_pg psql -h "$pg_run" -p "$pg_port" -U postgres -d postgres -qAt <<'EOF' >/dev/null
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'membercenter') THEN
    CREATE ROLE membercenter LOGIN CREATEDB PASSWORD 'membercenter';
  END IF;
END $$;
-- Tests drop their databases WITH (FORCE), which must be able to end an
-- autovacuum worker that happens to be in them.
GRANT pg_signal_backend TO membercenter;
-- Tests of deploy/postgres/roles.sql make an owner and an app role of their own.
ALTER ROLE membercenter CREATEROLE;
-- Benchmarks read which statements cost what (database postgres).
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
GRANT pg_read_all_stats TO membercenter;
GRANT EXECUTE ON FUNCTION pg_stat_statements_reset TO membercenter;
SELECT 'CREATE DATABASE membercenter OWNER membercenter'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'membercenter')\gexec
EOF
  wait_for "postgres" 30 pg_ready
}

stop_postgres() {
  if [[ -f "$pg_dir/postmaster.pid" ]]; then
    log "postgres: stopping"
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir" -m fast -w stop >/dev/null || true
  fi
}

# --------------------------------------------------------------------- Kafka

kafka_dir="$data/kafka"
kafka_libs="$kafka_dir/libs"
kafka_pom="$root/scripts/kafka/pom.xml"
kafka_cp="$kafka_libs/*"

kafka_java() { java -Xms128m -Xmx512m -cp "$kafka_cp" "$@"; }

fetch_kafka() {
  local stamp="$kafka_libs/.pom.sha256" want
  want="$(sha256sum "$kafka_pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  log "kafka: resolving jars from Maven Central (scripts/kafka/pom.xml)"
  rm -rf "$kafka_libs" && mkdir -p "$kafka_libs"
  mvn -q -B -f "$kafka_pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$kafka_libs" >"$data/kafka-mvn.log" 2>&1 ||
    die "mvn could not resolve Kafka; see $data/kafka-mvn.log"
  echo "$want" >"$stamp"
}

kafka_pid() { [[ -f "$kafka_dir/kafka.pid" ]] && cat "$kafka_dir/kafka.pid"; }

kafka_running() { local p; p="$(kafka_pid)" && kill -0 "$p" 2>/dev/null; }

start_kafka() {
  if port_open "$kafka_port"; then log "kafka: running on :$kafka_port"; return; fi
  fetch_kafka
  mkdir -p "$kafka_dir/data"
  cat >"$kafka_dir/server.properties" <<EOF
# Member Center dev/test broker (scripts/deps.sh): KRaft, broker+controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$kafka_ctl_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$kafka_ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$kafka_dir/data
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
  cat >"$kafka_dir/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    File:
      name: FILE
      fileName: "$kafka_dir/server.log"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: FILE
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
EOF
  if [[ ! -f "$kafka_dir/data/meta.properties" ]]; then
    log "kafka: formatting KRaft storage"
    kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$kafka_dir/server.properties" >"$data/kafka-format.log" 2>&1 ||
      die "kafka storage format failed; see $data/kafka-format.log"
  fi
  log "kafka: starting on :$kafka_port"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$kafka_dir/log4j2.yaml" \
    -cp "$kafka_cp" kafka.Kafka "$kafka_dir/server.properties" \
    >"$kafka_dir/stdout.log" 2>&1 &
  echo $! >"$kafka_dir/kafka.pid"
  wait_for "kafka" 90 port_open "$kafka_port"
}

topic_cmd() { kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$kafka_port" "$@"; }

create_topics() {
  local existing
  fetch_kafka # TopicCommand's jars, even when the broker was started elsewhere
  wait_for "kafka (topic list)" 60 topic_cmd --list
  existing="$(topic_cmd --list 2>/dev/null)"
  for spec in "${topics[@]}"; do
    local name=${spec%%:*} parts=${spec##*:}
    if ! grep -qx "$name" <<<"$existing"; then
      log "kafka: creating topic $name ($parts partitions)"
      topic_cmd --create --if-not-exists --topic "$name" --partitions "$parts" \
        --replication-factor 1 >/dev/null
    fi
  done
}

stop_kafka() {
  if kafka_running; then
    local p; p="$(kafka_pid)"
    log "kafka: stopping"
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$kafka_dir/kafka.pid"
}

# ---------------------------------------------------------------- ClickHouse

ch_dir="$data/clickhouse"

ch_ready() { clickhouse-client --host 127.0.0.1 --port "$ch_port" -q 'SELECT 1'; }

start_clickhouse() {
  if ch_ready >/dev/null 2>&1; then log "clickhouse: running on :$ch_port"; return; fi
  mkdir -p "$ch_dir"/{data,tmp,user_files,log}
  cat >"$ch_dir/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Member Center dev/test server (scripts/deps.sh). -->
<yandex>
  <logger>
    <level>warning</level>
    <log>$ch_dir/log/server.log</log>
    <errorlog>$ch_dir/log/error.log</errorlog>
    <size>100M</size>
    <count>2</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$ch_port</tcp_port>
  <http_port>$ch_http_port</http_port>
  <max_connections>1024</max_connections>
  <keep_alive_timeout>3</keep_alive_timeout>
  <max_concurrent_queries>200</max_concurrent_queries>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <mark_cache_size>536870912</mark_cache_size>
  <path>$ch_dir/data/</path>
  <tmp_path>$ch_dir/tmp/</tmp_path>
  <user_files_path>$ch_dir/user_files/</user_files_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
EOF
  log "clickhouse: starting on :$ch_port"
  nohup /usr/sbin/clickhouse-server --config-file="$ch_dir/config.xml" >"$ch_dir/stdout.log" 2>&1 &
  echo $! >"$ch_dir/clickhouse.pid"
  wait_for "clickhouse" 60 ch_ready
  clickhouse-client --host 127.0.0.1 --port "$ch_port" -q 'CREATE DATABASE IF NOT EXISTS membercenter'
}

stop_clickhouse() {
  local pidf="$ch_dir/clickhouse.pid" p
  [[ -f "$pidf" ]] || pgrep -f "clickhouse-server --config-file=$ch_dir/config.xml" >"$pidf" 2>/dev/null || true
  if p="$(head -1 "$pidf" 2>/dev/null)" && [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; then
    log "clickhouse: stopping"
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$pidf"
}

# ------------------------------------------------------------------ settings

print_env() {
  cat <<EOF
export MC_PG_URL='postgres://membercenter:membercenter@127.0.0.1:$pg_port/membercenter?sslmode=disable'
export MC_KAFKA_BROKERS='127.0.0.1:$kafka_port'
export MC_CLICKHOUSE_ADDR='127.0.0.1:$ch_port'
export MC_CLICKHOUSE_DB='membercenter'
EOF
}

# one runs start or stop ($1) of one server ($2).
one() {
  case "$2" in
    postgres | kafka | clickhouse) "$1_$2" ;;
    *) die "unknown server $2: postgres, kafka or clickhouse" ;;
  esac
}

main() {
  mkdir -p "$data"
  case "${1:-start}" in
    start)
      install_missing
      # PostgreSQL and ClickHouse start while Kafka's JVM warms up.
      start_kafka
      start_postgres
      start_clickhouse
      create_topics
      print_env | tee "$data/env" ;;
    stop)
      if [[ -n "${2:-}" ]]; then one stop "$2"; return; fi
      stop_kafka
      stop_clickhouse
      stop_postgres ;;
    # One server at a time, for the fault suite (scripts/faults.sh):
    # deps.sh restart postgres|kafka|clickhouse, or stop/start one.
    restart) one stop "${2:?which server}"; one start "$2" ;;
    start-one) one start "${2:?which server}" ;;
    env) print_env ;;
    *) die "usage: $0 [start|stop [server]|restart server|start-one server|env]" ;;
  esac
}

main "$@"
