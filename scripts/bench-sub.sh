#!/usr/bin/env bash
# Benchmark of `sub` on the local stack, in three parts:
#
#   1. throughput: BENCH_MESSAGES (200000) valid messages are pre-loaded into a
#      fresh topic of BENCH_PARTITIONS (4) partitions, then `sub --once` stores
#      them all; wall time, rows/s and peak RSS (/usr/bin/time -v).
#   2. baseline: the same rows, exported to CSV, loaded with psql's \copy into
#      an empty table made LIKE the results table (same columns and indexes);
#      rows/s and the ratio sub / COPY.
#   3. latency: `sub` runs continuously while `pub` checks two URLs of a local
#      web page, each every BENCH_INTERVAL (0.1) s, for BENCH_SECONDS (30) s
#      (20 checks a second, as one URL every 0.05 s before --delay had its 0.1 s
#      floor); p50 and p99 of received_at - checked_at, computed in PostgreSQL.
#
# Extra `sub` flags (e.g. "--batch-size 20000") go in BENCH_SUB_ARGS. Every run
# uses new topics and tables, so the script can be run again on the same stack.
# The stack keeps running afterwards; `scripts/stack.sh stop` stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${BENCH_MESSAGES:-200000}
PARTITIONS=${BENCH_PARTITIONS:-4}
INTERVAL=${BENCH_INTERVAL:-0.1}
SECONDS_OF_CHECKS=${BENCH_SECONDS:-30}
SITE_PORT=${BENCH_SITE_PORT:-18081}
read -ra SUB_ARGS <<<"${BENCH_SUB_ARGS:-}"

log() { echo "bench: $*" >&2; }
now() { date +%s.%N; }
# rate ROWS SECONDS
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else printf "n/a" }'; }
# percent A B: A as a percentage of B
percent() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.0f%%", 100 * a / b; else printf "n/a" }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

bash scripts/deps.sh
if [[ ! -x /usr/bin/time ]]; then
    log "installing GNU time (for peak RSS)"
    if ((EUID == 0)); then apt-get install -y -q time >/dev/null; else sudo apt-get install -y -q time >/dev/null; fi
fi
stack_env=$(bash scripts/stack.sh start)
eval "$stack_env"
cargo build --release --locked --bin metrics-flow --example produce_checks
bin=${CARGO_TARGET_DIR:-target}/release/metrics-flow
producer=${CARGO_TARGET_DIR:-target}/release/examples/produce_checks

work=$(mktemp -d)
site_pid=
sub_pid=
cleanup() {
    [[ -n $sub_pid ]] && kill -INT "$sub_pid" 2>/dev/null || true
    [[ -n $site_pid ]] && kill "$site_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

sql() { psql "$POSTGRESQL_DSN" -X -q -v ON_ERROR_STOP=1 -Atc "$1"; }
columns="id, checked_at, target, ok, http_status, latency_ms, error_kind, error_text, pattern, pattern_found, kafka_partition, kafka_offset"

run=$(date +%Y%m%d%H%M%S)_$$
topic=bench_$run
table=bench_$run

# ------------------------------------------------------------- 1. throughput
log "creating topic $topic with $PARTITIONS partitions"
bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$KAFKA_BROKER" --create --topic "$topic" \
    --partitions "$PARTITIONS" --replication-factor 1 >/dev/null

log "producing $N messages (examples/produce_checks.rs, the crate's own message type)"
"$producer" "$KAFKA_BROKER" "$topic" "$N"

log "sub --once on $N messages"
started=$(now)
/usr/bin/time -v -o "$work/time.txt" "$bin" sub --once --topic "$topic" --table "$table" \
    --group "$topic" "${SUB_ARGS[@]}" 2>"$work/sub.log" ||
    { tail -n 30 "$work/sub.log" >&2; exit 1; }
finished=$(now)
sub_seconds=$(elapsed "$started" "$finished")
rows=$(sql "SELECT count(*) FROM $table")
[[ $rows == "$N" ]] || { log "error: sub stored $rows rows, expected $N"; exit 1; }
rss_kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.txt")
# From the first batch's transaction to the last one's: the steady rate, without
# start-up (connect, migrate, join the group).
steady_seconds=$(sql "SELECT round(extract(epoch FROM max(received_at) - min(received_at))::numeric, 2) FROM $table")
batches=$(sql "SELECT count(DISTINCT received_at) FROM $table")

# ---------------------------------------------------------------- 2. baseline
log "baseline: \\copy of the same rows into a table LIKE $table"
sql "\\copy (SELECT $columns FROM $table) TO '$work/rows.csv' WITH (FORMAT csv)"
sql "CREATE TABLE ${table}_copy (LIKE $table INCLUDING ALL)"
started=$(now)
sql "\\copy ${table}_copy ($columns) FROM '$work/rows.csv' WITH (FORMAT csv)"
finished=$(now)
copy_seconds=$(elapsed "$started" "$finished")
copied=$(sql "SELECT count(*) FROM ${table}_copy")
[[ $copied == "$N" ]] || { log "error: COPY loaded $copied rows, expected $N"; exit 1; }

sub_rate=$(rate "$N" "$sub_seconds")
steady_rate=$(rate "$N" "$steady_seconds")
copy_rate=$(rate "$N" "$copy_seconds")

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
ltable=${table}_latency
bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$KAFKA_BROKER" --create --topic "$ltopic" \
    --partitions "$PARTITIONS" --replication-factor 1 >/dev/null
"$bin" sub --topic "$ltopic" --table "$ltable" --group "$ltopic" "${SUB_ARGS[@]}" 2>"$work/sub-latency.log" &
sub_pid=$!
# Checks start once sub holds its partitions, so none waits for the group to form.
for _ in $(seq 600); do
    grep -q "assigned partitions" "$work/sub-latency.log" && break
    sleep 0.1
done
timeout --signal=INT "$SECONDS_OF_CHECKS" "$bin" pub --topic "$ltopic" --delay "$INTERVAL" \
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
cores=$(nproc)
cat <<EOF

sub benchmark ($cores cores; topic $topic, $PARTITIONS partitions; sub flags: ${BENCH_SUB_ARGS:-defaults})

throughput, $N messages
  sub --once, wall time       ${sub_seconds} s   $sub_rate rows/s   (start-up included)
  sub, first to last batch    ${steady_seconds} s   $steady_rate rows/s   ($batches transactions)
  sub peak RSS                $((rss_kb / 1024)) MiB
  psql \\copy CSV, same rows   ${copy_seconds} s   $copy_rate rows/s
  sub / COPY                  $(percent "$sub_rate" "$copy_rate") (wall)   $(percent "$steady_rate" "$copy_rate") (steady)

latency, pub every ${INTERVAL}s for ${SECONDS_OF_CHECKS}s: $stored of $published checks stored
  received_at - checked_at    p50 ${p50} ms   p99 ${p99} ms   max ${max} ms
EOF
