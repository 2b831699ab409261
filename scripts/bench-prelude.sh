# shellcheck shell=bash
# Sourced by the bench-*.sh scripts that time sub or report: installs what is
# missing, starts the local stack, builds the release binaries, and defines the
# helpers they share. Expects to be sourced from the repository's root.

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
sql() { psql "$POSTGRESQL_DSN" -X -q -v ON_ERROR_STOP=1 -Atc "$1"; }
# drop_results TABLE: the results table and every table sub derives from it
drop_results() { bash scripts/drop-results.sh "$1"; }

bash scripts/deps.sh
stack_env=$(bash scripts/stack.sh start)
eval "$stack_env"
cargo build --release --locked --bin metrics-flow --example produce_checks
bin=${CARGO_TARGET_DIR:-target}/release/metrics-flow
producer=${CARGO_TARGET_DIR:-target}/release/examples/produce_checks

HZ=$(getconf CLK_TCK)
# CPU ticks of the given processes and all their descendants: each one's own
# (every thread) and what it reaped of its children (cutime, cstime), so that
# whatever ran under them counts once, live or gone. Fields after the command
# name, which may hold spaces: 2 ppid, 12 utime, 13 stime, 14 cutime, 15 cstime.
# A process that ends between the glob and cat makes cat fail, which under
# pipefail and set -e would end the benchmark; what is left is read all the same.
tree_ticks() { # pid...
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
        { pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
          parent[pid] = f[2]; spent[pid] = f[12] + f[13] + f[14] + f[15] }
        END {
            n = split(roots, r, " ")
            for (i = 1; i <= n; i++) root[r[i]] = 1
            for (p in parent) {
                q = p
                while (!(q in root) && (q in parent) && q > 1) q = parent[q]
                if (q in root) total += spent[p]
            }
            print total + 0
        }'
}

postmaster_pid() { head -n 1 "${MF_STACK_DIR:-.stack}/pg/data/postmaster.pid"; }
# Seconds of CPU between two tree_ticks readings.
ticks_between() { awk -v a="$1" -v b="$2" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }'; }
