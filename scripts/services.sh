#!/usr/bin/env bash
# Local real services for the integration tests and the demo: a single-node Kafka 4 broker
# (KRaft, broker+controller in one JVM) and a Redis, both bound to 127.0.0.1.
#
#   scripts/services.sh up|down|status [kafka|redis]
#
# Naming one service acts on it alone: the fault tests stop and restart a private stack's broker
# (or Redis) while the other keeps running. `down` keeps the data directory, so topics and
# committed offsets survive a broker restart; only removing MODERATOR_SERVICES_DIR wipes them.
#
# Kafka comes from Maven Central (scripts/kafka/pom.xml) rather than an Apache tarball because
# CI and dev machines reach Maven Central but not the Apache mirrors. Redis comes from Debian.
# Both are started by this script (never systemd) so `down` can stop exactly what `up` started.
#
# Environment:
#   KAFKA_PORT             client listener (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener (default KAFKA_PORT+1)
#   REDIS_PORT             (default 6379)
#   KAFKA_SECURITY         plaintext (default) or sasl_ssl: the broker then also listens for
#                          SASL_SSL (SCRAM-SHA-512 over TLS) on KAFKA_SECURE_PORT, with a CA and
#                          broker certificate made here; clients trust <state>/tls/ca.pem
#   KAFKA_SECURE_PORT      SASL_SSL listener (default KAFKA_PORT+2)
#   KAFKA_SASL_USER        SCRAM user created at storage format (default moderator)
#   KAFKA_SASL_PASSWORD    its password (default: random, kept in <state>/tls/sasl.password);
#                          credentials are fixed when the storage is formatted
#   KAFKA_VERSION          default: <kafka.version> in scripts/kafka/pom.xml
#   KAFKA_HEAP_OPTS        broker heap (default "-Xms256m -Xmx768m")
#   MODERATOR_CACHE_DIR    downloads (default ~/.cache/moderator; Kafka jars in kafka-<version>/)
#   MODERATOR_SERVICES_DIR runtime state: data, logs, pid files (default <cache>/run)
#   SERVICES_TIMEOUT       seconds `up` waits for each service to answer (default 120)
#   MAVEN_OPTS             e.g. -Dmaven.repo.local=... to move the Maven repository off ~/.m2
#
# Exit codes: 0 ok; 1 failure; 2 usage; 3 `status` with a service not running.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=scripts/lib/apt.sh
source "$SCRIPT_DIR/lib/apt.sh"
KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
KAFKA_READY_SRC=$SCRIPT_DIR/kafka/KafkaReady.java

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_SECURITY=${KAFKA_SECURITY:-plaintext}
KAFKA_SECURE_PORT=${KAFKA_SECURE_PORT:-$((KAFKA_PORT + 2))}
KAFKA_SASL_USER=${KAFKA_SASL_USER:-moderator}
KAFKA_VERSION=${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")}
# The machine has 2 cores and plenty of RAM; a test broker never needs more than this.
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}
# A cold JVM on 2 cores needs ~10-20 s to become ready; leave headroom for loaded CI runners.
SERVICES_TIMEOUT=${SERVICES_TIMEOUT:-120}
# Kafka's controlled shutdown usually takes a few seconds; after this we SIGKILL.
STOP_TIMEOUT=30

CACHE_ROOT=${MODERATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/moderator}
RUN_ROOT=${MODERATOR_SERVICES_DIR:-$CACHE_ROOT/run}
KAFKA_CACHE=$CACHE_ROOT/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_CACHE/libs
# State is per port so two stacks (e.g. a dev one and a CI one) can coexist.
KAFKA_DIR=$RUN_ROOT/kafka-$KAFKA_PORT
REDIS_DIR=$RUN_ROOT/redis-$REDIS_PORT
TLS_DIR=$KAFKA_DIR/tls

say() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: %s\n' "$*" >&2; }
die() {
  printf 'services: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  echo "usage: $0 up|down|status [kafka|redis]" >&2
  exit 2
}

# ---------------------------------------------------------------- generic helpers

