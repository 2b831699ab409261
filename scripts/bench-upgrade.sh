#!/usr/bin/env bash
# How long sub's first start takes to upgrade a database written by the last release
# before partitioning (schema version 2, tests/fixtures/schema_v2.sql): BENCH_ROWS
# (1000000) results of BENCH_TARGETS (1000) targets over BENCH_DAYS (30) days, made
# with generate_series, then `sub --once` migrates it to the current version (unique
# ids, day partitions, and the rollups, statuses and incidents derived from every
# row). Prints the migration's time from sub's own log, and the time per million rows.
#
#   bash scripts/bench-upgrade.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROWS=${BENCH_ROWS:-1000000}
TARGETS=${BENCH_TARGETS:-1000}
DAYS=${BENCH_DAYS:-30}

# shellcheck source=scripts/bench-prelude.sh
source scripts/bench-prelude.sh

table=bench_upgrade_$(date +%s)
work=$(mktemp -d)
cleanup() {
    rm -rf "$work"
    drop_results "$table" || true
}
trap cleanup EXIT

log "a version-2 table with $ROWS rows ($table)"
sed "s/{table}/$table/g" tests/fixtures/schema_v2.sql | psql "$POSTGRESQL_DSN" -X -q -v ON_ERROR_STOP=1
# Each target fails three checks in a row out of every 50, so incidents open and
# close across the history (at sub's default thresholds, 3 and 2).
sql "INSERT INTO $table (id, checked_at, target, ok, http_status, latency_ms, error_kind,
                         error_text, pattern, pattern_found, kafka_partition, kafka_offset)
     SELECT gen_random_uuid(),
            now() - interval '$DAYS days' + n * (interval '$DAYS days' / $ROWS),
            'https://site' || n % $TARGETS || '.example.test/health',
            ok, CASE WHEN ok THEN 200 ELSE 503 END, 1 + n % 400,
            CASE WHEN NOT ok THEN 'status' END,
            CASE WHEN NOT ok THEN 'status 503 is not in 200-299' END,
            'all is well', ok, 0, n
     FROM generate_series(1, $ROWS) n, LATERAL (SELECT (n / $TARGETS) % 50 >= 3 AS ok) o"
sql "ANALYZE $table"

bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$KAFKA_BROKER" --create --topic "$table" --partitions 1 \
    --replication-factor 1 >/dev/null
"$producer" "$KAFKA_BROKER" "$table" 1
log "sub --once upgrades it"
"$bin" sub --once --topic "$table" --table "$table" --group "$table" 2>"$work/sub.log" ||
    { cat "$work/sub.log" >&2; exit 1; }
grep -E "migrating|derived" "$work/sub.log" >&2
# From the first "migrating" line to the "storing into" line that follows the last.
seconds=$(awk '
    function at(line) { split(substr(line, 2, 23), p, /[-T:.Z]/); return p[4]*3600 + p[5]*60 + p[6] + p[7]/1000 }
    /migrating/ && !start { start = at($0) }
    /storing into/ { end = at($0) }
    END { printf "%.1f", end - start }' "$work/sub.log")
kept=$(sql "SELECT count(*) FROM $table")
echo
echo "upgrade of $ROWS rows ($TARGETS targets, $DAYS days) from schema version 2: ${seconds} s," \
    "$(awk -v s="$seconds" -v n="$ROWS" 'BEGIN { printf "%.1f", s * 1000000 / n }') s per million rows;" \
    "rows afterwards: $kept, statuses: $(sql "SELECT count(*) FROM ${table}_status")," \
    "incidents: $(sql "SELECT count(*) FROM ${table}_incidents")"
