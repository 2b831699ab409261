#!/usr/bin/env bash
# Benchmark of `sub` on the local stack, in three parts:
#
#   1. throughput: BENCH_MESSAGES (200000) valid messages are pre-loaded into a
#      fresh topic of BENCH_PARTITIONS (4) partitions, then `sub --once` stores
#      them all into a fresh table; wall time, rows/s and peak RSS (/usr/bin/time -v).
#   2. baseline, after each sub run: the same rows, written to a CSV file by the
#      server and loaded with server-side `COPY ... FROM '<file>'` (as the
#      superuser, no client in the path) into an empty table identical to the one
#      sub filled: same columns, indexes and day partitions. Then the same file
#      again through `psql \copy` (the client reads it and streams CSV), which
#      is what earlier figures compared against. PostgreSQL's and the broker's CPU
#      (/proc, their whole process trees) are taken around each run.
#   3. latency: `sub` runs continuously while `pub` checks two URLs of a local
#      web page, each every BENCH_INTERVAL (0.1) s, for BENCH_SECONDS (30) s;
#      p50 and p99 of received_at - checked_at, computed in PostgreSQL.
#
# BENCH_COMPARE=<git revision> adds that revision's sub as a second contender
# (built in a worktree under .cache/), e.g. the release before the derived tables:
#   BENCH_COMPARE=95e904e BENCH_ROUNDS=3 bash scripts/bench-sub.sh
# Parts 1 and 2 then run BENCH_ROUNDS (1) times for each contender, alternating
# which goes first, all reading the same topic; the summary gives min / median / max.
# Part 3 runs once, for this tree.
#
# BENCH_WARMUP (1) untimed runs of this tree's sub read the whole topic first, into a
# table dropped afterwards, so that no contender is timed against a cold broker.
#
# BENCH_METRICS=1 adds "metrics" as a contender: this tree's sub with
# --metrics-listen, scraped five times a second (scripts/scrape-loop.sh) while it
# runs, to show what the endpoint costs:
#   BENCH_METRICS=1 BENCH_ROUNDS=3 bash scripts/bench-sub.sh
#
# Extra `sub` flags (e.g. "--batch-size 20000") go in BENCH_SUB_ARGS, for every
# contender. Every run uses new topics and tables, and drops them when done (a
# table right after its run, so autovacuum never works on one while another run
# is timed; each timed step also waits for autovacuum to be idle). The stack
# keeps running; `scripts/stack.sh stop` stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${BENCH_MESSAGES:-200000}
PARTITIONS=${BENCH_PARTITIONS:-4}
INTERVAL=${BENCH_INTERVAL:-0.1}
SECONDS_OF_CHECKS=${BENCH_SECONDS:-30}
SITE_PORT=${BENCH_SITE_PORT:-18081}
ROUNDS=${BENCH_ROUNDS:-1}
WARMUP=${BENCH_WARMUP:-1}
COMPARE=${BENCH_COMPARE:-}
METRICS=${BENCH_METRICS:-0}
METRICS_PORT=${BENCH_METRICS_PORT:-19464}
read -ra SUB_ARGS <<<"${BENCH_SUB_ARGS:-}"

now() { date +%s.%N; }
# rate ROWS SECONDS
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else printf "n/a" }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# min / median / max of the numbers on stdin (the lower middle one for an even count)
# shellcheck source=scripts/bench-prelude.sh
source scripts/bench-prelude.sh
if [[ ! -x /usr/bin/time ]]; then
    log "installing GNU time (for peak RSS)"
    if ((EUID == 0)); then apt-get install -y -q time >/dev/null; else sudo apt-get install -y -q time >/dev/null; fi
fi
labels=(this)
declare -A binary=([this]=$bin)
if [[ -n $COMPARE ]]; then
    rev=$(git rev-parse --short "$COMPARE^{commit}")
    tree=.cache/bench-worktree-$rev
    [[ -d $tree ]] || git worktree add --detach "$tree" "$rev" >&2
    log "building $rev in $tree"
    (cd "$tree" && CARGO_TARGET_DIR=target cargo build --release --locked --bin metrics-flow)
    labels=("$rev" this)
    binary[$rev]=$tree/target/release/metrics-flow
fi
declare -A extra_args=()
if ((METRICS)); then
    labels+=(metrics)
    binary[metrics]=$bin
    extra_args[metrics]="--metrics-listen 127.0.0.1:$METRICS_PORT"
fi

