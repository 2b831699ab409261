#!/usr/bin/env bash
# A local Kafka (KRaft, single node) and PostgreSQL for metrics-flow, without
# Docker: Kafka runs from Maven Central jars, PostgreSQL from Debian's
# packages (scripts/deps.sh installs them).
#
#   scripts/stack.sh start  [kafka|pg]   start (idempotent), print env lines
#   scripts/stack.sh stop   [kafka|pg]   stop (idempotent)
#   scripts/stack.sh status              what runs; exit 0 if all, 3 if not
#   scripts/stack.sh env                 print the env lines only
#   scripts/stack.sh kafka-tool CLASS [ARGS...]
#                                        run a Kafka tool class from the jars,
#                                        e.g. org.apache.kafka.tools.TopicCommand
#   scripts/stack.sh psql [PSQL ARGS...]   psql as PostgreSQL's superuser over
#                                        the stack's unix socket (benchmarks'
#                                        server-side COPY)
#
# `start` and `env` print only `export ...` lines on stdout, so
#   eval "$(scripts/stack.sh start)"
# works; progress goes to stderr. (eval hides a failed start: in CI prefer
#   lines=$(scripts/stack.sh start) && eval "$lines")
#
# Environment:
#   MF_STACK_DIR   state (data, logs, pids)     default $REPO/.stack
#   MF_CACHE_DIR   downloads (jars, m2 repo)    default $REPO/.cache
#   MF_KAFKA_PORT             19092   PLAINTEXT listener
#   MF_KAFKA_CONTROLLER_PORT  19093   KRaft controller listener
#   MF_PG_PORT                15432
#   MF_KAFKA_VERSION          4.3.1   see KAFKA_VERSION_DEFAULT below
#   MF_TLS=1 (on start)       add TLS: Kafka SSL (mTLS) and SASL_SSL (SCRAM)
#                             listeners, PostgreSQL ssl=on; material in
#                             $MF_STACK_DIR/tls
#   MF_KAFKA_SSL_PORT         19094
#   MF_KAFKA_SASL_PORT        19095
#   MF_READY_TIMEOUT          90      seconds to wait for readiness
#
# MF_TLS can change between a stop and a start without wiping anything: the
# SCRAM user is created whenever the storage is formatted, TLS or not.
# Ports and MF_TLS of a running component can't change; `start` says so.
set -euo pipefail

# Newest 4.x whose whole dependency set Maven Central serves. 4.4.0's
# kafka_2.13 is listed there, but its kafka-tools-api/kafka-tools jars are
# not, so it cannot be resolved.
KAFKA_VERSION_DEFAULT=4.3.1
# Kafka 4.3 logs through slf4j 1.7 and ships log4j-core; this is the matching
# slf4j-1.7-to-log4j2 binding (same version as the log4j-core it pulls in).
LOG4J_VERSION=2.25.4
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.6.1

READY_TIMEOUT=${MF_READY_TIMEOUT:-90}   # seconds for Kafka / PostgreSQL to come up
STOP_TIMEOUT=60    # seconds for Kafka's controlled shutdown before SIGKILL

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "stack: $*" >&2; }
die() { log "error: $*"; exit 1; }

abspath() { mkdir -p "$1" && (cd "$1" && pwd); }

STACK=$(abspath "${MF_STACK_DIR:-$REPO/.stack}")
CACHE=$(abspath "${MF_CACHE_DIR:-$REPO/.cache}")
KAFKA_VERSION=${MF_KAFKA_VERSION:-$KAFKA_VERSION_DEFAULT}

KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
KSTATE=$STACK/kafka
PGSTATE=$STACK/pg
TLS_DIR=$STACK/tls

# ---------------------------------------------------------------- settings
# Ports come from the environment, except for a component that is already
# running: then the ports it was started with are the truth (saved in its
# settings file), so `env` and a repeated `start` print what really works.

