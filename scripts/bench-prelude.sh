# Sourced by the bench-*.sh scripts that time sub or report: installs what is
# missing, starts the local stack, builds the release binaries, and defines the
# helpers they share. Expects to be sourced from the repository's root.

log() { echo "bench: $*" >&2; }
sql() { psql "$POSTGRESQL_DSN" -X -q -v ON_ERROR_STOP=1 -Atc "$1"; }
# drop_results TABLE: the results table and every table sub derives from it
drop_results() { bash scripts/drop-results.sh "$1"; }

bash scripts/deps.sh
stack_env=$(bash scripts/stack.sh start)
eval "$stack_env"
cargo build --release --locked --bin metrics-flow --example produce_checks
bin=${CARGO_TARGET_DIR:-target}/release/metrics-flow
producer=${CARGO_TARGET_DIR:-target}/release/examples/produce_checks