work=$(mktemp -d)
# The server writes and reads the baseline's CSV, so its directory is the
# postgres user's to use.
server_dir=$(mktemp -d)
chmod 0777 "$server_dir"
site_pid=
sub_pid=
scraper_pid=
cleanup() {
    [[ -n $sub_pid ]] && kill -INT "$sub_pid" 2>/dev/null || true
    [[ -n $scraper_pid ]] && kill "$scraper_pid" 2>/dev/null || true
    [[ -n $site_pid ]] && kill "$site_pid" 2>/dev/null || true
    rm -rf "$work" "$server_dir"
    # The topics too: a broker that keeps every run's answers each later metadata
    # request with a longer list.
    [[ -n ${topic:-} ]] && bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$KAFKA_BROKER" --delete --if-exists --topic "$topic.*" >/dev/null 2>&1 || true
    [[ -n ${ltable:-} ]] && drop_results "$ltable" >/dev/null 2>&1 || true
}
trap cleanup EXIT

superuser_sql() { bash scripts/stack.sh psql -d "$(sql 'SELECT current_database()')" -Atc "$1"; }

kafka_pid=$(bash scripts/stack.sh node-pid 1)
run=$(date +%Y%m%d%H%M%S)_$$
topic=bench_$run

# copy_identical TABLE COPY: an empty COPY with TABLE's columns and indexes, and
# for a partitioned TABLE the same partitioning and partitions.
copy_identical() {
    local table=$1 copy=$2
    if [[ $(sql "SELECT relkind FROM pg_class WHERE oid = '$table'::regclass") == p ]]; then
        sql "CREATE TABLE $copy (LIKE $table INCLUDING ALL) PARTITION BY RANGE (checked_at)"
        sql "DO \$\$ DECLARE p record; BEGIN
               FOR p IN SELECT row_number() OVER () AS n, pg_get_expr(c.relpartbound, c.oid) AS bound
                        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                        WHERE i.inhparent = '$table'::regclass LOOP
                 EXECUTE format('CREATE TABLE %I PARTITION OF $copy %s', '${copy}_' || p.n, p.bound);
               END LOOP; END \$\$"
    else
        sql "CREATE TABLE $copy (LIKE $table INCLUDING ALL)"
    fi
}