KAFKA_PORT=${MF_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${MF_KAFKA_CONTROLLER_PORT:-19093}
KAFKA_SSL_PORT=${MF_KAFKA_SSL_PORT:-19094}
KAFKA_SASL_PORT=${MF_KAFKA_SASL_PORT:-19095}
PG_PORT=${MF_PG_PORT:-15432}
TLS=${MF_TLS:-0}
[[ $TLS == 1 ]] || TLS=0
KAFKA_TLS=$TLS
PG_TLS=$TLS

save_settings() { # file var...
    local file=$1 var
    shift
    for var in "$@"; do printf '%s=%q\n' "$var" "${!var}"; done >"$file"
}

# Load a running component's saved settings, warning about explicitly
# requested values that differ (changing them needs a stop first).
adopt_settings() { # file
    local file=$1 line var want envvar
    [[ -f $file ]] || return 0
    while IFS= read -r line; do
        var=${line%%=*}
        want=${!var}
        eval "$line"
        envvar=MF_$var
        [[ $var == *_TLS ]] && envvar=MF_TLS
        if [[ -n ${!envvar:-} && $want != "${!var}" ]]; then
            log "note: running instance has $envvar=${!var}, not $want; stop it first to change that"
        fi
    done <"$file"
}

# ------------------------------------------------------------------ helpers

# A killed daemon stays a zombie until PID 1 reaps it, and kill -0 still
# succeeds on a zombie: look at its state too.
pid_alive() {
    local pid=${1:-} stat
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

port_open() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# PostgreSQL refuses to run as root, so as root everything that touches the
# cluster runs as the postgres OS user; as anyone else, as oneself.
as_pg() {
    if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

# ==================================================================== Kafka

kafka_pid() {
    local pid
    pid=$(cat "$KSTATE/kafka.pid" 2>/dev/null) || return 1
    # A pid file can outlive its process (reboot, kill -9) and the number can
    # be reused: only a JVM running kafka.Kafka counts.
    pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ' kafka\.Kafka ' || return 1
    echo "$pid"
}

kafka_classpath() { echo "$KAFKA_HOME/libs/*"; }

kafka_pom() {
    cat <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.metrics-flow</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- Admin and console tools (TopicCommand, ConsoleProducer, ...). Kafka
         Connect's runtime (Jetty, Jersey) is not needed by them. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# Jars are fetched once per version; the marker is written last, so an
# interrupted download is simply redone.
kafka_fetch() {
    [[ -f $KAFKA_HOME/.complete ]] && return 0
    command -v mvn >/dev/null || die "mvn not found (scripts/deps.sh installs it)"
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)"
    rm -rf "$KAFKA_HOME"
    mkdir -p "$KAFKA_HOME"
    kafka_pom >"$KAFKA_HOME/pom.xml"
    # A repo-local Maven repository: works with an empty or odd ~/.m2, and
    # leaves it alone.
    if ! mvn -q -B -f "$KAFKA_HOME/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_HOME/libs" >"$KAFKA_HOME/mvn.log" 2>&1; then
        tail -n 40 "$KAFKA_HOME/mvn.log" >&2
        die "mvn failed (full log: $KAFKA_HOME/mvn.log)"
    fi
    touch "$KAFKA_HOME/.complete"
}

kafka_log4j_config() { # file level appender-xml
    cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    $3
  </Appenders>
  <Loggers>
    <Root level="$2"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
EOF
}

# Tools print only warnings, to stderr, so their stdout stays parseable.
kafka_write_tools_config() {
    mkdir -p "$KSTATE"
    kafka_log4j_config "$KSTATE/tools-log4j2.xml" warn \
        '<Console name="out" target="SYSTEM_ERR"><PatternLayout pattern="%p %m (%c)%n"/></Console>'
}

kafka_write_configs() {
    kafka_write_tools_config
    kafka_log4j_config "$KSTATE/log4j2.xml" info \
        "<File name=\"out\" fileName=\"$KSTATE/server.log\" append=\"true\">
      <PatternLayout pattern=\"[%d] %p %m (%c)%n\"/>
    </File>"

    local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
    local advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
    local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if ((KAFKA_TLS)); then
        # Bound on 127.0.0.1 but advertised as localhost: the broker cert's
        # SAN holds both, and clients verifying hostnames see "localhost".
        listeners+=",SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT"
        advertised+=",SSL://localhost:$KAFKA_SSL_PORT,SASL_SSL://localhost:$KAFKA_SASL_PORT"
        protocols+=",SSL:SSL,SASL_SSL:SASL_SSL"
    fi
    cat >"$KSTATE/server.properties" <<EOF
# Written by scripts/stack.sh on every start; edits are lost.
process.roles=broker,controller
node.id=1
# A static single-voter quorum: unlike a dynamic one (--standalone), the
# voter's address is not frozen into the metadata log at format time, so the
# controller port can change between runs.
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$KSTATE/data
num.partitions=3
auto.create.topics.enable=true
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumers in tests join a group once; don't make them wait for others.
group.initial.rebalance.delay.ms=0
EOF
    ((KAFKA_TLS)) && kafka_tls_properties >>"$KSTATE/server.properties"
    return 0
}

# Format the metadata log once. The SCRAM user is always added here (it's
# harmless without a SASL listener), so MF_TLS can be switched on and off
# between runs without a re-format.
kafka_format() {
    [[ -f $KSTATE/data/meta.properties ]] && return 0
    local cluster_id
    cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid)
    log "formatting Kafka storage (cluster id $cluster_id)"
    kafka_tool kafka.tools.StorageTool format --cluster-id "$cluster_id" \
        --config "$KSTATE/server.properties" \
        --add-scram 'SCRAM-SHA-256=[name=metrics,password=metrics-secret]' \
        --add-scram 'SCRAM-SHA-512=[name=metrics,password=metrics-secret]' \
        >"$KSTATE/format.log" 2>&1 || { cat "$KSTATE/format.log" >&2; die "formatting Kafka storage failed"; }
}

# Run a Kafka tool class on the cached jars (`kafka-tool` subcommand too).
kafka_tool() {
    java -Xmx512m -Dlog4j2.configurationFile="$KSTATE/tools-log4j2.xml" \
        -cp "$(kafka_classpath)" "$@"
}

kafka_dump_logs() {
    log "---- last 40 lines of $KSTATE/server.log"
    tail -n 40 "$KSTATE/server.log" >&2 2>/dev/null || true
    if [[ -s $KSTATE/stdout.log ]]; then
        log "---- last 40 lines of $KSTATE/stdout.log"
        tail -n 40 "$KSTATE/stdout.log" >&2
    fi
}

# Ready means: the process lives, the PLAINTEXT port accepts connections and
# the broker has logged that it finished starting up (it logs that only after
# the controller has unfenced it, i.e. when it can serve produce/fetch).
# A broker that doesn't get ready is stopped, so that the next `start` starts
# afresh instead of reporting a half-started broker as running.
kafka_wait_ready() { # pid
    local pid=$1 deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! pid_alive "$pid"; then
            rm -f "$KSTATE/kafka.pid"
            kafka_dump_logs
            die "Kafka exited during startup"
        fi
        if port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$KSTATE/server.log" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    kafka_dump_logs
    log "Kafka not ready after ${READY_TIMEOUT}s"
    kafka_stop
    exit 1
}

kafka_start() {
    local pid
    if pid=$(kafka_pid); then
        adopt_settings "$KSTATE/settings"
        log "Kafka already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
        # It may still be starting (a concurrent `start`): wait for it.
        kafka_wait_ready "$pid"
        return 0
    fi
    [[ -f $KSTATE/kafka.pid ]] && log "removing stale Kafka pid file" && rm -f "$KSTATE/kafka.pid"
    command -v java >/dev/null || die "java not found (scripts/deps.sh installs it)"
    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $( ((KAFKA_TLS)) && echo "$KAFKA_SSL_PORT $KAFKA_SASL_PORT"); do
        port_open "$port" && die "port $port is already in use (set MF_KAFKA_*PORT)"
    done

    kafka_fetch
    ((KAFKA_TLS)) && tls_ensure
    kafka_write_configs
    kafka_format

    # A fresh log per run, so the readiness check can't see an old run's line.
    [[ -f $KSTATE/server.log ]] && mv -f "$KSTATE/server.log" "$KSTATE/server.log.1"
    log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
    # setsid: the broker must not die with the calling shell or its job
    # control (CI steps, terminals closing).
    setsid nohup java -Xms256m -Xmx512m -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KSTATE/log4j2.xml" \
        -cp "$(kafka_classpath)" kafka.Kafka "$KSTATE/server.properties" \
        >"$KSTATE/stdout.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$KSTATE/kafka.pid"
    save_settings "$KSTATE/settings" KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_SSL_PORT KAFKA_SASL_PORT KAFKA_TLS
    kafka_wait_ready "$pid"
    log "Kafka ready (pid $pid)"
}

kafka_stop() {
    local pid deadline
    if ! pid=$(kafka_pid); then
        rm -f "$KSTATE/kafka.pid"
        log "Kafka not running"
        return 0
    fi
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if pid_alive "$pid"; then
        log "Kafka still up after ${STOP_TIMEOUT}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while pid_alive "$pid"; do sleep 0.1; done
    fi
    rm -f "$KSTATE/kafka.pid"
    log "Kafka stopped"
}

kafka_status() {
    local pid
    if pid=$(kafka_pid); then
        adopt_settings "$KSTATE/settings" 2>/dev/null
        echo "kafka: running (pid $pid) on 127.0.0.1:$KAFKA_PORT$( ((KAFKA_TLS)) && echo ", SSL localhost:$KAFKA_SSL_PORT, SASL_SSL localhost:$KAFKA_SASL_PORT")"
    else
        echo "kafka: stopped"
        return 3
    fi
}

# =============================================================== PostgreSQL

pg_bindir() {
    local dir
    dir=$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    [[ -x $dir/initdb ]] || die "PostgreSQL server not found in /usr/lib/postgresql (scripts/deps.sh installs it)"
    echo "$dir"
}

pg_running() {
    local pid
    [[ -f $PGSTATE/data/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$PGSTATE/data/postmaster.pid")
    pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]]
}

# The postgres user must be able to walk down to its data directory; name
# the first directory on the way that it can't enter.
pg_check_traversable() {
    ((EUID == 0)) || return 0
    local dir="" part
    local -a parts
    IFS=/ read -ra parts <<<"${STACK#/}"
    for part in "${parts[@]}"; do
        dir+=/$part
        runuser -u postgres -- test -x "$dir" ||
            die "user postgres cannot enter $dir: chmod o+x it, or set MF_STACK_DIR elsewhere (e.g. under /tmp)"
    done
}

pg_init() {
    [[ -f $PGSTATE/data/PG_VERSION ]] && return 0
    log "creating PostgreSQL cluster in $PGSTATE/data"
    mkdir -p "$PGSTATE"
    ((EUID == 0)) && chown postgres: "$PGSTATE"
    # Settings that change between runs (port, TLS) live in stack.conf, which
    # is rewritten on every start and included from postgresql.conf.
    as_pg "$PGBIN/initdb" -D "$PGSTATE/data" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync --no-instructions \
        >"$PGSTATE/initdb.log" 2>&1 || { cat "$PGSTATE/initdb.log" >&2; die "initdb failed"; }
    echo "include 'stack.conf'" | as_pg tee -a "$PGSTATE/data/postgresql.conf" >/dev/null
}

pg_write_configs() {
    local conf hba
    # A test database: durability buys nothing, speed does.
    conf="# Written by scripts/stack.sh on every start; edits are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGSTATE'
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
"
    hba="# Written by scripts/stack.sh on every start; edits are lost.
local   all     postgres          trust
local   all     all               scram-sha-256
"
    if ((PG_TLS)); then
        conf+="$(pg_tls_conf)"$'\n'
        hba+="hostssl all     all 127.0.0.1/32  scram-sha-256"$'\n'
    fi
    # Plain TCP stays allowed with TLS on, so POSTGRESQL_DSN works either way.
    hba+="host    all     all 127.0.0.1/32  scram-sha-256"$'\n'
    echo "$conf" | as_pg tee "$PGSTATE/data/stack.conf" >/dev/null
    echo "$hba" | as_pg tee "$PGSTATE/data/pg_hba.conf" >/dev/null
}

pg_psql() { # as the superuser, over the private unix socket
    as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSTATE" -p "$PG_PORT" -U postgres -d postgres
}

pg_wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; do
        if ((SECONDS >= deadline)); then
            tail -n 40 "$PGSTATE/postgres.log" >&2 || true
            die "PostgreSQL not ready after ${READY_TIMEOUT}s"
        fi
        sleep 0.2
    done
}

# Role and database for the application; ALTER keeps the password right even
# if someone changed it. metrics_limited has no privileges of its own: tests grant
# it row privileges on tables, to run sub the way a least-privilege user would.
pg_provision() {
    pg_psql <<'EOF'
SELECT 'CREATE ROLE metrics' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'metrics')
\gexec
ALTER ROLE metrics LOGIN CREATEDB PASSWORD 'metrics';
SELECT 'CREATE ROLE metrics_limited' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'metrics_limited')
\gexec
ALTER ROLE metrics_limited LOGIN PASSWORD 'limited';
SELECT 'CREATE DATABASE metrics OWNER metrics' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'metrics')
\gexec
EOF
}

