#!/usr/bin/env bash
# The demo: starts the local stack and a local website, runs pub and sub against it,
# and shows the stored rows with psql. The stack keeps running afterwards so the rows
# can be explored; `scripts/stack.sh stop` stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh
stack_env=$(bash scripts/stack.sh start)
eval "$stack_env"
cargo build --release --locked
bin=target/release/metrics-flow

# A small local website: one healthy page, one missing page.
site=$(mktemp -d)
echo "<html><body>metrics-flow demo: all is well</body></html>" >"$site/index.html"
site_port=${MF_DEMO_SITE_PORT:-18080}
python3 -m http.server "$site_port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
site_pid=$!
subscriber_pid=
cleanup() {
    kill "$site_pid" 2>/dev/null || true
    [[ -n $subscriber_pid ]] && kill -INT "$subscriber_pid" 2>/dev/null || true
    rm -rf "$site"
}
trap cleanup EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$site_port") 2>/dev/null && break
    sleep 0.1
done

export KAFKA_TOPIC=demo POSTGRESQL_TABLE=demo_checks KAFKA_GROUP=demo
before=$(psql "$POSTGRESQL_DSN" -Atc "SELECT count(*) FROM demo_checks" 2>/dev/null || echo 0)

"$bin" sub &
subscriber_pid=$!

rounds=3
for round in $(seq "$rounds"); do
    echo "demo: pub round $round of $rounds" >&2
    "$bin" pub --once --pattern 'all is well' \
        --target "http://127.0.0.1:$site_port/" \
        --target "http://127.0.0.1:$site_port/missing" \
        --target "http://127.0.0.1:1/"
done

want=$((before + rounds * 3))
echo "demo: waiting for sub to store $want rows" >&2
for _ in $(seq 600); do
    have=$(psql "$POSTGRESQL_DSN" -Atc "SELECT count(*) FROM demo_checks" 2>/dev/null || echo 0)
    [[ $have -ge $want ]] && break
    sleep 0.1
done
kill -INT "$subscriber_pid"
wait "$subscriber_pid"
subscriber_pid=

psql "$POSTGRESQL_DSN" -c "
  SELECT checked_at, target, ok, http_status, round(latency_ms::numeric, 2) AS latency_ms,
         error_kind, pattern_found
  FROM demo_checks ORDER BY checked_at DESC, target LIMIT $((rounds * 3))"
echo "demo: what report makes of them:" >&2
"$bin" report
echo "demo: the stack is still running; explore with: psql \"$POSTGRESQL_DSN\"" >&2
