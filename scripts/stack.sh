#!/usr/bin/env bash
# A local Kafka (KRaft: one node, or a three-node cluster) and PostgreSQL for
# metrics-flow, without Docker: Kafka runs from Maven Central jars, PostgreSQL
# from Debian's packages (scripts/deps.sh installs them).
#
#   scripts/stack.sh start  [kafka|pg]   start (idempotent; brings back any
#                                        Kafka node that is down), print env lines
#   scripts/stack.sh stop   [kafka|pg]   stop (idempotent; every Kafka node)
#   scripts/stack.sh status              what runs (a line per Kafka node of a
#                                        cluster); exit 0 if all, 3 if not
#   scripts/stack.sh env                 print the env lines only
#   scripts/stack.sh kill-node N         SIGKILL Kafka node N and wait until it
#                                        is gone (idempotent)
#   scripts/stack.sh stop-node N         stop Kafka node N gracefully
#   scripts/stack.sh node-pid N          print Kafka node N's pid; exit 1 if down
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
#   MF_KAFKA_NODES            1       1 or 3 Kafka nodes (see below)
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
# One Kafka node lives in $MF_STACK_DIR/kafka. MF_KAFKA_NODES=3 starts a
# cluster of three combined broker+controller nodes (static quorum, topics
# replicated 3 ways, min.insync.replicas=2) in $MF_STACK_DIR/kafka-cluster/
# node-<i>/, apart from the one-node stack's data; node i listens on each
# port above plus 10*(i-1) (node 2: 19102, 19103, ...). `start` then prints
# all three brokers in KAFKA_BROKER, and MF_KAFKA_NODES=3; MF_KAFKA_SSL_PORT
# and MF_KAFKA_SASL_PORT are node 1's. Without MF_KAFKA_NODES, every command
# looks for a running cluster (a live pid in kafka-cluster/node-*/kafka.pid)
# and, if one runs, takes its node count and ports from that node's settings;
# otherwise it means the one-node stack. Only one of the two runs at a time.
#
# MF_TLS can change between a stop and a start without wiping anything: the
# SCRAM user is created whenever the storage is formatted, TLS or not.
# Ports, MF_TLS and MF_KAFKA_NODES of a running component can't change;
# `start` says so.
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
# The one-node stack's state; a cluster's is in $KCLUSTER/node-<i> (kafka_dir).
KSTATE=$STACK/kafka
KCLUSTER=$STACK/kafka-cluster
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
KAFKA_NODES=${MF_KAFKA_NODES:-1}   # kafka_mode settles it

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

# Which Kafka a command means: MF_KAFKA_NODES if set, else a running
# cluster's node count (saved in its nodes' settings), else one node. Sets
# KAFKA_NODES and KSTATE, the state dir of that stack.
kafka_mode() {
    local dir
    if [[ -n ${MF_KAFKA_NODES:-} ]]; then
        [[ $MF_KAFKA_NODES == [13] ]] || die "MF_KAFKA_NODES must be 1 or 3, not '$MF_KAFKA_NODES'"
        KAFKA_NODES=$MF_KAFKA_NODES
    elif dir=$(kafka_cluster_running); then
        KAFKA_NODES=$(sed -n 's/^KAFKA_NODES=//p' "$dir/settings")
        [[ $KAFKA_NODES == [13] ]] || die "no node count in $dir/settings"
    else
        KAFKA_NODES=1
    fi
    ((KAFKA_NODES == 1)) || KSTATE=$KCLUSTER
}

# Node i's state (data, server.properties, logs, kafka.pid, settings):
# $KSTATE itself for one node, $KSTATE/node-<i> for a cluster.
kafka_dir() { # node
    if ((KAFKA_NODES == 1)); then echo "$KSTATE"; else echo "$KSTATE/node-$1"; fi
}

# Node i listens on every base port plus 10*(i-1).
node_port() { # base-port node
    echo $(($1 + 10 * ($2 - 1)))
}

kafka_name() { # node
    if ((KAFKA_NODES == 1)); then echo Kafka; else echo "Kafka node $1"; fi
}

kafka_dir_pid() { # state-dir
    local pid
    pid=$(cat "$1/kafka.pid" 2>/dev/null) || return 1
    # A pid file can outlive its process (reboot, kill -9) and the number can
    # be reused: only a JVM running kafka.Kafka counts.
    pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ' kafka\.Kafka ' || return 1
    echo "$pid"
}

kafka_pid() { # node
    kafka_dir_pid "$(kafka_dir "$1")"
}

# The state dir of a cluster node that runs, if any does.
kafka_cluster_running() {
    local dir
    for dir in "$KCLUSTER"/node-*; do
        kafka_dir_pid "$dir" >/dev/null && echo "$dir" && return 0
    done
    return 1
}

