#!/usr/bin/env bash
# Benchmark of metrics-flow against the tools people would use instead, in one
# run on the same local stack and the same results:
#
#   1. sub against Kafka Connect (connect-standalone, one worker) with Debezium's
#      JDBC sink, both storing the same BENCH_MESSAGES results, written once to
#      two topics of BENCH_PARTITIONS partitions by examples/produce_checks.rs:
#      sub's topic holds the message as pub sends it; Connect's holds the same
#      results wrapped in the schema envelope its JsonConverter needs with
#      schemas.enable=true. Per run: wall time from the process's start until
#      every row is in its table, rows/s, the sink's CPU (user + system) and
#      peak RSS, and the CPU that PostgreSQL and the broker spent meanwhile.
#      BENCH_ROUNDS rounds, the contender going first alternating. Then one
#      crash per sink: SIGKILL once about a third of the rows are in, a restart,
#      and once it has caught up, duplicate rows (rows minus distinct ids) and
#      missing ones.
#   2. pub against Prometheus' blackbox_exporter on the same BENCH_TARGETS
#      targets of a private nginx on loopback (scripts/bench-nginx.sh), at the
#      same concurrency: `pub --once` over them, and one
#      /probe?target=...&module=http_2xx request each to the exporter from one
#      `curl --parallel` (its own CPU is reported apart). Checks or probes per
#      second, CPU per 1,000 and peak RSS of pub and of the exporter.
#
#   bash scripts/bench-peers.sh
#
# Progress goes to stderr, the figures to stdout. One measured thing runs at a
# time. Before and during every measured run the script takes the CPU that
# other processes used (/proc/stat's busy time less that of this script and its
# children, the broker and PostgreSQL); a run where they took more than
# BENCH_OTHERS_LIMIT of a core is flagged and left out of min / median / max.
#
# The first run fetches Kafka Connect's jars and Debezium's plugin archive from
# Maven Central into .cache/ (as scripts/stack.sh does Kafka's) and builds
# blackbox_exporter with Go. A default run then takes about five minutes here
# on a quiet machine, 70 s of it Connect's restart after the crash.
#
# Environment (all optional):
#   BENCH_MESSAGES       200000   results for part 1
#   BENCH_PARTITIONS     4        partitions of part 1's topics
#   BENCH_ROUNDS         3        measured runs of each contender, both parts
#   BENCH_TARGETS        2000     targets for part 2
#   BENCH_CONCURRENCY    32       pub --concurrency, and the exporter's parallel requests
#   BENCH_PARTS          "sink probe"   the parts to run
#   BENCH_OTHERS_LIMIT   0.33     cores that other processes may take before a run is flagged
#   BENCH_IDLE_SAMPLE    2        seconds of the load sample before each run
#   BENCH_TIMEOUT        600      seconds a sink may take to store everything
#   BENCH_CONNECT_TASKS  1        tasks.max of the JDBC sink (sub is one consumer)
#   BENCH_CONNECT_BATCH  5000     its batch.size and the worker's max.poll.records
#                                 (sub's --batch-size defaults to 5000 too)
#   BENCH_CONNECT_PORT   38083    Connect's REST listener
#   BENCH_NGINX_PORT     38081    the private nginx
#   BENCH_EXPORTER_PORT  39115    blackbox_exporter
#   BENCH_KEEP_TABLES    0        1 keeps the tables and topics
#   CARGO_TARGET_DIR              where the release binaries are built
#   MF_*                          passed on to scripts/stack.sh (ports, state and
#                                 cache dirs); components this script started
#                                 are stopped again at exit
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