# Waits (up to a minute) until no autovacuum worker runs, so that none is timed
# with the step that follows; says so when one outlasts the wait.
autovacuum_idle() {
    local i workers
    for ((i = 0; i < 600; i++)); do
        workers=$(superuser_sql "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
        ((workers == 0)) && return 0
        sleep 0.1
    done
    log "warning: $workers autovacuum worker(s) still running after 60 s; timing anyway"
}

# throughput LABEL ROUND: sub --once into a new table, then the COPY baselines;
# appends "label wall steady rss_mib copy batches cpu pg_cpu kafka_cpu copy_pg_cpu
# psql_copy" to $work/runs.
throughput() {
    local label=$1 round=$2
    local table=${topic}_${label}_$round started finished wall rows rss_kb steady batches copy copied cpu
    local pg_before pg_after kafka_before kafka_after pg_cpu kafka_cpu copy_pg_cpu psql_copy
    local extra=()
    read -ra extra <<<"${extra_args[$label]:-}"
    log "round $round: $label sub --once on $N messages into $table"
    if ((${#extra[@]})); then
        bash scripts/scrape-loop.sh "$METRICS_PORT" &
        scraper_pid=$!
    fi
    autovacuum_idle
    pg_before=$(tree_ticks "$(postmaster_pid)")
    kafka_before=$(tree_ticks "$kafka_pid")
    started=$(now)
    /usr/bin/time -v -o "$work/time.txt" "${binary[$label]}" sub --once --topic "$topic" \
        --table "$table" --group "$table" "${SUB_ARGS[@]}" "${extra[@]}" 2>"$work/sub.log" ||
        { tail -n 30 "$work/sub.log" >&2; exit 1; }
    finished=$(now)
    pg_after=$(tree_ticks "$(postmaster_pid)")
    kafka_after=$(tree_ticks "$kafka_pid")
    pg_cpu=$(ticks_between "$pg_before" "$pg_after")
    kafka_cpu=$(ticks_between "$kafka_before" "$kafka_after")
    if [[ -n $scraper_pid ]]; then
        kill "$scraper_pid"
        wait "$scraper_pid" 2>/dev/null || true
        scraper_pid=
    fi
    wall=$(elapsed "$started" "$finished")
    rows=$(sql "SELECT count(*) FROM $table")
    [[ $rows == "$N" ]] || { log "error: sub stored $rows rows, expected $N"; exit 1; }
    rss_kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.txt")
    cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.2f", s }' "$work/time.txt")
    # From the first batch's transaction to the last one's: the steady rate, without
    # start-up (connect, migrate, join the group).
    steady=$(sql "SELECT round(extract(epoch FROM max(received_at) - min(received_at))::numeric, 2) FROM $table")
    batches=$(sql "SELECT count(DISTINCT received_at) FROM $table")

    log "round $round: baseline, server-side COPY of the same rows into ${table}_copy"
    superuser_sql "COPY (SELECT * FROM $table) TO '$server_dir/rows.csv' WITH (FORMAT csv)"
    copy_identical "$table" "${table}_copy"
    autovacuum_idle
    pg_before=$(tree_ticks "$(postmaster_pid)")
    started=$(now)
    superuser_sql "COPY ${table}_copy FROM '$server_dir/rows.csv' WITH (FORMAT csv)"
    finished=$(now)
    copy_pg_cpu=$(ticks_between "$pg_before" "$(tree_ticks "$(postmaster_pid)")")
    copy=$(elapsed "$started" "$finished")
    copied=$(sql "SELECT count(*) FROM ${table}_copy")
    [[ $copied == "$N" ]] || { log "error: COPY loaded $copied rows, expected $N"; exit 1; }
    superuser_sql "DROP TABLE ${table}_copy"

    # Earlier figures were against this one: the client reads the file and sends
    # it as CSV text, which the server parses, as the server-side COPY does.
    log "round $round: psql \\copy of the same CSV into ${table}_copy"
    copy_identical "$table" "${table}_copy"
    autovacuum_idle
    started=$(now)
    psql "$POSTGRESQL_DSN" -X -q -v ON_ERROR_STOP=1 \
        -c "\\copy ${table}_copy FROM '$server_dir/rows.csv' WITH (FORMAT csv)"
    finished=$(now)
    psql_copy=$(elapsed "$started" "$finished")
    copied=$(sql "SELECT count(*) FROM ${table}_copy")
    [[ $copied == "$N" ]] || { log "error: psql \\copy loaded $copied rows, expected $N"; exit 1; }
    superuser_sql "DROP TABLE ${table}_copy"
    # Before autovacuum takes them up: a worker vacuuming 200,000 rows during the
    # next timed run would be timed with it.
    drop_results "$table"
    echo "$label $wall $steady $((rss_kb / 1024)) $copy $batches $cpu $pg_cpu $kafka_cpu $copy_pg_cpu $psql_copy" >>"$work/runs"
}

# ------------------------------------------------------ 1. and 2. throughput
log "creating topic $topic with $PARTITIONS partitions"
bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$KAFKA_BROKER" --create --topic "$topic" \
    --partitions "$PARTITIONS" --replication-factor 1 >/dev/null
log "producing $N messages (examples/produce_checks.rs, the crate's own message type)"
"$producer" "$KAFKA_BROKER" "$topic" "$N"
# A broker started minutes before gave one round of three at 6.2 s (2.6 s of broker
# CPU) beside two at 3.1-3.2 s (0.7 s); with this warm-up, five rounds on a broker
# restarted just before stayed within 2.8-3.3 s. The broker's start-up is not sub's.
for ((round = 1; round <= WARMUP; round++)); do
    log "warm-up $round of $WARMUP: this sub --once on the same topic (not reported)"
    "${binary[this]}" sub --once --topic "$topic" --table "${topic}_warmup" \
        --group "${topic}_warmup_$round" "${SUB_ARGS[@]}" 2>"$work/sub.log" ||
        { tail -n 30 "$work/sub.log" >&2; exit 1; }
    drop_results "${topic}_warmup"
done
for ((round = 1; round <= ROUNDS; round++)); do
    mapfile -t order < <(turned_order "$round" "${labels[@]}")
    for label in "${order[@]}"; do throughput "$label" "$round"; done
done

# ----------------------------------------------------------------- 3. latency
log "latency: pub every ${INTERVAL}s for ${SECONDS_OF_CHECKS}s, sub running"
site=$work/site
mkdir -p "$site"
echo "all is well" >"$site/index.html"
python3 -m http.server "$SITE_PORT" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
site_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$SITE_PORT") 2>/dev/null && break
    sleep 0.1
done
ltopic=${topic}_latency
ltable=${topic}_latency
bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$KAFKA_BROKER" --create --topic "$ltopic" \
    --partitions "$PARTITIONS" --replication-factor 1 >/dev/null
"${binary[this]}" sub --topic "$ltopic" --table "$ltable" --group "$ltopic" "${SUB_ARGS[@]}" 2>"$work/sub-latency.log" &
sub_pid=$!
# Checks start once sub holds its partitions, so none waits for the group to form.
for _ in $(seq 600); do
    grep -q "assigned partitions" "$work/sub-latency.log" && break
    sleep 0.1
done
timeout --signal=INT "$SECONDS_OF_CHECKS" "${binary[this]}" pub --topic "$ltopic" --delay "$INTERVAL" \
    --pattern 'all is well' --target "http://127.0.0.1:$SITE_PORT/?a" \
    --target "http://127.0.0.1:$SITE_PORT/?b" 2>"$work/pub.log" || true
published=$(bash scripts/stack.sh kafka-tool org.apache.kafka.tools.GetOffsetShell \
    --bootstrap-server "$KAFKA_BROKER" --topic "$ltopic" | awk -F: '{ sum += $3 } END { print sum }')
for _ in $(seq 600); do
    [[ $(sql "SELECT count(*) FROM $ltable" 2>/dev/null || echo 0) -ge $published ]] && break
    sleep 0.1
done
kill -INT "$sub_pid"
wait "$sub_pid"
sub_pid=
stored=$(sql "SELECT count(*) FROM $ltable")
read -r p50 p99 max < <(sql "
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(max(ms)::numeric, 1)
    FROM (SELECT extract(epoch FROM received_at - checked_at) * 1000 AS ms FROM $ltable) AS l" |
    tr '|' ' ')

# ------------------------------------------------------------------ report
# column LABEL FIELD: that field of LABEL's runs, one per line
column() { awk -v l="$1" -v f="$2" '$1 == l { print $f }' "$work/runs"; }
# ratios LABEL SUB_FIELD COPY_FIELD: sub's rate as a percentage of COPY's, per run
ratios() { awk -v l="$1" -v s="$2" -v c="$3" '$1 == l { printf "%.0f\n", 100 * $c / $s }' "$work/runs"; }
cat <<EOF

sub benchmark ($(nproc) cores; topic $topic, $PARTITIONS partitions, $N messages; sub flags: ${BENCH_SUB_ARGS:-defaults})
$ROUNDS round(s); min / median / max; "this" is the working tree$([[ -n $COMPARE ]] && echo ", $rev is BENCH_COMPARE")$( ((METRICS)) && echo ', "metrics" is it with --metrics-listen, scraped 5 times a second')

EOF
for label in "${labels[@]}"; do
    wall_median=$(column "$label" 2 | median)
    cat <<EOF
$label
  sub --once, wall (start-up included)   $(column "$label" 2 | spread) s   median $(rate "$N" "$wall_median") rows/s
  sub, first to last batch               $(column "$label" 3 | spread) s   ($(column "$label" 6 | head -n 1) transactions)
  sub peak RSS                           $(column "$label" 4 | spread %d) MiB
  sub CPU (user + system)                $(column "$label" 7 | spread) s
  PostgreSQL CPU during sub              $(column "$label" 8 | spread) s
  Kafka broker CPU during sub            $(column "$label" 9 | spread) s
  server-side COPY, same rows and table  $(column "$label" 5 | spread) s
  PostgreSQL CPU during that COPY        $(column "$label" 10 | spread) s
  psql \\copy of the CSV (client-side)    $(column "$label" 11 | spread) s
  sub / COPY rate, wall                  $(ratios "$label" 2 5 | spread %d) %
  sub / COPY rate, first to last batch   $(ratios "$label" 3 5 | spread %d) %
  sub / psql \\copy rate, wall            $(ratios "$label" 2 11 | spread %d) %
EOF
done
if ((METRICS)); then
    echo
    echo "metrics / this, rate at the median wall time: $(awk -v a="$(column metrics 2 | median)" \
        -v b="$(column this 2 | median)" 'BEGIN { printf "%.0f%%", 100 * b / a }')"
fi
if [[ -n $COMPARE ]]; then
    echo
    echo "this / $rev, rate at the median wall time: $(awk -v a="$(column this 2 | median)" \
        -v b="$(column "$rev" 2 | median)" 'BEGIN { printf "%.0f%%", 100 * b / a }')"
fi
cat <<EOF

latency (this), pub every ${INTERVAL}s for ${SECONDS_OF_CHECKS}s: $stored of $published checks stored
  received_at - checked_at    p50 ${p50} ms   p99 ${p99} ms   max ${max} ms
EOF