pg_start() {
    PGBIN=$(pg_bindir)
    if pg_running; then
        adopt_settings "$PGSTATE/settings"
        log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
        return 0
    fi
    port_open "$PG_PORT" && die "port $PG_PORT is already in use (set MF_PG_PORT)"
    pg_check_traversable
    pg_init
    # A postmaster.pid whose process is gone (kill -9, reboot) would make the
    # server refuse to start if its pid got reused; we know it's dead.
    [[ -f $PGSTATE/data/postmaster.pid ]] && log "removing stale postmaster.pid" && rm -f "$PGSTATE/data/postmaster.pid"
    ((PG_TLS)) && tls_ensure && pg_tls_install
    pg_write_configs
    log "starting PostgreSQL $(basename "$(dirname "$PGBIN")") on 127.0.0.1:$PG_PORT"
    as_pg "$PGBIN/pg_ctl" -D "$PGSTATE/data" -l "$PGSTATE/postgres.log" -w -t "$READY_TIMEOUT" start >/dev/null ||
        { tail -n 40 "$PGSTATE/postgres.log" >&2; die "pg_ctl start failed"; }
    save_settings "$PGSTATE/settings" PG_PORT PG_TLS
    pg_wait_ready
    pg_provision
    log "PostgreSQL ready"
}