port_open() { # PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

port_owner() { # PORT -> "held by NAME pid N" where the kernel tells us (best effort)
  local who=""
  if command -v ss >/dev/null 2>&1; then
    who=$(ss -Hltnp "sport = :$1" 2>/dev/null |
      sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 pid \2/p' | head -n 1)
  elif command -v lsof >/dev/null 2>&1; then
    who=$(lsof -nP -iTCP:"$1" -sTCP:LISTEN 2>/dev/null | awk 'NR == 2 {print $1 " pid " $2}')
  fi
  echo "held by ${who:-an unknown process}"
}

ensure_port_free() { # PORT ENVVAR -> dies when a process we did not start listens on PORT
  port_open "$1" || return 0
  die "port $1 is already in use by a process services.sh did not start ($(port_owner "$1")); stop it or set $2"
}

cmdline_of() { # PID -> its argv joined by spaces ("" if gone)
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
}

wait_exit() { # PID SECONDS -> 0 once PID is gone, 1 if still alive at the deadline
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS >= deadline)) && return 1
    sleep 0.2
  done
}

stop_pid() { # NAME PID
  local name=$1 pid=$2
  kill -TERM "$pid" 2>/dev/null || return 0
  if ! wait_exit "$pid" "$STOP_TIMEOUT"; then
    warn "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$pid" 5 || die "$name (pid $pid) survived SIGKILL"
  fi
}

show_log_tail() { # FILE...
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    warn "---- last lines of $f"
    tail -n 40 "$f" >&2
  done
}

