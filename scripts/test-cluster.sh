#!/usr/bin/env bash
# The cluster tests (tests/cluster.rs, issue 15): starts a three-node Kafka
# cluster and a PostgreSQL of its own with scripts/stack.sh, then runs
#   cargo test --locked --test cluster -- --ignored --test-threads=1
# Each test kills, stops and restarts brokers, so they run one at a time.
# A stack this script started is stopped again at the end.
#
#   MF_CLUSTER_ROUNDS       kill/restart rounds per test; default 3, the full
#                           run (scripts/test.sh runs 1, to keep CI short)
#   MF_CLUSTER_STACK_DIR    the cluster's stack dir; default $REPO/.stack-cluster
#   MF_CLUSTER_KAFKA_PORT   node 1's PLAINTEXT port; default 29092 (node i: +10*(i-1))
#   MF_CLUSTER_CONTROLLER_PORT  node 1's controller port; default 29093
#   MF_CLUSTER_PG_PORT      its PostgreSQL; default 25432
#
# Its own stack dir and ports keep it apart from scripts/test.sh's one-node
# stack (19092, 15432), so it runs beside that one or alone. Extra arguments go
# to the test binary, e.g. a test name or --nocapture for the measured timings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export MF_STACK_DIR=${MF_CLUSTER_STACK_DIR:-$PWD/.stack-cluster}
export MF_KAFKA_NODES=3
export MF_KAFKA_PORT=${MF_CLUSTER_KAFKA_PORT:-29092}
export MF_KAFKA_CONTROLLER_PORT=${MF_CLUSTER_CONTROLLER_PORT:-29093}
export MF_KAFKA_SSL_PORT=$((MF_KAFKA_PORT + 2)) MF_KAFKA_SASL_PORT=$((MF_KAFKA_PORT + 3))
export MF_PG_PORT=${MF_CLUSTER_PG_PORT:-25432}
# Plain listeners: TLS is scripts/test.sh's concern, not failover's.
export MF_TLS=0
export MF_CLUSTER_ROUNDS=${MF_CLUSTER_ROUNDS:-3}

started=$SECONDS
if ! bash scripts/stack.sh status >/dev/null 2>&1; then
    trap 'bash scripts/stack.sh stop || true' EXIT
fi
# Not `eval "$(...)"`: that would hide a failed start.
stack_env=$(bash scripts/stack.sh start)
eval "$stack_env"
echo "test-cluster: cluster up at $KAFKA_BROKER after $((SECONDS - started)) s; $MF_CLUSTER_ROUNDS round(s) per test" >&2

cargo test --locked --test cluster -- --ignored --test-threads=1 "$@"
echo "test-cluster: done in $((SECONDS - started)) s" >&2