pg_stop() {
    if ! pg_running; then
        log "PostgreSQL not running"
        return 0
    fi
    PGBIN=$(pg_bindir)
    log "stopping PostgreSQL"
    as_pg "$PGBIN/pg_ctl" -D "$PGSTATE/data" -m fast -w -t "$STOP_TIMEOUT" stop >/dev/null
    log "PostgreSQL stopped"
}

pg_status() {
    if pg_running; then
        adopt_settings "$PGSTATE/settings" 2>/dev/null
        echo "pg: running (pid $(head -n 1 "$PGSTATE/data/postmaster.pid")) on 127.0.0.1:$PG_PORT$( ((PG_TLS)) && echo ", ssl=on")"
    else
        echo "pg: stopped"
        return 3
    fi
}

# ====================================================================== TLS

# Test material, made once per stack dir with the openssl CLI; every key is
# an unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"), the one form that Kafka's
# PEM stores, librdkafka, OpenSSL and PostgreSQL all read.
#
#   ca.pem / ca.key                 the CA everything below is signed by
#   broker.pem / broker.key         Kafka server cert, SAN localhost, 127.0.0.1
#   broker-keystore.pem             key + cert + CA: Kafka's PEM keystore
#   client.pem / client.key         client cert (CN=metrics-flow-client)
#   client-keystore.pem             key + cert: a Java client's PEM keystore
#   pg.pem / pg.key                 PostgreSQL server cert, same SANs
#   wrong-ca.pem / wrong-ca.key     an unrelated CA, for negative tests
#   wrong-client.pem / .key         a client cert signed by the wrong CA