check_outside_repo() { # keep broker data, logs and jars out of the working tree
  local var resolved
  for var in MODERATOR_CACHE_DIR:"$CACHE_ROOT" MODERATOR_SERVICES_DIR:"$RUN_ROOT"; do
    resolved=$(realpath -m "${var#*:}")
    case "$resolved/" in
      "$REPO_ROOT"/*) die "${var%%:*} ($resolved) is inside the repository; pick a path outside it" ;;
    esac
  done
}

lock_state() { # serialise concurrent up/down calls (two shells, CI steps) on the same host
  mkdir -p "$RUN_ROOT"
  exec 9>"$RUN_ROOT/services.lock"
  flock -w 300 9 || die "another services.sh run holds $RUN_ROOT/services.lock"
}

# ---------------------------------------------------------------- prerequisites

require_java() {
  command -v java >/dev/null 2>&1 ||
    die "java not found. Kafka needs a JDK 17+: apt-get install -y openjdk-17-jdk-headless"
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
  [[ -n $major && $major -ge 17 ]] ||
    die "java ${major:-?} is too old; Kafka 4 brokers need 17+: apt-get install -y openjdk-17-jdk-headless"
  # The readiness probe (scripts/kafka/KafkaReady.java) is compiled locally once.
  command -v javac >/dev/null 2>&1 ||
    die "javac not found (java is only a JRE); install a JDK: apt-get install -y openjdk-17-jdk-headless"
}

install_redis() {
  command -v apt-get >/dev/null 2>&1 ||
    die "redis-server not found and apt-get is unavailable; install Redis 7 so 'redis-server' is on PATH"
  say "redis-server not found; installing Debian's redis-server (apt-get)"
  apt_install_quietly redis-server
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after install"
}

# ---------------------------------------------------------------- Kafka

ensure_kafka_libs() {
  # The pom's hash is part of the cache key so editing it (e.g. a log4j bump) re-resolves.
  local pom_sum
  pom_sum=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -f $KAFKA_LIBS/.complete && $(cat "$KAFKA_LIBS/.complete") == "$pom_sum" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 ||
    die "mvn not found; it fetches Kafka from Maven Central once: apt-get install -y maven"
  mkdir -p "$KAFKA_CACHE"
  # Run Maven on a copy so no target/ or other output ever lands in the repository.
  cp "$KAFKA_POM" "$KAFKA_CACHE/pom.xml"
  local partial=$KAFKA_CACHE/libs.partial
  rm -rf "$partial"
  say "resolving Kafka $KAFKA_VERSION + log4j2 from Maven Central (first run only; log: $KAFKA_CACHE/mvn.log)"
  if ! mvn -B -ntp -f "$KAFKA_CACHE/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" \
    -DincludeScope=runtime -DoutputDirectory="$partial" \
    dependency:copy-dependencies >"$KAFKA_CACHE/mvn.log" 2>&1; then
    show_log_tail "$KAFKA_CACHE/mvn.log"
    die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (is Maven Central reachable?)"
  fi
  [[ -f $partial/kafka_2.13-$KAFKA_VERSION.jar ]] || die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
  echo "$pom_sum" >"$partial/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$partial" "$KAFKA_LIBS"
}

kafka_preflight() { # before starting anything: our ports must be ours or free
  kafka_pid >/dev/null && return 0
  ensure_port_free "$KAFKA_PORT" KAFKA_PORT
  ensure_port_free "$KAFKA_CONTROLLER_PORT" KAFKA_CONTROLLER_PORT
  if [[ $KAFKA_SECURITY == sasl_ssl ]]; then
    ensure_port_free "$KAFKA_SECURE_PORT" KAFKA_SECURE_PORT
  fi
}

kafka_pid() { # -> pid of the broker we started on KAFKA_PORT, or return 1
  local pid
  pid=$(cat "$KAFKA_DIR/kafka.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Guard against pid reuse: it must be our broker with our config file.
  [[ $(cmdline_of "$pid") == *kafka.Kafka*"$KAFKA_DIR/server.properties"* ]] || return 1
  echo "$pid"
}

write_kafka_config() {
  mkdir -p "$KAFKA_DIR"
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ $KAFKA_SECURITY == sasl_ssl ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$KAFKA_SECURE_PORT"
    advertised+=",SASL_SSL://127.0.0.1:$KAFKA_SECURE_PORT"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/services.sh on every start; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$KAFKA_DIR/data

# Single node: every internal topic must live with one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
# Fewer internal partitions than the production defaults (50): each one costs startup time
# on a 2-core machine and tests only ever use a handful of groups.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8

# Tests create topics explicitly (topic_factory); the demo may produce before creating.
auto.create.topics.enable=true
num.partitions=3
delete.topic.enable=true
# Consumer groups in tests should assign at once, not after the 3 s production delay.
group.initial.rebalance.delay.ms=0

# A scratch broker: keep disk use small.
log.retention.hours=24
log.segment.bytes=67108864
num.io.threads=4
num.network.threads=2
EOF
  if [[ $KAFKA_SECURITY == sasl_ssl ]]; then
    # The PLAINTEXT listener stays for the readiness probe and broker-internal traffic; the
    # SASL_SSL one is what secured clients use. SCRAM users live in the cluster metadata
    # (added at format time). PEM keystore: unencrypted key, then the certificate chain.
    cat >>"$KAFKA_DIR/server.properties" <<EOF

# KAFKA_SECURITY=sasl_ssl
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker.keystore.pem
ssl.client.auth=none
EOF
  fi
  cat >"$KAFKA_DIR/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/services.sh. Broker log goes to a file; stdout stays for JVM errors. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="file" fileName="$KAFKA_DIR/kafka.log"
                 filePattern="$KAFKA_DIR/kafka.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="20 MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

new_cluster_id() { # 16 random bytes, base64url without padding, like Kafka's Uuid
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    # Kafka refuses ids starting with '-' (they parse as CLI flags).
    [[ $id != -* ]] && break
  done
  echo "$id"
}

format_kafka_storage() {
  local data=$KAFKA_DIR/data
  # Scratch data from another Kafka version may carry a newer metadata.version; drop it.
  if [[ -f $data/meta.properties && $(cat "$KAFKA_DIR/data.version" 2>/dev/null) != "$KAFKA_VERSION" ]]; then
    say "kafka: discarding data formatted by another Kafka version"
    rm -rf "$data"
  fi
  # SCRAM users can only be added at format time here: plaintext-mode data has none.
  if [[ $KAFKA_SECURITY == sasl_ssl && -f $data/meta.properties && ! -f $TLS_DIR/sasl.password ]]; then
    say "kafka: discarding data formatted without SCRAM users (KAFKA_SECURITY=sasl_ssl)"
    rm -rf "$data"
  fi
  [[ -f $data/meta.properties ]] && return 0
  local -a scram=()
  if [[ $KAFKA_SECURITY == sasl_ssl ]]; then
    local password
    password=$(sasl_password)
    scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$password]")
  fi
  say "kafka: formatting storage in $data"
  if ! java -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" -cp "$KAFKA_LIBS/*" \
    kafka.tools.StorageTool format -t "$(new_cluster_id)" "${scram[@]}" \
    -c "$KAFKA_DIR/server.properties" --ignore-formatted >>"$KAFKA_DIR/kafka.out" 2>&1; then
    show_log_tail "$KAFKA_DIR/kafka.out"
    die "kafka storage format failed"
  fi
  echo "$KAFKA_VERSION" >"$KAFKA_DIR/data.version"
}

sasl_password() { # -> the SCRAM password to format with, recorded (0600) in $TLS_DIR/sasl.password
  local password=${KAFKA_SASL_PASSWORD:-}
  if [[ -z $password ]]; then
    password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
  fi
  # --add-scram parses name=value pairs inside [...]: keep those characters out.
  [[ $password =~ ^[A-Za-z0-9._~-]+$ ]] ||
    die "KAFKA_SASL_PASSWORD may only contain letters, digits and . _ ~ -"
  [[ $KAFKA_SASL_USER =~ ^[A-Za-z0-9._~-]+$ ]] ||
    die "KAFKA_SASL_USER may only contain letters, digits and . _ ~ -"
  (umask 077 && printf '%s\n' "$password" >"$TLS_DIR/sasl.password")
  echo "$password"
}

ensure_tls_material() { # a throwaway CA and a broker certificate for 127.0.0.1, made once
  [[ -f $TLS_DIR/broker.keystore.pem && -f $TLS_DIR/ca.pem ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl not found; KAFKA_SECURITY=sasl_ssl needs it"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  local log=$TLS_DIR/openssl.log
  say "kafka: creating a test CA and broker certificate in $TLS_DIR"
  (
    cd "$TLS_DIR"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=moderator test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "authorityKeyIdentifier=keyid" "subjectKeyIdentifier=hash" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.pem
    cat broker.key broker.pem ca.pem >broker.keystore.pem
    chmod 644 ca.pem
  ) >"$log" 2>&1 || {
    show_log_tail "$log"
    die "could not create TLS material in $TLS_DIR"
  }
}

ensure_ready_probe() {
  # Compiled once per source version: the source launcher would recompile against the whole
  # 43 MB classpath on every `up` (~5 s on 2 cores, versus ~1 s to run the class).
  local sum
  sum=$(sha256sum "$KAFKA_READY_SRC" | cut -d' ' -f1)
  PROBE_CLASSES=$KAFKA_CACHE/ready-probe/$sum
  [[ -f $PROBE_CLASSES/KafkaReady.class ]] && return 0
  rm -rf "$KAFKA_CACHE/ready-probe"
  mkdir -p "$PROBE_CLASSES.partial"
  javac -nowarn -cp "$KAFKA_LIBS/kafka-clients-$KAFKA_VERSION.jar" -d "$PROBE_CLASSES.partial" \
    "$KAFKA_READY_SRC" || die "could not compile $KAFKA_READY_SRC"
  mv "$PROBE_CLASSES.partial" "$PROBE_CLASSES"
}

kafka_ready() { # SECONDS -> 0 once the broker answers a metadata request
  ensure_ready_probe
  # C1-only JIT: this JVM lives ~1 s, so full tiered compilation is pure startup cost.
  java -XX:TieredStopAtLevel=1 -Dlog4j2.level=OFF -cp "$PROBE_CLASSES:$KAFKA_LIBS/*" \
    KafkaReady "127.0.0.1:$KAFKA_PORT" "$1"
}

kafka_fail() { # PID MESSAGE
  warn "kafka: $2"
  show_log_tail "$KAFKA_DIR/kafka.out" "$KAFKA_DIR/kafka.log"
  if [[ -n $1 ]]; then # a broker we just started and gave up on: don't leave it half-up
    stop_pid kafka "$1"
    rm -f "$KAFKA_DIR/kafka.pid"
  fi
  die "kafka did not start (state: $KAFKA_DIR)"
}

kafka_up() {
  local pid
  if pid=$(kafka_pid); then
    say "kafka already running (pid $pid, 127.0.0.1:$KAFKA_PORT)"
    kafka_ready "$SERVICES_TIMEOUT" >/dev/null || kafka_fail "" "running but not answering metadata requests"
    return 0
  fi
  kafka_preflight
  ensure_kafka_libs
  case "$KAFKA_SECURITY" in
    plaintext) ;;
    sasl_ssl) ensure_tls_material ;;
    *) die "KAFKA_SECURITY must be plaintext or sasl_ssl, not '$KAFKA_SECURITY'" ;;
  esac
  write_kafka_config
  format_kafka_storage

  say "kafka $KAFKA_VERSION: starting on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT)"
  local -a jvm_opts
  read -r -a jvm_opts <<<"$KAFKA_HEAP_OPTS"
  jvm_opts+=(
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml"
    -Dkafka.logs.dir="$KAFKA_DIR"
  )
  # setsid: own session, so the broker outlives the calling shell / CI step and ignores its
  # SIGHUP. Without job control the child is no group leader, so setsid execs in place and $!
  # is the JVM's pid. 9>&-: the broker must not inherit (and so keep holding) the state lock.
  (cd "$KAFKA_DIR" && exec setsid java "${jvm_opts[@]}" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/kafka.out" 2>&1 </dev/null 9>&-) &
  pid=$!
  echo "$pid" >"$KAFKA_DIR/kafka.pid"
  echo "$KAFKA_VERSION" >"$KAFKA_DIR/kafka.version"

  local deadline=$((SECONDS + SERVICES_TIMEOUT))
  until port_open "$KAFKA_PORT"; do
    kill -0 "$pid" 2>/dev/null || kafka_fail "$pid" "broker process exited during startup"
    ((SECONDS < deadline)) || kafka_fail "$pid" "port $KAFKA_PORT not open after ${SERVICES_TIMEOUT}s"
    sleep 0.5
  done
  kafka_pid >/dev/null || kafka_fail "$pid" "pid $pid is not the broker (unexpected process layout)"
  local left=$((deadline - SECONDS))
  ((left >= 10)) || left=10
  kafka_ready "$left" >/dev/null || kafka_fail "$pid" "broker did not answer a metadata request"
  say "kafka ready at 127.0.0.1:$KAFKA_PORT (pid $pid, log $KAFKA_DIR/kafka.log)"
  if [[ $KAFKA_SECURITY == sasl_ssl ]]; then
    say "kafka SASL_SSL (SCRAM-SHA-512, user $KAFKA_SASL_USER) at 127.0.0.1:$KAFKA_SECURE_PORT;" \
      "CA $TLS_DIR/ca.pem, password in $TLS_DIR/sasl.password"
  fi
}

kafka_down() {
  local pid
  if pid=$(kafka_pid); then
    say "kafka: stopping pid $pid"
    stop_pid kafka "$pid"
    say "kafka stopped"
  else
    say "kafka not running on port $KAFKA_PORT"
  fi
  rm -f "$KAFKA_DIR/kafka.pid"
}

kafka_status() { # -> 0 when running
  local pid version
  version=$(cat "$KAFKA_DIR/kafka.version" 2>/dev/null || echo "$KAFKA_VERSION")
  if pid=$(kafka_pid); then
    if port_open "$KAFKA_PORT"; then
      echo "kafka  running   pid=$pid port=$KAFKA_PORT version=$version"
      return 0
    fi
    echo "kafka  starting  pid=$pid port=$KAFKA_PORT version=$version (port not open yet)"
    return 1
  fi
  echo "kafka  stopped   port=$KAFKA_PORT version=$KAFKA_VERSION"
  return 1
}

# ---------------------------------------------------------------- Redis

redis_request() { # PORT COMMAND -> reply lines (inline protocol over bash /dev/tcp)
  # shellcheck disable=SC2016 # the inner script expands its own positional args
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "%s\r\nQUIT\r\n" "$2" >&3
    tr -d "\r" <&3
  ' _ "$1" "$2" 2>/dev/null
}

redis_preflight() {
  redis_pid >/dev/null && return 0
  ensure_port_free "$REDIS_PORT" REDIS_PORT
}

redis_pid() { # -> pid of the redis we started on REDIS_PORT, or return 1
  local pid
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Redis rewrites its process title to "redis-server 127.0.0.1:PORT".
  [[ $(cmdline_of "$pid") == *redis-server*":$REDIS_PORT"* ]] || return 1
  echo "$pid"
}

redis_up() {
  local pid
  if pid=$(redis_pid); then
    say "redis already running (pid $pid, 127.0.0.1:$REDIS_PORT)"
    return 0
  fi
  redis_preflight
  command -v redis-server >/dev/null 2>&1 || install_redis
  mkdir -p "$REDIS_DIR"
  rm -f "$REDIS_DIR/redis.pid"
  say "redis: starting on 127.0.0.1:$REDIS_PORT"
  # No persistence: this Redis holds test/demo scratch state only.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --save '' --appendonly no --dir "$REDIS_DIR" \
    --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    </dev/null 9>&- || {
    show_log_tail "$REDIS_DIR/redis.log"
    die "redis-server failed to start"
  }
  local deadline=$((SECONDS + SERVICES_TIMEOUT))
  until [[ $(redis_request "$REDIS_PORT" PING) == +PONG* ]] && redis_pid >/dev/null; do
    if ((SECONDS >= deadline)); then
      show_log_tail "$REDIS_DIR/redis.log"
      pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null) && stop_pid redis "$pid"
      die "redis did not answer PING within ${SERVICES_TIMEOUT}s"
    fi
    sleep 0.2
  done
  say "redis ready at 127.0.0.1:$REDIS_PORT (pid $(redis_pid), log $REDIS_DIR/redis.log)"
}

redis_down() {
  local pid
  if pid=$(redis_pid); then
    say "redis: stopping pid $pid"
    stop_pid redis "$pid"
    say "redis stopped"
  else
    say "redis not running on port $REDIS_PORT"
  fi
  rm -f "$REDIS_DIR/redis.pid"
}

redis_status() { # -> 0 when running
  local pid version
  if pid=$(redis_pid); then
    version=$(redis_request "$REDIS_PORT" "INFO server" | sed -n 's/^redis_version://p')
    if [[ -n $version ]]; then
      echo "redis  running   pid=$pid port=$REDIS_PORT version=$version"
      return 0
    fi
    echo "redis  starting  pid=$pid port=$REDIS_PORT (not answering yet)"
    return 1
  fi
  echo "redis  stopped   port=$REDIS_PORT"
  return 1
}

# ---------------------------------------------------------------- main

main() {
  [[ $# -ge 1 && $# -le 2 ]] || usage
  local only=${2:-all}
  case "$only" in all | kafka | redis) ;; *) usage ;; esac
  local kafka=0 redis=0
  [[ $only == redis ]] || kafka=1
  [[ $only == kafka ]] || redis=1
  check_outside_repo
  case "$1" in
    up)
      lock_state
      ((kafka)) && require_java
      # Check every port first so a conflict cannot leave one service half-started.
      ((kafka)) && kafka_preflight
      ((redis)) && redis_preflight
      ((kafka)) && ensure_kafka_libs
      ((redis)) && redis_up
      ((kafka)) && kafka_up
      ;;
    down)
      lock_state
      ((kafka)) && kafka_down
      ((redis)) && redis_down
      ;;
    status)
      local rc=0
      if ((kafka)); then kafka_status || rc=3; fi
      if ((redis)); then redis_status || rc=3; fi
      exit "$rc"
      ;;
    *) usage ;;
  esac
  return 0
}

main "$@"
