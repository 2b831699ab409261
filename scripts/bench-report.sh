#!/usr/bin/env bash
# Benchmark of `metrics-flow report` on a month of history: BENCH_TARGETS (5000)
# targets with BENCH_DAYS (30) days of hourly and daily rollups, statuses (one in ten down) and
# incidents, made with generate_series straight into the tables a real sub created.
# Times the report in each format and the HTML page, BENCH_REPEAT (5) runs each, and
# prints min / median / max; then the plans of the report's queries (`report
# --explain`), which read only the derived tables, never the raw results.
#
#   bash scripts/bench-report.sh
#   BENCH_TARGETS=8 BENCH_DAYS=90 BENCH_REPEAT=1 BENCH_HTML_OUT=status.html \
#       bash scripts/bench-report.sh        # a small page, as in docs/status-page.png
#
# The day partitions of <table>_hourly are made here under the names sub gives them
# (<table>_hourly_dYYYYMMDD), so sub would find them. Each run uses a fresh table,
# dropped at exit unless BENCH_KEEP_TABLES=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGETS=${BENCH_TARGETS:-5000}
DAYS=${BENCH_DAYS:-30}
HTML_OUT=${BENCH_HTML_OUT:-}
REPEAT=${BENCH_REPEAT:-5}
KEEP=${BENCH_KEEP_TABLES:-0}

# shellcheck source=scripts/bench-prelude.sh
source scripts/bench-prelude.sh

table=bench_report_$(date +%s)
work=$(mktemp -d)
cleanup() {
    rm -rf "$work"
    if [[ $KEEP != 1 ]]; then
        drop_results "$table" || true
    fi
}
trap cleanup EXIT

log "sub makes the tables ($table)"
bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$KAFKA_BROKER" --create --topic "$table" --partitions 1 \
    --replication-factor 1 >/dev/null
"$producer" "$KAFKA_BROKER" "$table" 1
"$bin" sub --once --topic "$table" --table "$table" --group "$table" 2>"$work/sub.log" ||
    { cat "$work/sub.log" >&2; exit 1; }
sql "TRUNCATE ${table}_hourly, ${table}_daily, ${table}_status, ${table}_incidents"

log "generating $TARGETS targets x $DAYS days of history"
started=$(date +%s.%N)
sql "DO \$\$ DECLARE d date; BEGIN
       FOR d IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - $DAYS - 1,
                                       (now() AT TIME ZONE 'UTC')::date - 1, '1 day')::date LOOP
         EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF ${table}_hourly
                         FOR VALUES FROM (%L) TO (%L)',
                        '${table}_hourly_d' || to_char(d, 'YYYYMMDD'),
                        d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
       END LOOP; END \$\$"
# 120 checks an hour per target (every 30 s); target t fails for two hours every
# (t % 20 + 5) days, and its latencies fall in the buckets by a fixed pattern.
sql "INSERT INTO ${table}_hourly (target, location, hour, checks, ok_checks, latency_ms_sum,
                                 latency_ms_min, latency_ms_max, latency_buckets)
     SELECT 'https://site' || t || '.example.test/health', '', h, 120,
            CASE WHEN (extract(epoch FROM h)::bigint / 3600) % ((t % 20 + 5) * 24) < 2
                 THEN 60 ELSE 120 END,
            120 * (20 + t % 50), 2 + t % 5, 400 + t % 300,
            ARRAY[10, 20, 30 + t % 10, 25, 15, 10 - t % 10, 5, 3, 1, 1, 0, 0]::int[]
     FROM generate_series(1, $TARGETS) t,
          generate_series(date_trunc('hour', now()) - interval '$DAYS days',
                          date_trunc('hour', now()) - interval '1 hour', '1 hour') h"