N=${BENCH_MESSAGES:-200000}
PARTITIONS=${BENCH_PARTITIONS:-4}
ROUNDS=${BENCH_ROUNDS:-3}
TARGETS=${BENCH_TARGETS:-2000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
PARTS=${BENCH_PARTS:-"sink probe"}
OTHERS_LIMIT=${BENCH_OTHERS_LIMIT:-0.33}
IDLE_SAMPLE=${BENCH_IDLE_SAMPLE:-2}
TIMEOUT=${BENCH_TIMEOUT:-600}
CONNECT_TASKS=${BENCH_CONNECT_TASKS:-1}
CONNECT_BATCH=${BENCH_CONNECT_BATCH:-5000}
CONNECT_PORT=${BENCH_CONNECT_PORT:-38083}
NGINX_PORT=${BENCH_NGINX_PORT:-38081}
EXPORTER_PORT=${BENCH_EXPORTER_PORT:-39115}
KEEP_TABLES=${BENCH_KEEP_TABLES:-0}

KAFKA_VERSION=${MF_KAFKA_VERSION:-4.3.1}
LOG4J_VERSION=2.25.4 # as scripts/stack.sh, for the same slf4j binding
# 3.6.1.Final is not on Maven Central, and 3.6.0.Final's pom names a
# hibernate-agroal that is not there either; its plugin archive bundles every
# jar it needs.
DEBEZIUM_VERSION=3.6.0.Final
EXPORTER_VERSION=0.28.0
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.6.1
CACHE=$(mkdir -p "${MF_CACHE_DIR:-$REPO/.cache}" && cd "${MF_CACHE_DIR:-$REPO/.cache}" && pwd)
CONNECT_HOME=$CACHE/connect-$KAFKA_VERSION
DEBEZIUM_HOME=$CACHE/debezium-jdbc-$DEBEZIUM_VERSION
EXPORTER_HOME=$CACHE/blackbox_exporter-$EXPORTER_VERSION
# Every result of produce_checks.rs is for one of 50 targets, in turn.
PRODUCER_TARGETS=50
# As Kafka's connect-standalone.sh and kafka-run-class.sh start a worker.
CONNECT_JVM=(-Xms256M -Xmx2G -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true)

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

# shellcheck source=scripts/bench-nginx.sh
source scripts/bench-nginx.sh

# ------------------------------------------------------------------ clean-up

WORK=""
RUN=""
CONNECT_PID=""
SUB_PID=""
EXPORTER_PID=""
STACK_STARTED=()
TOPICS=()
GROUPS_MADE=()
SUB_TABLES=()
CONNECT_TABLES=()
EXPORTER_NOTE=""
EXPORTER_WHY=""

stop_pid() { # pid [signal]: stop one process of ours and reap it
    [[ -n $1 ]] || return 0
    kill "-${2:-TERM}" "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cleanup() {
    local table component group args=()
    stop_pid "$CONNECT_PID" KILL
    stop_pid "$SUB_PID" KILL
    stop_pid "$EXPORTER_PID"
    bench_nginx_stop
    poll_close
    if [[ $KEEP_TABLES != 1 && -n ${POSTGRESQL_DSN:-} ]]; then
        for table in "${SUB_TABLES[@]}"; do bash scripts/drop-results.sh "$table" || true; done
        for table in "${CONNECT_TABLES[@]}"; do
            psql "$POSTGRESQL_DSN" -X -q -c "SET client_min_messages = warning; DROP TABLE IF EXISTS $table CASCADE" || true
        done
        if ((${#TOPICS[@]})); then
            kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BROKER" \
                --delete --if-exists --topic "$(IFS='|'; echo "${TOPICS[*]}")" >/dev/null 2>&1 ||
                warn "could not delete the topics ${TOPICS[*]}"
        fi
        for group in "${GROUPS_MADE[@]}"; do args+=(--group "$group"); done
        if ((${#args[@]})); then
            kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
                --bootstrap-server "$KAFKA_BROKER" --delete "${args[@]}" >/dev/null 2>&1 ||
                warn "could not delete the consumer groups ${GROUPS_MADE[*]}"
        fi
    fi
    for component in "${STACK_STARTED[@]}"; do
        bash scripts/stack.sh stop "$component" >&2 || true
    done
    if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}

# ------------------------------------------------------------------- set-up

install_missing() {
    local pkg status missing=()
    for pkg in nginx time curl; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "need root to install: ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

kafka_tool() { bash scripts/stack.sh kafka-tool "$@"; }

create_topic() { # topic partitions
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BROKER" \
        --create --topic "$1" --partitions "$2" --replication-factor 1 >/dev/null
    TOPICS+=("$1")
}

# Kafka Connect's runtime, from Maven Central like the broker's jars: the same
# version, a pom of its own, the stack's Maven cache. The marker is written
# last, so an interrupted download is simply redone.
connect_fetch() {
    [[ -f $CONNECT_HOME/.complete ]] && return 0
    log "fetching Kafka Connect $KAFKA_VERSION jars from Maven Central (first run only)"
    rm -rf "$CONNECT_HOME"
    mkdir -p "$CONNECT_HOME"
    {
        echo '<project xmlns="http://maven.apache.org/POM/4.0.0">'
        echo '  <modelVersion>4.0.0</modelVersion>'
        echo '  <groupId>local.metrics-flow</groupId><artifactId>connect-runtime</artifactId>'
        echo '  <version>1</version><packaging>pom</packaging>'
        echo '  <dependencies>'
        local artifact
        for artifact in connect-runtime connect-json connect-api connect-transforms; do
            echo "    <dependency><groupId>org.apache.kafka</groupId><artifactId>$artifact</artifactId><version>$KAFKA_VERSION</version></dependency>"
        done
        echo "    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>"
        echo '  </dependencies>'
        echo '</project>'
    } >"$CONNECT_HOME/pom.xml"
    if ! mvn -q -B -f "$CONNECT_HOME/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
        -DoutputDirectory="$CONNECT_HOME/libs" >"$CONNECT_HOME/mvn.log" 2>&1; then
        tail -n 40 "$CONNECT_HOME/mvn.log" >&2
        die "mvn failed fetching Kafka Connect (full log: $CONNECT_HOME/mvn.log)"
    fi
    touch "$CONNECT_HOME/.complete"
}

debezium_fetch() {
    [[ -f $DEBEZIUM_HOME/.complete ]] && return 0
    log "fetching Debezium's JDBC sink $DEBEZIUM_VERSION plugin archive from Maven Central (first run only)"
    rm -rf "$DEBEZIUM_HOME"
    mkdir -p "$DEBEZIUM_HOME/plugins"
    if ! mvn -q -B -Dmaven.repo.local="$CACHE/m2" "$DEPENDENCY_PLUGIN:copy" \
        -Dartifact="io.debezium:debezium-connector-jdbc:$DEBEZIUM_VERSION:tar.gz:plugin" \
        -DoutputDirectory="$DEBEZIUM_HOME" >"$DEBEZIUM_HOME/mvn.log" 2>&1; then
        tail -n 40 "$DEBEZIUM_HOME/mvn.log" >&2
        die "mvn failed fetching Debezium's JDBC sink (full log: $DEBEZIUM_HOME/mvn.log)"
    fi
    tar -xzf "$DEBEZIUM_HOME"/debezium-connector-jdbc-*-plugin.tar.gz -C "$DEBEZIUM_HOME/plugins"
    # The Maven cache keeps the archive already.
    rm -f "$DEBEZIUM_HOME"/debezium-connector-jdbc-*-plugin.tar.gz
    touch "$DEBEZIUM_HOME/.complete"
}

# Sets EXPORTER_BIN, or EXPORTER_WHY to why there is none.
exporter_fetch() {
    local module=github.com/prometheus/blackbox_exporter dir why
    EXPORTER_BIN=$EXPORTER_HOME/blackbox_exporter
    if [[ -x $EXPORTER_BIN ]]; then
        EXPORTER_NOTE=$(cat "$EXPORTER_HOME/built-by" 2>/dev/null || echo "")
        return 0
    fi
    if ! command -v go >/dev/null; then
        EXPORTER_WHY="go is not installed, so blackbox_exporter cannot be built"
        return 1
    fi
    mkdir -p "$EXPORTER_HOME"
    log "building blackbox_exporter $EXPORTER_VERSION with go install (first run only)"
    if GOBIN=$EXPORTER_HOME go install "$module@v$EXPORTER_VERSION" >"$EXPORTER_HOME/go.log" 2>&1; then
        echo "built by go install $module@v$EXPORTER_VERSION" >"$EXPORTER_HOME/built-by"
        return 0
    fi
    # The proxy's address stays out of the figures, which may be pasted anywhere.
    why=$(grep -v '^go: downloading' "$EXPORTER_HOME/go.log" | head -n 2 | tr '\n\t' '  ' |
        sed -E 's#https?://[^/ ]+/#<GOPROXY>/#g; s/ +/ /g; s/ $//')
    # go install PKG@VERSION also reads the module's list of versions, to look
    # for a deprecation notice; a proxy may refuse that list and still serve
    # the version itself, which can then be built as its own main module.
    warn "go install $module@v$EXPORTER_VERSION failed: $why"
    log "building it from the module as downloaded (go mod download, go build) instead"
    if dir=$(cd "$WORK" && go mod download -json "$module@v$EXPORTER_VERSION" 2>>"$EXPORTER_HOME/go.log" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') && [[ -n $dir ]] &&
        (cd "$dir" && go build -trimpath -o "$EXPORTER_BIN" .) >>"$EXPORTER_HOME/go.log" 2>&1; then
        EXPORTER_NOTE="go install failed ($why); built from \`go mod download\` + \`go build\` of the same version instead"
        echo "$EXPORTER_NOTE" >"$EXPORTER_HOME/built-by"
        return 0
    fi
    EXPORTER_WHY="go install failed ($why), and so did go mod download + go build (log: $EXPORTER_HOME/go.log)"
    return 1
}

wait_for_port() { # port what pid
    local i
    for ((i = 0; i < 300; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        kill -0 "$3" 2>/dev/null || die "$2 exited before it listened on 127.0.0.1:$1"
        sleep 0.1
    done
    die "$2 did not listen on 127.0.0.1:$1"
}

# ------------------------------------------------------------- measurement

# Busy ticks of the whole machine: user, nice, system, irq, softirq. Steal is
# another guest's, not a process here.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
steal_ticks() { awk '/^cpu / { print $9; exit }' /proc/stat; }

# What counts as ours: this script and everything it started, the broker, and
# PostgreSQL with its backends.
our_ticks() { tree_ticks "$$" "$KAFKA_PID" "$(postmaster_pid)"; }

# "busy ours" at one moment, for others_between.
load_mark() { echo "$(busy_ticks) $(our_ticks)"; }

# Cores that other processes kept busy between two marks over a span of seconds.
others_between() { # mark-before mark-after seconds
    awk -v a="$1" -v b="$2" -v s="$3" -v hz="$HZ" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        other = (y[1] - x[1]) - (y[2] - x[2])
        if (other < 0) other = 0
        printf "%.2f", (s > 0) ? other / hz / s : 0 }'
}

# The load of other processes over a short quiet spell, before a measured run.
others_before() {
    local before
    before=$(load_mark)
    sleep "$IDLE_SAMPLE"
    others_between "$before" "$(load_mark)" "$IDLE_SAMPLE"
}

flag_of() { # before during
    awk -v a="$1" -v b="$2" -v l="$OTHERS_LIMIT" 'BEGIN { print (a > l || b > l) ? "!" : "-" }'
}

peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ticks_seconds() { awk -v t="$1" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }'; }

# One psql session for the polls: a connection per poll (a fork and a SCRAM
# exchange each time) would cost PostgreSQL and this script more than the
# queries, during the very runs being measured.
POLL_PID=""
poll_open() {
    coproc POLL { psql "$POSTGRESQL_DSN" -X -q -At 2>&1; }
}
poll_close() {
    [[ -n $POLL_PID ]] || return 0
    kill "$POLL_PID" 2>/dev/null || true
    wait "$POLL_PID" 2>/dev/null || true
    POLL_PID=""
}
# The number a one-number query answers, or nothing (e.g. while sub has not
# created its table yet: psql then prints an error and goes on).
poll() { # sql
    local line answer=""
    printf '%s;\n\\echo __poll_end__\n' "$1" >&"${POLL[1]}"
    while IFS= read -r -t 60 line <&"${POLL[0]}"; do
        [[ $line == __poll_end__ ]] && break
        [[ $line =~ ^[0-9]+$ ]] && answer=$line
    done
    echo "$answer"
}

# The newest PRODUCER_TARGETS results hold every target's last result, and so
# every partition's last message (a partition holds whole targets). Both sinks
# write each partition in offset order, so once those are all in, everything
# is: a cheap query on the (checked_at, id) index, where counting the table
# would scan it ten times a second. The full count afterwards confirms it.
tail_count() { # table
    poll "SELECT count(DISTINCT id) FROM $1 WHERE checked_at >= '$LAST_CHECKED_AT'::timestamptz - interval '$((TAIL - 1)) ms'"
}

# Why a sink's process is no good any more, if it is not: gone, or a
# Connect task that failed and waits for someone to restart it.
broken() { # pid log
    if ! kill -0 "$1" 2>/dev/null; then echo "exited"; return 0; fi
    if grep -q -m1 'Task threw an uncaught and unrecoverable exception' "$2" 2>/dev/null; then
        echo "its task failed"
        return 0
    fi
    return 1
}

# Waits until all N results are in the table: the tail first, then the full
# count. Fails if the process goes bad or BENCH_TIMEOUT passes.
wait_stored() { # table pid log what
    local deadline=$((SECONDS + TIMEOUT)) n why
    while :; do
        n=$(tail_count "$1")
        if [[ ${n:-0} -ge $TAIL ]]; then
            n=$(poll "SELECT count(DISTINCT id) FROM $1")
            [[ ${n:-0} -ge $N ]] && return 0
        fi
        if why=$(broken "$2" "$3"); then
            warn "$4 $why before storing everything (log: $3)"
            tail -n 5 "$3" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            warn "$4 had not stored everything after ${TIMEOUT}s (log: $3)"
            return 1
        fi
        sleep 0.1
    done
}

# Waits until at least COUNT rows are in the table.
wait_rows() { # table count pid log what
    local deadline=$((SECONDS + TIMEOUT)) n why
    while :; do
        n=$(poll "SELECT count(*) FROM $1")
        [[ ${n:-0} -ge $2 ]] && return 0
        if why=$(broken "$3" "$4"); then warn "$5 $why (log: $4)"; return 1; fi
        ((SECONDS < deadline)) || { warn "$5: fewer than $2 rows after ${TIMEOUT}s"; return 1; }
        sleep 0.1
    done
}

# Warn about every warning or error line a sink or pub logged.
check_log() { # log what pattern
    local lines
    lines=$(grep -E "$3" "$1" || true)
    [[ -z $lines ]] || warn "$2 logged $(wc -l <<<"$lines") warning/error line(s), first: $(head -n 1 <<<"$lines")"
}

# ---------------------------------------------------------- part 1: sinks

# Each contender's process, started in the background: sets SINK_PID.
start_sub() { # table log
    env -u RUST_LOG "$bin" sub --topic "$PLAIN_TOPIC" --table "$1" --group "$1" 2>>"$2" &
    SUB_PID=$!
    SINK_PID=$SUB_PID
}

# A worker of its own per table: its own connector name, so its own consumer
# group, and its own offset file (a sink keeps its offsets in the group; the
# file is there because standalone mode needs one).
connect_files() { # table dir
    local table=$1 dir=$2
    mkdir -p "$dir"
    cat >"$dir/worker.properties" <<EOF
bootstrap.servers=$KAFKA_BROKER
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=true
offset.storage.file.filename=$dir/offsets
listeners=http://127.0.0.1:$CONNECT_PORT
plugin.path=$DEBEZIUM_HOME/plugins
# Without it the worker scans every jar for plugins, 6-7 s at each start.
plugin.discovery=service_load
# A put() of the sink is one INSERT: let a poll bring a whole batch. The
# envelope makes a message 6 times larger, so 1 MiB a partition held ~600.
consumer.max.poll.records=$CONNECT_BATCH
consumer.max.partition.fetch.bytes=10485760
EOF
    cat >"$dir/connector.properties" <<EOF
name=$table
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max=$CONNECT_TASKS
topics=$ENVELOPED_TOPIC
connection.url=jdbc:postgresql://$PG_HOST:$PG_PORT/$PG_DB
connection.username=$PG_USER
connection.password=$PG_PASSWORD
insert.mode=insert
batch.size=$CONNECT_BATCH
dialect.postgres.unnest.insert.enabled=true
primary.key.mode=none
schema.evolution=none
collection.name.format=$table
# sub's table has the message's partition and offset too.
transforms=kafka
transforms.kafka.type=org.apache.kafka.connect.transforms.InsertField\$Value
transforms.kafka.partition.field=kafka_partition
transforms.kafka.offset.field=kafka_offset
EOF
    cat >"$dir/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="out" fileName="$dir/connect.log" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers><Root level="info"><AppenderRef ref="out"/></Root></Loggers>
</Configuration>
EOF
}

start_connect() { # table log
    local dir
    dir=$(dirname "$2")
    java "${CONNECT_JVM[@]}" -Dlog4j2.configurationFile="$dir/log4j2.xml" \
        -cp "$CONNECT_HOME/libs/*" org.apache.kafka.connect.cli.ConnectStandalone \
        "$dir/worker.properties" "$dir/connector.properties" >>"$dir/stdout.log" 2>&1 &
    CONNECT_PID=$!
    SINK_PID=$CONNECT_PID
}

stop_sink() { # label
    if [[ $1 == sub ]]; then
        stop_pid "$SUB_PID" INT
        SUB_PID=""
    else
        stop_pid "$CONNECT_PID"
        CONNECT_PID=""
    fi
}

# Connect's table: sub's columns (from a table sub made), partitioned by day
# like sub's, with the same two indexes; (checked_at, id) is not unique, since
# in insert mode the rows a crash makes it write again would fail the task.
connect_table() { # table
    sql "CREATE TABLE $1 (LIKE $TEMPLATE INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (checked_at);
         CREATE INDEX ON $1 (target, checked_at DESC);
         CREATE INDEX ON $1 (checked_at, id);
         DO \$\$ DECLARE d date; BEGIN
             FOR d IN SELECT generate_series(('$FIRST_CHECKED_AT'::timestamptz AT TIME ZONE 'UTC')::date,
                                             ('$LAST_CHECKED_AT'::timestamptz AT TIME ZONE 'UTC')::date, '1 day')::date LOOP
                 EXECUTE format('CREATE TABLE %I PARTITION OF $1 FOR VALUES FROM (%L) TO (%L)',
                                '$1_d' || to_char(d, 'YYYYMMDD'), d::timestamp AT TIME ZONE 'UTC',
                                (d + 1)::timestamp AT TIME ZONE 'UTC');
             END LOOP; END \$\$"
    CONNECT_TABLES+=("$1")
}

# What a run of the contender writes into, and the group it reads in: sub's
# are named after its table, Connect's after the connector.
new_sink_table() { # label table
    if [[ $1 == sub ]]; then
        SUB_TABLES+=("$2")
        GROUPS_MADE+=("$2")
    else
        connect_table "$2"
        connect_files "$2" "$WORK/$2"
        GROUPS_MADE+=("connect-$2")
    fi
}

sink_log() { # label table
    if [[ $1 == sub ]]; then echo "$WORK/$2.sub.log"; else echo "$WORK/$2/connect.log"; fi
}

# One measured run; appends "label round wall startup steady rows_s cpu_s
# us_row rss_mib pg_s kafka_s before during flag" to $WORK/sink-runs.
sink_run() { # label round
    local label=$1 round=$2 table="${RUN}_${1}_$2" log before mark0 mark1 started done_at
    local sink pg0 pg1 kafka0 kafka1 rss first last rows distinct during flag
    log "round $round: $label into $table"
    new_sink_table "$label" "$table"
    log=$(sink_log "$label" "$table")
    before=$(others_before)
    pg0=$(tree_ticks "$(postmaster_pid)")
    kafka0=$(tree_ticks "$KAFKA_PID")
    mark0=$(load_mark)
    started=$EPOCHREALTIME
    "start_$label" "$table" "$log"
    if ! wait_stored "$table" "$SINK_PID" "$log" "$label"; then
        stop_sink "$label"
        echo "$label $round ? ? ? ? ? ? ? ? ? $before ? failed" >>"$WORK/sink-runs"
        return 0
    fi
    done_at=$EPOCHREALTIME
    # The process is new: all it spent so far is this run's.
    sink=$(tree_ticks "$SINK_PID")
    rss=$(peak_rss_kb "$SINK_PID")
    mark1=$(load_mark)
    pg1=$(tree_ticks "$(postmaster_pid)")
    kafka1=$(tree_ticks "$KAFKA_PID")
    stop_sink "$label"
    if [[ $label == sub ]]; then
        check_log "$log" "sub ($table)" '^\[[^ ]+ (WARN|ERROR) '
    else
        check_log "$log" "Connect ($table)" '^\[[^]]+\] (WARN|ERROR) '
    fi
    IFS='|' read -r first last rows distinct < <(sql "SELECT extract(epoch FROM min(received_at)),
        extract(epoch FROM max(received_at)), count(*), count(DISTINCT id) FROM $table")
    ((rows == N && distinct == N)) || warn "$table: $rows rows, $distinct distinct ids, expected $N"
    during=$(others_between "$mark0" "$mark1" "$(seconds_between "$started" "$done_at")")
    flag=$(flag_of "$before" "$during")
    awk -v l="$label" -v r="$round" -v s="$started" -v d="$done_at" -v f="$first" -v z="$last" \
        -v n="$N" -v c="$sink" -v rss="$rss" -v pg="$((pg1 - pg0))" -v k="$((kafka1 - kafka0))" \
        -v hz="$HZ" -v b="$before" -v du="$during" -v fl="$flag" 'BEGIN {
        wall = d - s
        printf "%s %s %.2f %.2f %.2f %.0f %.2f %.1f %.0f %.2f %.2f %s %s %s\n", l, r, wall, f - s, z - f,
            n / wall, c / hz, c / hz * 1e6 / n, rss / 1024, pg / hz, k / hz, b, du, fl }' >>"$WORK/sink-runs"
    tail -n 1 "$WORK/sink-runs" | sed 's/^/bench:   /' >&2
}

# Connect's rows that are not in sub's table of the same round, column for
# column: "all of them, and those left with latency_ms rounded to 9 decimals".
# (A few of Connect's latencies come out one unit in the last place off the
# message's, e.g. 9.842 as 9.841999999999999.)
unlike_rows() { # sub-table connect-table
    local columns="id, checked_at, target, ok, http_status, error_kind, error_text,
        pattern, pattern_found, kafka_partition, kafka_offset"
    sql "SELECT (SELECT count(*) FROM (SELECT $columns, latency_ms FROM $2
                                       EXCEPT ALL SELECT $columns, latency_ms FROM $1) a),
                (SELECT count(*) FROM (SELECT $columns, round(latency_ms::numeric, 9) FROM $2
                                       EXCEPT ALL SELECT $columns, round(latency_ms::numeric, 9) FROM $1) b)" |
        tr '|' ' '
}

drop_sink_table() { # label table
    [[ $KEEP_TABLES == 1 ]] && return 0
    if [[ $1 == sub ]]; then bash scripts/drop-results.sh "$2"; else sql "DROP TABLE $2 CASCADE"; fi
}

# SIGKILL once a third of the rows are in, restart, wait for the rest; appends
# "label killed_at rows_at_kill caught_up_s rows distinct duplicates missing".
crash_run() { # label
    local label=$1 table="${RUN}_${1}_crash" log started killed restarted caught rows_at_kill rows distinct
    log "crash: $label into $table, SIGKILL at about $((N / 3)) rows"
    new_sink_table "$label" "$table"
    log=$(sink_log "$label" "$table")
    started=$EPOCHREALTIME
    "start_$label" "$table" "$log"
    if ! wait_rows "$table" $((N / 3)) "$SINK_PID" "$log" "$label"; then
        stop_sink "$label"
        echo "$label ? ? ? ? ? ? ?" >>"$WORK/crash-runs"
        return 0
    fi
    kill -KILL "$SINK_PID"
    wait "$SINK_PID" 2>/dev/null || true
    killed=$EPOCHREALTIME
    rows_at_kill=$(sql "SELECT count(*) FROM $table")
    log "crash: $label killed with $rows_at_kill rows in; restarting it"
    echo "---- restarted after SIGKILL" >>"$log"
    restarted=$EPOCHREALTIME
    "start_$label" "$table" "$log"
    if ! wait_stored "$table" "$SINK_PID" "$log" "$label (restarted)"; then
        stop_sink "$label"
        echo "$label $(seconds_between "$started" "$killed") $rows_at_kill ? ? ? ? ?" >>"$WORK/crash-runs"
        return 0
    fi
    caught=$EPOCHREALTIME
    # Rows still in flight when the last id landed would come in now.
    sleep 3
    stop_sink "$label"
    IFS='|' read -r rows distinct < <(sql "SELECT count(*), count(DISTINCT id) FROM $table")
    echo "$label $(seconds_between "$started" "$killed") $rows_at_kill $(seconds_between "$restarted" "$caught") \
$rows $distinct $((rows - distinct)) $((N - distinct))" >>"$WORK/crash-runs"
    tail -n 1 "$WORK/crash-runs" | sed 's/^/bench:   /' >&2
    drop_sink_table "$label" "$table"
}

# min / median / max of one field over a contender's runs: the unflagged ones,
# or all of them when every one was flagged (runs_used says which).
runs_spread() { # file label field format
    awk -v l="$2" -v f="$3" -v fmt="$4" '
        $1 == l && $NF != "failed" { all[++na] = $f; if ($NF == "-") ok[++no] = $f }
        END {
            if (no) { for (i = 1; i <= no; i++) v[i] = ok[i]; n = no }
            else { for (i = 1; i <= na; i++) v[i] = all[i]; n = na }
            if (!n) { print "?"; exit }
            for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] + 0 > x + 0; j--) v[j + 1] = v[j]; v[j + 1] = x }
            printf fmt " / " fmt " / " fmt, v[1], v[int((n + 1) / 2)], v[n]
        }' "$1"
}

# Which of a contender's runs runs_spread used, in words.
runs_used() { # file label
    awk -v l="$2" '
        $1 == l { runs++; if ($NF == "failed") failed++; else if ($NF == "-") ok++; else flagged++ }
        END {
            if (ok) text = ok " unflagged"; else if (flagged) text = "all " flagged ", every one flagged"; else text = "none"
            if (failed) text = text ", " failed " failed"
            print text
        }' "$1"
}

sink_part() {
    local round label order plain_size envelope_size summary unlike
    PLAIN_TOPIC=${RUN}_plain
    ENVELOPED_TOPIC=${RUN}_enveloped
    TEMPLATE=${RUN}_columns
    TAIL=$((N < PRODUCER_TARGETS ? N : PRODUCER_TARGETS))
    connect_fetch
    debezium_fetch
    JAVA_VERSION=$(java -version 2>&1 | sed -n '1s/^[^"]*"\([^"]*\)".*/Java \1/p')
    # Connect's JDBC settings, from the DSN the stack printed.
    dsn_field() { sed -n "s/.*\b$1=\([^ ']*\).*/\1/p" <<<"$POSTGRESQL_DSN"; }
    PG_HOST=$(dsn_field host) PG_PORT=$(dsn_field port) PG_DB=$(dsn_field dbname)
    PG_USER=$(dsn_field user) PG_PASSWORD=$(dsn_field password)

    log "creating topics $PLAIN_TOPIC and $ENVELOPED_TOPIC with $PARTITIONS partitions"
    create_topic "$PLAIN_TOPIC" "$PARTITIONS"
    create_topic "$ENVELOPED_TOPIC" "$PARTITIONS"
    log "producing $N results to both (examples/produce_checks.rs)"
    "$producer" "$KAFKA_BROKER" "$PLAIN_TOPIC" "$N" --connect-topic "$ENVELOPED_TOPIC" 2>"$WORK/produce.log" ||
        { cat "$WORK/produce.log" >&2; die "producing failed"; }
    summary=$(tail -n 1 "$WORK/produce.log")
    log "$summary"
    FIRST_CHECKED_AT=$(sed -n 's/.*checked_at \([^ ]*\) to .*/\1/p' <<<"$summary")
    LAST_CHECKED_AT=$(sed -n 's/.*checked_at [^ ]* to \([^,]*\),.*/\1/p' <<<"$summary")
    plain_size=$(sed -n 's/.*, \([0-9]*\) bytes a message,.*/\1/p' <<<"$summary")
    envelope_size=$(sed -n 's/.* \([0-9]*\) bytes a message enveloped.*/\1/p' <<<"$summary")
    [[ -n $LAST_CHECKED_AT && -n $envelope_size ]] || die "cannot read the producer's summary: $summary"

    # sub's schema as sub makes it, for Connect's table: sub on an empty topic.
    log "sub --once on an empty topic, for the columns of its results table"
    create_topic "${RUN}_empty" 1
    SUB_TABLES+=("$TEMPLATE")
    GROUPS_MADE+=("$TEMPLATE")
    env -u RUST_LOG "$bin" sub --once --topic "${RUN}_empty" --table "$TEMPLATE" --group "$TEMPLATE" \
        2>"$WORK/template.log" || { tail -n 5 "$WORK/template.log" >&2; die "sub could not make its table"; }

    poll_open
    : >"$WORK/sink-runs"
    : >"$WORK/crash-runs"
    : >"$WORK/compare"
    for ((round = 1; round <= ROUNDS; round++)); do
        mapfile -t order < <(turned_order "$round" sub connect)
        for label in "${order[@]}"; do sink_run "$label" "$round"; done
        unlike=$(unlike_rows "${RUN}_sub_$round" "${RUN}_connect_$round" 2>/dev/null || echo "? ?")
        echo "$round $unlike" >>"$WORK/compare"
        log "round $round: Connect's rows unlike sub's, all and beyond latency_ms's 9th decimal: $unlike"
        drop_sink_table sub "${RUN}_sub_$round"
        drop_sink_table connect "${RUN}_connect_$round"
    done
    for label in sub connect; do crash_run "$label"; done
    poll_close

    cat <<EOF

## 1. sub against Kafka Connect $KAFKA_VERSION + Debezium JDBC sink $DEBEZIUM_VERSION

$N results on $PARTITIONS partitions, the same ones (ids included) in two topics:
sub reads them as pub publishes them ($plain_size bytes a message); Connect reads them
wrapped in JsonConverter's schema envelope ($envelope_size bytes a message), which
value.converter.schemas.enable=true needs so that the sink knows each column's type.
Connect: connect-standalone, one worker, on $JAVA_VERSION with ${CONNECT_JVM[*]:0:2}; the sink with
tasks.max=$CONNECT_TASKS, insert.mode=insert, batch.size=$CONNECT_BATCH,
dialect.postgres.unnest.insert.enabled=true, consumer max.poll.records=$CONNECT_BATCH.
sub: \`metrics-flow sub\` with its defaults (batches of 5000).
wall: from starting the process until every row is in the table (start-up included);
start-up: until the first row; first-last: first to last batch (received_at);
CPU: the sink process, user + system; RSS: its peak (VmHWM); PostgreSQL and Kafka:
CPU of the server and of the broker over the same span. others: cores that other
processes took in the ${IDLE_SAMPLE} s before the run / during it; flag ! = over
$OTHERS_LIMIT of a core: such runs are left out of min / median / max.

| round | contender | wall s | start-up s | first-last s | rows/s | CPU s | CPU us/row | RSS MiB | PostgreSQL CPU s | Kafka CPU s | others before | others during | flag |
|------:|:----------|-------:|-----------:|-------------:|-------:|------:|-----------:|--------:|-----------------:|------------:|--------------:|--------------:|:----:|
EOF
    awk '{ printf "| %5s | %-9s | %6s | %10s | %12s | %6s | %5s | %10s | %7s | %16s | %11s | %13s | %13s | %4s |\n",
        $2, $1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 }' "$WORK/sink-runs"
    echo
    while read -r round all rounded; do
        echo "Round $round: of Connect's $N rows, $all differ from sub's in some column, $rounded of them beyond latency_ms's 9th decimal."
    done <"$WORK/compare"
    echo "The rest differ in latency_ms only, by less than 1e-9 ms (seen: 9.842 stored as 9.841999999999999)."
    echo
    echo "min / median / max:"
    echo
    echo "| contender | runs used | wall s | rows/s | CPU s | CPU us/row | RSS MiB | PostgreSQL CPU s | Kafka CPU s |"
    echo "|:----------|:----------|-------:|-------:|------:|-----------:|--------:|-----------------:|------------:|"
    for label in sub connect; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$(runs_used "$WORK/sink-runs" "$label")" \
            "$(runs_spread "$WORK/sink-runs" "$label" 3 %.2f)" "$(runs_spread "$WORK/sink-runs" "$label" 6 %.0f)" \
            "$(runs_spread "$WORK/sink-runs" "$label" 7 %.2f)" "$(runs_spread "$WORK/sink-runs" "$label" 8 %.1f)" \
            "$(runs_spread "$WORK/sink-runs" "$label" 9 %.0f)" "$(runs_spread "$WORK/sink-runs" "$label" 10 %.2f)" \
            "$(runs_spread "$WORK/sink-runs" "$label" 11 %.2f)"
    done
    cat <<EOF

A crash each: SIGKILL once at least $((N / 3)) rows were in, a restart with the same
table, group and (for Connect) worker files, then 3 s more once every id was in.
duplicates: rows minus distinct ids; missing: $N minus distinct ids.

| contender | killed after s | rows at kill | restart to caught up s | rows | distinct ids | duplicates | missing |
|:----------|---------------:|-------------:|-----------------------:|-----:|-------------:|-----------:|--------:|
EOF
    awk '{ printf "| %-9s | %14s | %12s | %22s | %6s | %12s | %10s | %7s |\n", $1, $2, $3, $4, $5, $6, $7, $8 }' \
        "$WORK/crash-runs"
    cat <<'EOF'

How the two differ here:
- Input: Connect's topic carries the schema envelope, about six times the bytes of
  sub's, to fetch and parse; the values are the same. sub checks every message
  (version, required fields, plausible values) and would keep a bad one in
  <table>_rejected; Connect's converter checks it against the schema only.
- Work: sub writes, in one transaction per batch, the rows, its offsets and its
  derived tables (_hourly, _daily, _status, _incidents); Connect writes the rows only.
  Both tables have the same columns, day partitions and two indexes, but Connect's
  (checked_at, id) index is not unique: in insert mode the rows a crash makes it
  write again would otherwise fail its task. received_at is the transaction's
  now() in both.
- Guarantee: sub keeps its offsets in PostgreSQL with the rows, so a crash repeats
  nothing. Connect commits a sink's offsets to Kafka every offset.flush.interval.ms
  (60 s, its default, kept), so a crash rewrites what came after the last commit.
- Restart: a killed member holds its partitions until its session times out: sub's
  is 20 s, Connect's consumer keeps Kafka's default of 45 s.
- Process: sub is a native binary; Connect a JVM whose start (the worker, the
  plugin by service_load, Hibernate, the task) is in its wall time and its CPU.
EOF
}

# --------------------------------------------------------- part 2: probes

# Milliseconds since the epoch of the first env_logger line holding TEXT.
start_exporter() {
    cat >"$WORK/blackbox.yml" <<EOF
modules:
  http_2xx:
    prober: http
    # pub runs with --timeout 10.
    timeout: 10s
    http:
      preferred_ip_protocol: ip4
EOF
    "$EXPORTER_BIN" --config.file="$WORK/blackbox.yml" --web.listen-address="127.0.0.1:$EXPORTER_PORT" \
        --log.level=warn >"$WORK/exporter.log" 2>&1 &
    EXPORTER_PID=$!
    wait_for_port "$EXPORTER_PORT" blackbox_exporter "$EXPORTER_PID"
    log "blackbox_exporter (pid $EXPORTER_PID) on 127.0.0.1:$EXPORTER_PORT"
}

# curl's config: one /probe request a target, the target URL-encoded.
probe_requests() { # targets-file out
    awk -v port="$EXPORTER_PORT" '{
        t = $0; gsub(/%/, "%25", t); gsub(/:/, "%3A", t); gsub(/\//, "%2F", t); gsub(/\?/, "%3F", t); gsub(/&/, "%26", t)
        printf "url = \"http://127.0.0.1:%s/probe?module=http_2xx&target=%s\"\n", port, t }' "$1" >"$2"
}

# pub --once over the targets; appends "pub round wall rate phase_rate cpu_per_1000
# rss_mib client_per_1000 kafka_per_1000 before during flag" to $WORK/probe-runs.
pub_run() { # round
    local round=$1 log=$WORK/pub-$1.log before mark0 mark1 started finished kafka0 kafka1 rss user sys
    local checking flushing during flag
    log "round $round: pub --once, $TARGETS targets, concurrency $CONCURRENCY"
    before=$(others_before)
    kafka0=$(tree_ticks "$KAFKA_PID")
    mark0=$(load_mark)
    started=$EPOCHREALTIME
    if ! /usr/bin/time -f '%M %U %S' -o "$WORK/pub.time" env -u TARGET -u PATTERN -u SHARD \
        -u MAX_BODY_BYTES -u RUST_LOG "$bin" pub --once --targets-file "$WORK/targets.txt" \
        --concurrency "$CONCURRENCY" --timeout 10 --topic "$PUB_TOPIC" 2>"$log"; then
        warn "pub failed: $(tail -n 1 "$log")"
        echo "pub $round ? ? ? ? ? - ? $before ? failed" >>"$WORK/probe-runs"
        return 0
    fi
    finished=$EPOCHREALTIME
    mark1=$(load_mark)
    kafka1=$(tree_ticks "$KAFKA_PID")
    check_log "$log" "pub" '^\[[^ ]+ (WARN|ERROR) '
    read -r rss user sys < <(tail -n 1 "$WORK/pub.time")
    checking=$(log_ms "$log" "] checking ")
    flushing=$(log_ms "$log" "] flushing ")
    during=$(others_between "$mark0" "$mark1" "$(seconds_between "$started" "$finished")")
    flag=$(flag_of "$before" "$during")
    awk -v r="$round" -v s="$started" -v f="$finished" -v n="$TARGETS" -v c="$checking" -v fl="$flushing" \
        -v u="$user" -v sy="$sys" -v rss="$rss" -v k="$((kafka1 - kafka0))" -v hz="$HZ" \
        -v b="$before" -v du="$during" -v flag="$flag" 'BEGIN {
        phase = (c != "" && fl != "" && fl > c) ? sprintf("%.0f", n * 1000 / (fl - c)) : "?"
        printf "pub %s %.2f %.0f %s %.0f %.1f - %.0f %s %s %s\n", r, f - s, n / (f - s), phase,
            (u + sy) * 1000 * 1000 / n, rss / 1024, k / hz * 1000 * 1000 / n, b, du, flag }' >>"$WORK/probe-runs"
    tail -n 1 "$WORK/probe-runs" | sed 's/^/bench:   /' >&2
}

exporter_run() { # round
    local round=$1 before mark0 mark1 started finished ex0 ex1 kafka0 kafka1 rss user sys ok during flag
    log "round $round: blackbox_exporter, $TARGETS probes, $CONCURRENCY at a time"
    before=$(others_before)
    # 5 resets the peak RSS to the current RSS: VmHWM is then this run's peak.
    echo 5 >"/proc/$EXPORTER_PID/clear_refs"
    kafka0=$(tree_ticks "$KAFKA_PID")
    mark0=$(load_mark)
    ex0=$(tree_ticks "$EXPORTER_PID")
    started=$EPOCHREALTIME
    if ! /usr/bin/time -f '%U %S' -o "$WORK/curl.time" curl -sS --noproxy '*' --parallel \
        --parallel-immediate --parallel-max "$CONCURRENCY" -K "$WORK/probes.curl" >"$WORK/probes.out" 2>"$WORK/curl.err"; then
        warn "curl failed: $(tail -n 1 "$WORK/curl.err")"
    fi
    finished=$EPOCHREALTIME
    ex1=$(tree_ticks "$EXPORTER_PID")
    mark1=$(load_mark)
    kafka1=$(tree_ticks "$KAFKA_PID")
    rss=$(peak_rss_kb "$EXPORTER_PID")
    ok=$(grep -c '^probe_success 1' "$WORK/probes.out" || true)
    ((ok == TARGETS)) || warn "exporter round $round: $ok of $TARGETS probes succeeded (probe_success 1)"
    read -r user sys < <(tail -n 1 "$WORK/curl.time")
    during=$(others_between "$mark0" "$mark1" "$(seconds_between "$started" "$finished")")
    flag=$(flag_of "$before" "$during")
    awk -v r="$round" -v s="$started" -v f="$finished" -v n="$TARGETS" -v e="$((ex1 - ex0))" -v hz="$HZ" \
        -v rss="$rss" -v u="$user" -v sy="$sys" -v k="$((kafka1 - kafka0))" \
        -v b="$before" -v du="$during" -v flag="$flag" 'BEGIN {
        printf "exporter %s %.2f %.0f - %.0f %.1f %.0f %.0f %s %s %s\n", r, f - s, n / (f - s),
            e / hz * 1000 * 1000 / n, rss / 1024, (u + sy) * 1000 * 1000 / n, k / hz * 1000 * 1000 / n, b, du, flag }' \
        >>"$WORK/probe-runs"
    tail -n 1 "$WORK/probe-runs" | sed 's/^/bench:   /' >&2
}

probe_part() {
    local round label order stored client phase
    if ! exporter_fetch; then
        warn "no blackbox_exporter: $EXPORTER_WHY"
        cat <<EOF

## 2. pub against blackbox_exporter $EXPORTER_VERSION: not run

There is no blackbox_exporter to compare with: $EXPORTER_WHY.
EOF
        return 0
    fi
    PUB_TOPIC=${RUN}_pub
    awk -v n="$TARGETS" -v port="$NGINX_PORT" 'BEGIN { for (i = 0; i < n; i++) print "http://127.0.0.1:" port "/t/" i }' \
        >"$WORK/targets.txt"
    # Loopback only: nothing but our nginx is ever checked or probed.
    if grep -v -q '^http://127\.0\.0\.1:' "$WORK/targets.txt"; then die "a target is not on loopback"; fi
    probe_requests "$WORK/targets.txt" "$WORK/probes.curl"
    bench_nginx_start "$WORK/nginx" "$NGINX_PORT" || die "nginx did not listen on 127.0.0.1:$NGINX_PORT"
    log "nginx (pid $NGINX_PID) on 127.0.0.1:$NGINX_PORT"
    start_exporter
    create_topic "$PUB_TOPIC" "$PARTITIONS"

    # One untimed run of each first: the broker, nginx and the exporter's
    # runtime warm up, and pub's topic has taken writes before, as in service.
    log "warm-up: one untimed run of each"
    env -u RUST_LOG "$bin" pub --once --targets-file "$WORK/targets.txt" --concurrency "$CONCURRENCY" \
        --timeout 10 --topic "$PUB_TOPIC" 2>"$WORK/pub-warmup.log" || warn "warm-up pub failed"
    curl -sS --noproxy '*' --parallel --parallel-immediate --parallel-max "$CONCURRENCY" \
        -K "$WORK/probes.curl" >/dev/null 2>&1 || warn "warm-up probes failed"

    : >"$WORK/probe-runs"
    for ((round = 1; round <= ROUNDS; round++)); do
        mapfile -t order < <(turned_order "$round" pub exporter)
        for label in "${order[@]}"; do "${label}_run" "$round"; done
    done

    # pub's results, stored and counted: every check of every run must be ok.
    log "storing pub's results with sub --once to count them"
    SUB_TABLES+=("$PUB_TOPIC")
    GROUPS_MADE+=("$PUB_TOPIC")
    env -u RUST_LOG "$bin" sub --once --topic "$PUB_TOPIC" --table "$PUB_TOPIC" --group "$PUB_TOPIC" \
        2>"$WORK/pub-drain.log" || warn "sub could not store pub's results"
    stored=$(sql "SELECT count(*) FILTER (WHERE ok) || ' of ' || count(*) FROM $PUB_TOPIC" 2>/dev/null || echo "?")
    [[ $stored == "$((TARGETS * (ROUNDS + 1))) of $((TARGETS * (ROUNDS + 1)))" ]] ||
        warn "pub's checks: $stored ok, expected all $((TARGETS * (ROUNDS + 1)))"

    cat <<EOF

## 2. pub against blackbox_exporter $EXPORTER_VERSION

$TARGETS targets (http://127.0.0.1:$NGINX_PORT/t/N) on a private nginx, concurrency $CONCURRENCY.
pub: \`pub --once --concurrency $CONCURRENCY --timeout 10\`, a process per run, timed whole
(start-up, Kafka connection, checks, final flush); checks-phase rate: its log's
"checking" to "flushing". Its CPU and peak RSS: GNU time. Of its checks, $stored were
ok (stored with sub afterwards, warm-up included).
exporter: module http_2xx (timeout 10s, ip4), one /probe request a target from one
\`curl --parallel --parallel-max $CONCURRENCY\`, timed from curl's start to its end; the
exporter's CPU from /proc/<pid>/stat before and after, its peak RSS as VmHWM reset
before each run; curl's own CPU apart (client). A probe counts when its answer says
probe_success 1.
CPU per 1,000 checks or probes in ms; Kafka: the broker's CPU meanwhile, per 1,000.
others and flag as in part 1.

| round | contender | wall s | checks/s | checks-phase /s | CPU ms/1000 | RSS MiB | client CPU ms/1000 | Kafka CPU ms/1000 | others before | others during | flag |
|------:|:----------|-------:|---------:|----------------:|------------:|--------:|-------------------:|------------------:|--------------:|--------------:|:----:|
EOF
    awk '{ printf "| %5s | %-9s | %6s | %8s | %15s | %11s | %7s | %18s | %17s | %13s | %13s | %4s |\n",
        $2, $1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 }' "$WORK/probe-runs"
    echo
    echo "min / median / max:"
    echo
    echo "| contender | runs used | wall s | checks/s | checks-phase /s | CPU ms/1000 | RSS MiB | client CPU ms/1000 | Kafka CPU ms/1000 |"
    echo "|:----------|:----------|-------:|---------:|----------------:|------------:|--------:|-------------------:|------------------:|"
    for label in pub exporter; do
        phase=- client=-
        if [[ $label == pub ]]; then
            phase=$(runs_spread "$WORK/probe-runs" "$label" 5 %.0f)
        else
            client=$(runs_spread "$WORK/probe-runs" "$label" 8 %.0f)
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$(runs_used "$WORK/probe-runs" "$label")" \
            "$(runs_spread "$WORK/probe-runs" "$label" 3 %.2f)" "$(runs_spread "$WORK/probe-runs" "$label" 4 %.0f)" "$phase" \
            "$(runs_spread "$WORK/probe-runs" "$label" 6 %.0f)" "$(runs_spread "$WORK/probe-runs" "$label" 7 %.1f)" \
            "$client" "$(runs_spread "$WORK/probe-runs" "$label" 9 %.0f)"
    done
    cat <<EOF

How the two differ here:
- pub is a new process each run, so its wall time, CPU and RSS include its start,
  its Kafka connection and the final flush; the exporter runs throughout and is
  measured over the requests only (start-up excluded).
- pub publishes every result to Kafka (the broker's CPU is shown apart); the
  exporter hands each result back to its client as Prometheus text, which a
  Prometheus server would then scrape, store and evaluate: none of that is here.
- The client: pub schedules its own checks; the exporter needs one, curl, whose
  CPU is in the client column and in neither contender's own.
- Both open a new connection to nginx per check (nginx closes each one); the
  exporter's client keeps its own connections to the exporter open.
- blackbox_exporter: ${EXPORTER_NOTE:-built by hand before this script could say how}.
EOF
}

# --------------------------------------------------------------------- main

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    local status component part started steal0
    for part in $PARTS; do
        [[ $part == sink || $part == probe ]] || die "BENCH_PARTS: no part '$part' (sink, probe)"
    done
    ((N >= 3)) || die "BENCH_MESSAGES must be at least 3"
    install_missing
    # Only what this script started is stopped at exit: a stack someone else
    # runs stays up.
    status=$(bash scripts/stack.sh status 2>/dev/null || true)
    for component in kafka pg; do
        grep -q "^$component: running" <<<"$status" || STACK_STARTED+=("$component")
    done
    # shellcheck source=scripts/bench-prelude.sh
    source scripts/bench-prelude.sh
    # shellcheck source=scripts/bench-nginx.sh
    source scripts/bench-nginx.sh
    KAFKA_PID=$(bash scripts/stack.sh node-pid 1)
    WORK=$(mktemp -d /tmp/bench-peers.XXXXXX)
    RUN=peers_$(date +%s)
    started=$SECONDS
    steal0=$(steal_ticks)
    echo "# metrics-flow against its peers"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (modified)'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$ROUNDS round(s); the contender that goes first alternates; flagged runs (!) are left out of min / median / max"
    echo "(the median of an even count is the lower middle one)."
    for part in $PARTS; do "${part}_part"; done
    echo
    echo "total benchmark time: $((SECONDS - started)) s, load average now $(cut -d' ' -f1-3 /proc/loadavg), $(ticks_seconds $(($(steal_ticks) - steal0))) s stolen by the hypervisor"
}

main "$@"