# Take the settings of a running node (all nodes save the same ones); fails
# if no node runs.
kafka_adopt() {
    local i
    for ((i = 1; i <= KAFKA_NODES; i++)); do
        kafka_pid "$i" >/dev/null || continue
        adopt_settings "$(kafka_dir "$i")/settings"
        return 0
    done
    return 1
}

# The one-node stack and a cluster don't run side by side: they'd want the
# same ports by default, and `env` can name only one of them.
kafka_check_other() {
    local pid dir
    if ((KAFKA_NODES == 1)); then
        if dir=$(kafka_cluster_running); then
            die "a Kafka cluster is running ($dir); stop it first (stop kafka without MF_KAFKA_NODES=1)"
        fi
    elif pid=$(kafka_dir_pid "$STACK/kafka"); then
        die "a one-node Kafka is running (pid $pid); stop it first (stop kafka with MF_KAFKA_NODES=1)"
    fi
    return 0
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

kafka_write_configs() { # node
    local i=$1 dir port cport sport aport voters="" j rf=1 isr=1
    dir=$(kafka_dir "$i")
    mkdir -p "$dir"
    port=$(node_port "$KAFKA_PORT" "$i")
    cport=$(node_port "$KAFKA_CONTROLLER_PORT" "$i")
    sport=$(node_port "$KAFKA_SSL_PORT" "$i")
    aport=$(node_port "$KAFKA_SASL_PORT" "$i")
    kafka_log4j_config "$dir/log4j2.xml" info \
        "<File name=\"out\" fileName=\"$dir/server.log\" append=\"true\">
      <PatternLayout pattern=\"[%d] %p %m (%c)%n\"/>
    </File>"

    local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    local advertised="PLAINTEXT://127.0.0.1:$port"
    local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if ((KAFKA_TLS)); then
        # Bound on 127.0.0.1 but advertised as localhost: the broker cert's
        # SAN holds both, and clients verifying hostnames see "localhost".
        listeners+=",SSL://127.0.0.1:$sport,SASL_SSL://127.0.0.1:$aport"
        advertised+=",SSL://localhost:$sport,SASL_SSL://localhost:$aport"
        protocols+=",SSL:SSL,SASL_SSL:SASL_SSL"
    fi
    for ((j = 1; j <= KAFKA_NODES; j++)); do
        voters+="${voters:+,}$j@127.0.0.1:$(node_port "$KAFKA_CONTROLLER_PORT" "$j")"
    done
    ((KAFKA_NODES == 1)) || rf=3 isr=2
    {
        cat <<EOT
# Written by scripts/stack.sh on every start; edits are lost.
process.roles=broker,controller
node.id=$i
EOT
        if ((KAFKA_NODES == 1)); then
            cat <<EOT
# A static single-voter quorum: unlike a dynamic one (--standalone), the
# voter's address is not frozen into the metadata log at format time, so the
# controller port can change between runs.
EOT
        else
            cat <<EOT
# A static quorum of all nodes (each one broker and controller): a majority,
# two of three, elects a leader, so the cluster lives through one node down.
# As with one node, the voters' addresses are not frozen into the metadata
# log, so the ports can change between runs (on all nodes at once).
EOT
        fi
        cat <<EOT
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=3
auto.create.topics.enable=true
default.replication.factor=$rf
EOT
        if ((KAFKA_NODES > 1)); then
            cat <<EOT
# With acks=all a write is acknowledged once two replicas have it, so it
# survives the loss of any one broker, and with one of three brokers down the
# two left still form an ISR of 2 and keep accepting writes.
min.insync.replicas=$isr
EOT
        fi
        cat <<EOT
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
# Consumers in tests join a group once; don't make them wait for others.
group.initial.rebalance.delay.ms=0
EOT
        if ((KAFKA_TLS)); then kafka_tls_properties; fi
    } >"$dir/server.properties"
}

# A cluster's nodes share one cluster id: that of a node already formatted,
# else a new one.
kafka_cluster_id() {
    local i id
    for ((i = 1; i <= KAFKA_NODES; i++)); do
        id=$(sed -n 's/^cluster\.id=//p' "$(kafka_dir "$i")/data/meta.properties" 2>/dev/null) || continue
        [[ -n $id ]] && echo "$id" && return 0
    done
    kafka_tool kafka.tools.StorageTool random-uuid
}

# Format a node's metadata log once. The SCRAM user is always added here
# (it's harmless without a SASL listener), so MF_TLS can be switched on and
# off between runs without a re-format.
kafka_format() { # node
    local dir cluster_id
    dir=$(kafka_dir "$1")
    [[ -f $dir/data/meta.properties ]] && return 0
    cluster_id=$(kafka_cluster_id)
    log "formatting $(kafka_name "$1") storage (cluster id $cluster_id)"
    kafka_tool kafka.tools.StorageTool format --cluster-id "$cluster_id" \
        --config "$dir/server.properties" \
        --add-scram 'SCRAM-SHA-256=[name=metrics,password=metrics-secret]' \
        --add-scram 'SCRAM-SHA-512=[name=metrics,password=metrics-secret]' \
        >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "formatting $(kafka_name "$1") storage failed"; }
}

