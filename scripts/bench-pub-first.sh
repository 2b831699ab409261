#!/usr/bin/env bash
# Benchmark of pub's first run (issue 16): `pub --once` over BENCH_TARGETS (2000)
# targets of a local nginx, on a Kafka broker started just before and into a topic
# that does not exist yet, against the same pub's steady state on that broker.
#
#   bash scripts/bench-pub-first.sh
#
# Each of BENCH_ROUNDS (3) rounds:
#   1. restarts this script's own Kafka node (MF_STACK_DIR, default .stack-first,
#      port MF_KAFKA_PORT 39092), so the broker is as fresh as after a boot;
#   2. runs pub --once into a new topic, which pub creates: the first run;
#   3. runs it BENCH_WARM (5) more times into that topic, untimed, then
#      BENCH_STEADY (3) timed runs: the steady state;
#   4. runs `ab -n TARGETS -c CONCURRENCY` on one URL of the same nginx.
# BENCH_BIN=<path> times that binary instead of building this tree.
# Each run's phases come from pub's log: setup (process start to "checking"),
# checks (to "flushing"), flush (to "published").
#
# Figures to stdout, progress to stderr. BENCH_CONCURRENCY (32), BENCH_NGINX_PORT
# (38080). The broker is stopped at the end; its data stays in the stack dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

TARGETS=${BENCH_TARGETS:-2000}
ROUNDS=${BENCH_ROUNDS:-3}
WARM=${BENCH_WARM:-5}
STEADY=${BENCH_STEADY:-3}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
NGINX_PORT=${BENCH_NGINX_PORT:-38080}
export MF_STACK_DIR=${MF_STACK_DIR:-$REPO/.stack-first}
export MF_KAFKA_PORT=${MF_KAFKA_PORT:-39092}
export MF_KAFKA_CONTROLLER_PORT=${MF_KAFKA_CONTROLLER_PORT:-39093}
# BENCH_BIN: a binary to time instead of this tree's release build (not built then).
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/metrics-flow}

now_ms() { date +%s%3N; }

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
# shellcheck source=scripts/bench-nginx.sh
source scripts/bench-nginx.sh
WORK=$(mktemp -d)
cleanup() {
    bench_nginx_stop
    bash scripts/stack.sh stop kafka >&2 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

bash scripts/deps.sh
for tool in nginx ab /usr/bin/time; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/bench-pub.sh installs it)"
done
[[ -n ${BENCH_BIN:-} ]] || cargo build --release --locked --bin metrics-flow >&2
bench_nginx_start "$WORK/nginx" "$NGINX_PORT" || die "nginx did not listen on 127.0.0.1:$NGINX_PORT"
for ((i = 0; i < TARGETS; i++)); do echo "http://127.0.0.1:$NGINX_PORT/t$i"; done >"$WORK/targets"

restart_broker() {
    bash scripts/stack.sh stop kafka >&2
    local lines
    lines=$(bash scripts/stack.sh start kafka) || die "scripts/stack.sh start kafka failed"
    eval "$lines"
}

# run_pub TOPIC KIND ROUND: one pub --once; appends
# "kind round wall_ms setup_ms checks_ms flush_ms cpu_ms rss_kb" to $WORK/runs.
run_pub() {
    local topic=$1 kind=$2 round=$3 out=$WORK/pub.log start end checking flushing published rss cpu
    start=$(now_ms)
    /usr/bin/time -f '%M %U %S' -o "$WORK/time" env -u RUST_LOG "$BIN" pub --once \
        --targets-file "$WORK/targets" --concurrency "$CONCURRENCY" --topic "$topic" 2>"$out" ||
        { tail -n 5 "$out" >&2; die "pub failed"; }
    end=$(now_ms)
    checking=$(log_ms "$out" "] checking ")
    flushing=$(log_ms "$out" "] flushing ")
    published=$(log_ms "$out" "] published ")
    grep -q "published $TARGETS result(s), 0 failed delivery, 0 dropped" "$out" ||
        die "pub did not deliver all $TARGETS: $(grep -F '] published ' "$out")"
    read -r rss cpu < <(tail -n 1 "$WORK/time" | awk '{ printf "%d %.0f\n", $1, ($2 + $3) * 1000 }')
    echo "$kind $round $((end - start)) $((checking - start)) $((flushing - checking)) $((published - flushing)) $cpu $rss" >>"$WORK/runs"
    [[ $kind == first ]] && cp "$out" "$WORK/first-$round.log"
    return 0
}

run_ab() { # round
    local rate
    rate=$(ab -q -n "$TARGETS" -c "$CONCURRENCY" "http://127.0.0.1:$NGINX_PORT/ab" 2>&1 |
        awk '/^Requests per second/ { print $4 }')
    [[ -n $rate ]] || die "ab gave no rate"
    echo "ab $1 $rate" >>"$WORK/ab"
}

: >"$WORK/runs"
: >"$WORK/ab"
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round: restarting the broker"
    restart_broker
    topic=first_$(date +%s)_$round
    log "round $round: first pub --once, $TARGETS targets, into new topic $topic"
    run_pub "$topic" first "$round"
    for ((i = 0; i < WARM; i++)); do run_pub "$topic" warm "$round"; done
    for ((i = 0; i < STEADY; i++)); do run_pub "$topic" steady "$round"; done
    run_ab "$round"
done

field() { awk -v k="$1" -v f="$2" '$1 == k { print $f }' "$WORK/runs"; }
rates() { awk -v k="$1" -v n="$TARGETS" '$1 == k { printf "%.0f\n", 1000 * n / $3 }' "$WORK/runs"; }
first_median=$(rates first | median)
steady_median=$(rates steady | median)
cat <<EOF

pub's first run ($(nproc) cores; $TARGETS targets, concurrency $CONCURRENCY, $ROUNDS rounds,
each on a just-started broker; steady = the last $STEADY of $((WARM + STEADY)) more runs into the same topic)
min / median / max

                 wall (ms)              setup (ms)          checks (ms)         flush (ms)        checks/s
first   $(field first 3 | spread %.0f)   $(field first 4 | spread %.0f)   $(field first 5 | spread %.0f)   $(field first 6 | spread %.0f)   $(rates first | spread %.0f)
steady  $(field steady 3 | spread %.0f)   $(field steady 4 | spread %.0f)   $(field steady 5 | spread %.0f)   $(field steady 6 | spread %.0f)   $(rates steady | spread %.0f)
ab -n $TARGETS -c $CONCURRENCY: $(awk '{ print $3 }' "$WORK/ab" | spread %.0f) requests/s
pub CPU (ms)    first $(field first 7 | spread %.0f)   steady $(field steady 7 | spread %.0f)
first / steady, rate at the medians: $(awk -v a="$first_median" -v b="$steady_median" 'BEGIN { printf "%.0f%%", 100 * a / b }')
EOF
echo
echo "the first runs' logs, with the broker's own lines left out:"
for ((round = 1; round <= ROUNDS; round++)); do
    echo "--- round $round"
    grep -v ' DEBUG ' "$WORK/first-$round.log" | cut -c1-160
done