tls_new_ca() { # name cn
    openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -sha256 \
        -keyout "$1.key" -out "$1.pem" -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign
}

tls_new_leaf() { # name cn ca usage [san]
    local name=$1 cn=$2 ca=$3 usage=$4 san=${5:-}
    openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        echo "subjectKeyIdentifier=hash"
        echo "authorityKeyIdentifier=keyid"
        if [[ -n $san ]]; then echo "subjectAltName=$san"; fi
    } >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
        -extfile "$name.ext" -out "$name.pem"
    rm -f "$name.csr" "$name.ext"
}

tls_ensure() {
    [[ -f $TLS_DIR/.complete ]] && return 0
    command -v openssl >/dev/null || die "openssl not found (scripts/deps.sh installs it)"
    log "generating TLS material in $TLS_DIR"
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    # errexit must hold inside the subshell, and it would not if the
    # subshell's status were tested with || or if: test it afterwards.
    local rc
    set +e
    (
        set -e
        cd "$TLS_DIR"
        umask 077
        server_san="DNS:localhost,IP:127.0.0.1"
        tls_new_ca ca "metrics-flow test CA"
        tls_new_leaf broker localhost ca serverAuth "$server_san"
        tls_new_leaf client metrics-flow-client ca clientAuth
        tls_new_leaf pg localhost ca serverAuth "$server_san"
        tls_new_ca wrong-ca "unrelated test CA"
        tls_new_leaf wrong-client metrics-flow-client wrong-ca clientAuth
        cat broker.key broker.pem ca.pem >broker-keystore.pem
        cat client.key client.pem >client-keystore.pem
        # Certificates are public; keys stay owner-only.
        chmod 644 ./*.pem
        chmod 600 ./*.key broker-keystore.pem client-keystore.pem
    ) >"$STACK/tls.log" 2>&1
    rc=$?
    set -e
    ((rc == 0)) || { cat "$STACK/tls.log" >&2; die "generating TLS material failed"; }
    touch "$TLS_DIR/.complete"
}

# SSL: mutual TLS. SASL_SSL: server-side TLS plus SCRAM (user created at
# format time). No ssl.key.password: with it set, Kafka expects an
# encrypted PEM key.
kafka_tls_properties() {
    cat <<EOF
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
}

# PostgreSQL refuses a key readable by others, and the postgres user can't
# read root's copy anyway: it gets copies of its own.
pg_tls_install() {
    install -d -m 700 "$PGSTATE/tls"
    install -m 600 "$TLS_DIR/pg.key" "$PGSTATE/tls/server.key"
    install -m 644 "$TLS_DIR/pg.pem" "$PGSTATE/tls/server.pem"
    install -m 644 "$TLS_DIR/ca.pem" "$PGSTATE/tls/ca.pem"
    if ((EUID == 0)); then chown -R postgres: "$PGSTATE/tls"; fi
}

# ssl_ca_file: clients may present a certificate (verified against our CA);
# none is required, password auth stays the rule.
pg_tls_conf() {
    cat <<EOF
ssl = on
ssl_cert_file = '$PGSTATE/tls/server.pem'
ssl_key_file = '$PGSTATE/tls/server.key'
ssl_ca_file = '$PGSTATE/tls/ca.pem'
EOF
}

# ==================================================================== main

print_env() {
    # Ports of running components win over the environment.
    kafka_pid >/dev/null && adopt_settings "$KSTATE/settings" 2>/dev/null
    pg_running && adopt_settings "$PGSTATE/settings" 2>/dev/null
    echo "export KAFKA_BROKER=127.0.0.1:$KAFKA_PORT"
    echo "export POSTGRESQL_DSN='host=127.0.0.1 port=$PG_PORT user=metrics password=metrics dbname=metrics'"
    if ((KAFKA_TLS || PG_TLS)); then
        echo "export MF_TLS_DIR=$TLS_DIR"
    fi
    if ((KAFKA_TLS)); then
        echo "export MF_KAFKA_SSL_PORT=$KAFKA_SSL_PORT"
        echo "export MF_KAFKA_SASL_PORT=$KAFKA_SASL_PORT"
    fi
    return 0
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# Start order; stop runs it backwards (the broker first).
components() { # [kafka|pg]
    case ${1:-all} in
        all) COMPONENTS=(pg kafka) ;;
        kafka | pg) COMPONENTS=("$1") ;;
        *) usage ;;
    esac
}

main() {
    local cmd=${1:-} c i rc=0
    case $cmd in
        start)
            components "${2:-}"
            for c in "${COMPONENTS[@]}"; do "${c}_start"; done
            print_env
            ;;
        stop)
            components "${2:-}"
            for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do "${COMPONENTS[i]}_stop"; done
            ;;
        status)
            kafka_status || rc=$?
            pg_status || rc=$?
            return "$rc"
            ;;
        env) print_env ;;
        psql)
            # As the superuser over the private socket, e.g. for server-side COPY.
            shift
            PGBIN=$(pg_bindir)
            pg_running || die "PostgreSQL is not running (scripts/stack.sh start pg)"
            as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSTATE" -p "$PG_PORT" -U postgres "$@"
            ;;
        kafka-tool)
            shift
            (($# > 0)) || usage
            [[ -f $KAFKA_HOME/.complete ]] || kafka_fetch
            kafka_write_tools_config
            kafka_tool "$@"
            ;;
        *) usage ;;
    esac
}

main "$@"