# Run a Kafka tool class on the cached jars (`kafka-tool` subcommand too).
kafka_tool() {
    java -Xmx512m -Dlog4j2.configurationFile="$KSTATE/tools-log4j2.xml" \
        -cp "$(kafka_classpath)" "$@"
}

kafka_dump_logs() { # node
    local dir
    dir=$(kafka_dir "$1")
    log "---- last 40 lines of $dir/server.log"
    tail -n 40 "$dir/server.log" >&2 2>/dev/null || true
    if [[ -s $dir/stdout.log ]]; then
        log "---- last 40 lines of $dir/stdout.log"
        tail -n 40 "$dir/stdout.log" >&2
    fi
}

# Ready means: the process lives, the PLAINTEXT port accepts connections and
# the broker has logged that it finished starting up (it logs that only after
# the controller has unfenced it, i.e. when it can serve produce/fetch).
kafka_ready() { # node
    port_open "$(node_port "$KAFKA_PORT" "$1")" &&
        grep -q 'Kafka Server started' "$(kafka_dir "$1")/server.log" 2>/dev/null
}

# Wait until all the given nodes are ready, READY_TIMEOUT for them all. If
# one dies or the time runs out, the nodes not ready yet are stopped, so that
# the next `start` starts them afresh instead of reporting half-started
# brokers as running; ready ones are left alone.
kafka_wait_ready() { # node...
    local deadline=$((SECONDS + READY_TIMEOUT)) i j
    local -a pending=("$@") left
    while ((${#pending[@]})); do
        left=()
        for i in "${pending[@]}"; do
            if ! kafka_pid "$i" >/dev/null; then
                rm -f "$(kafka_dir "$i")/kafka.pid"
                kafka_dump_logs "$i"
                log "error: $(kafka_name "$i") exited during startup"
                left=()
                for j in "${pending[@]}"; do kafka_pid "$j" >/dev/null && left+=("$j"); done
                ((${#left[@]} == 0)) || kafka_stop_nodes "${left[@]}"
                exit 1
            fi
            kafka_ready "$i" || left+=("$i")
        done
        pending=("${left[@]}")
        ((${#pending[@]})) || return 0
        if ((SECONDS >= deadline)); then
            for i in "${pending[@]}"; do
                kafka_dump_logs "$i"
                log "$(kafka_name "$i") not ready after ${READY_TIMEOUT}s"
            done
            kafka_stop_nodes "${pending[@]}"
            exit 1
        fi
        sleep 0.5
    done
}

kafka_launch() { # node
    local dir pid
    dir=$(kafka_dir "$1")
    # A fresh log per run, so the readiness check can't see an old run's line.
    [[ -f $dir/server.log ]] && mv -f "$dir/server.log" "$dir/server.log.1"
    local what="Kafka $KAFKA_VERSION"
    ((KAFKA_NODES == 1)) || what+=" node $1"
    log "starting $what on 127.0.0.1:$(node_port "$KAFKA_PORT" "$1")"
    # setsid: the broker must not die with the calling shell or its job
    # control (CI steps, terminals closing).
    setsid nohup java -Xms256m -Xmx512m -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.xml" \
        -cp "$(kafka_classpath)" kafka.Kafka "$dir/server.properties" \
        >"$dir/stdout.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/kafka.pid"
    save_settings "$dir/settings" KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_SSL_PORT KAFKA_SASL_PORT KAFKA_TLS KAFKA_NODES
}

# Start the nodes that are down, leave running ones alone, then wait for all.
kafka_start() {
    local i pid port dir
    local -a all=() down=()
    kafka_check_other
    kafka_adopt || true
    for ((i = 1; i <= KAFKA_NODES; i++)); do
        all+=("$i")
        if pid=$(kafka_pid "$i"); then
            # It may still be starting (a concurrent `start`): it's waited for below.
            log "$(kafka_name "$i") already running (pid $pid) on 127.0.0.1:$(node_port "$KAFKA_PORT" "$i")"
        else
            down+=("$i")
        fi
    done
    if ((${#down[@]})); then
        for i in "${down[@]}"; do
            dir=$(kafka_dir "$i")
            [[ -f $dir/kafka.pid ]] && log "removing stale $(kafka_name "$i") pid file" && rm -f "$dir/kafka.pid"
        done
        command -v java >/dev/null || die "java not found (scripts/deps.sh installs it)"
        for i in "${down[@]}"; do
            for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $( ((KAFKA_TLS)) && echo "$KAFKA_SSL_PORT $KAFKA_SASL_PORT"); do
                port=$(node_port "$port" "$i")
                port_open "$port" && die "port $port is already in use (set MF_KAFKA_*PORT)"
            done
        done

        kafka_fetch
        ((KAFKA_TLS)) && tls_ensure
        kafka_write_tools_config
        for i in "${down[@]}"; do
            kafka_write_configs "$i"
            kafka_format "$i"
        done
        # All at once: a lone voter of three can't win an election, so a node
        # started on its own waits for the others.
        for i in "${down[@]}"; do kafka_launch "$i"; done
    fi
    kafka_wait_ready "${all[@]}"
    for i in "${down[@]}"; do
        log "$(kafka_name "$i") ready (pid $(kafka_pid "$i"))"
    done
}

# Graceful stop: SIGTERM (and SIGCONT, in case a test SIGSTOPped the node)
# to all given nodes at once, then wait for their controlled shutdown;
# SIGKILL after STOP_TIMEOUT.
kafka_stop_nodes() { # node...
    local i k pid deadline
    local -a nodes=() pids=()
    for i in "$@"; do
        if pid=$(kafka_pid "$i"); then
            log "stopping $(kafka_name "$i") (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            kill -CONT "$pid" 2>/dev/null || true
            nodes+=("$i")
            pids+=("$pid")
        else
            rm -f "$(kafka_dir "$i")/kafka.pid"
            log "$(kafka_name "$i") not running"
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    for k in "${!nodes[@]}"; do
        i=${nodes[k]} pid=${pids[k]}
        while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
        if pid_alive "$pid"; then
            log "$(kafka_name "$i") still up after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while pid_alive "$pid"; do sleep 0.1; done
        fi
        rm -f "$(kafka_dir "$i")/kafka.pid"
        log "$(kafka_name "$i") stopped"
    done
}

kafka_stop() {
    local i
    local -a all=()
    for ((i = 1; i <= KAFKA_NODES; i++)); do all+=("$i"); done
    kafka_stop_nodes "${all[@]}"
}

# A crash, as tests want it: SIGKILL, no controlled shutdown.
kafka_kill_node() { # node
    local pid
    if pid=$(kafka_pid "$1"); then
        log "killing $(kafka_name "$1") (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
        while pid_alive "$pid"; do sleep 0.1; done
        log "$(kafka_name "$1") killed"
    else
        log "$(kafka_name "$1") not running"
    fi
    rm -f "$(kafka_dir "$1")/kafka.pid"
}

kafka_node_arg() { # N
    if ! [[ ${1:-} =~ ^[1-9][0-9]*$ ]] || (($1 > KAFKA_NODES)); then
        die "no Kafka node '${1:-}' in a stack of $KAFKA_NODES (MF_KAFKA_NODES=3 names a cluster that isn't running)"
    fi
}

kafka_status() {
    local i pid name rc=0
    kafka_adopt 2>/dev/null || true
    for ((i = 1; i <= KAFKA_NODES; i++)); do
        name=kafka
        ((KAFKA_NODES == 1)) || name="kafka node $i"
        if pid=$(kafka_pid "$i"); then
            echo "$name: running (pid $pid) on 127.0.0.1:$(node_port "$KAFKA_PORT" "$i")$( ((KAFKA_TLS)) && echo ", SSL localhost:$(node_port "$KAFKA_SSL_PORT" "$i"), SASL_SSL localhost:$(node_port "$KAFKA_SASL_PORT" "$i")")"
        else
            echo "$name: stopped"
            rc=3
        fi
    done
    return "$rc"
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
    local i brokers=""
    kafka_adopt 2>/dev/null || true
    pg_running && adopt_settings "$PGSTATE/settings" 2>/dev/null
    for ((i = 1; i <= KAFKA_NODES; i++)); do
        brokers+="${brokers:+,}127.0.0.1:$(node_port "$KAFKA_PORT" "$i")"
    done
    echo "export KAFKA_BROKER=$brokers"
    if ((KAFKA_NODES > 1)); then echo "export MF_KAFKA_NODES=$KAFKA_NODES"; fi
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
    kafka_mode
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
        kill-node | stop-node | node-pid)
            (($# == 2)) || usage
            kafka_node_arg "$2"
            case $cmd in
                kill-node) kafka_kill_node "$2" ;;
                stop-node) kafka_stop_nodes "$2" ;;
                node-pid) kafka_pid "$2" || die "$(kafka_name "$2") is not running" ;;
            esac
            ;;
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