sql "INSERT INTO ${table}_daily (target, location, day, checks, ok_checks, latency_ms_sum,
                                latency_ms_min, latency_ms_max, latency_buckets)
     SELECT target, location, date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
            sum(checks), sum(ok_checks), sum(latency_ms_sum), min(latency_ms_min),
            max(latency_ms_max), ARRAY[0,0,0,0,0,0,0,0,0,0,0,0]::int[]
     FROM ${table}_hourly GROUP BY 1, 2, 3"
sql "INSERT INTO ${table}_status (target, location, state, since, last_checked_at,
         consecutive_failures, consecutive_successes, last_error_kind, last_error_text,
         run_started_at, tls_days_left)
     SELECT 'https://site' || t || '.example.test/health', '',
            CASE WHEN t % 10 = 0 THEN 'down' ELSE 'up' END,
            now() - t * interval '1 minute', now(),
            CASE WHEN t % 10 = 0 THEN 5 ELSE 0 END, CASE WHEN t % 10 = 0 THEN 0 ELSE 9 END,
            'status', 'status 503 is not in 200-299', now() - t * interval '1 minute', 30 + t % 60
     FROM generate_series(1, $TARGETS) t"
sql "INSERT INTO ${table}_incidents (target, location, started_at, ended_at, error_kind,
         failed_checks, last_error_text)
     SELECT 'https://site' || t || '.example.test/health', '', s, s + interval '2 hours',
            'status', 240, 'status 503 is not in 200-299'
     FROM generate_series(1, $TARGETS) t,
          generate_series(now() - interval '$DAYS days', now() - interval '3 hours',
                          (t % 20 + 5) * interval '1 day') s;
     INSERT INTO ${table}_incidents (target, location, started_at, error_kind, failed_checks,
         last_error_text)
     SELECT target, location, since, 'status', 5, last_error_text
     FROM ${table}_status WHERE state = 'down'"
sql "ANALYZE ${table}_hourly; ANALYZE ${table}_daily; ANALYZE ${table}_status; ANALYZE ${table}_incidents"
generated=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
counts=$(sql "SELECT (SELECT count(*) FROM ${table}_hourly) || ' hourly, ' ||
                     (SELECT count(*) FROM ${table}_daily) || ' daily, ' ||
                     (SELECT count(*) FROM ${table}_status) || ' statuses, ' ||
                     (SELECT count(*) FROM ${table}_incidents) || ' incidents'")
log "generated $counts in ${generated}s"

# time_runs NAME ARGS...: REPEAT runs of report, min / median / max wall time in ms.
time_runs() {
    local name=$1 times=() start end
    shift
    for _ in $(seq "$REPEAT"); do
        start=$(date +%s%N)
        "$bin" report --table "$table" "$@" >/dev/null 2>"$work/report.log" ||
            { cat "$work/report.log" >&2; exit 1; }
        end=$(date +%s%N)
        times+=($(((end - start) / 1000000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v name="$name" '
        { t[NR] = $1 } END { printf "| %-22s | %6d | %6d | %6d |\n", name, t[1], t[int((NR + 1) / 2)], t[NR] }'
}

echo
echo "report benchmark: $TARGETS targets over $DAYS days, $counts (generated in ${generated}s), $REPEAT runs each"
echo
echo "| report | min ms | median ms | max ms |"
echo "|---|---:|---:|---:|"
time_runs "--format table"
time_runs "--format json" --format json
time_runs "--format csv" --format csv
time_runs "--html (and table)" --html "$work/status.html"
echo
echo "plans (report --explain):"
echo
"$bin" report --table "$table" --explain | sed 's/^/    /'
if "$bin" report --table "$table" --explain | grep -E "Seq Scan on ${table}(_d[0-9]+|_before[0-9]+)? " >/dev/null; then
    echo "a plan scans the raw results" >&2
    exit 1
fi
echo "no plan reads the raw results table ($table) or its partitions"
if [[ -n $HTML_OUT ]]; then
    "$bin" report --table "$table" --html "$HTML_OUT" >/dev/null
    log "status page written to $HTML_OUT"
fi
