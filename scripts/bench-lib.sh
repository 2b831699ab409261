# shellcheck shell=bash
# Sourced by every bench-*.sh script: the helpers that only print or compute
# (messages, log timestamps, min / median / max), without side effects.

log() { echo "bench: $*" >&2; }
warn() { echo "bench: WARNING: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

# The millisecond stamp of the first line of a metrics-flow log holding the text,
# or nothing.
log_ms() { # logfile text
    local stamp
    stamp=$(grep -m1 -F "$2" "$1" | sed -n 's/^\[\([^ ]*\) .*/\1/p')
    if [[ -n $stamp ]]; then date -d "$stamp" +%s%3N; fi
}

# min / median / max of the numbers on stdin, in the printf format given (%.2f by
# default). The median of an even count is the lower middle one.
spread() { # [format]
    sort -g | awk -v f="${1:-%.2f}" '{ v[NR] = $1 } END { printf f " / " f " / " f, v[1], v[int((NR + 1) / 2)], v[NR] }'
}

# The median of the numbers on stdin, "?" lines left out; "?" if none is left.
median() {
    grep -v -F '?' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "?" }'
}

# The names, one per line, in the order of round ROUND: as given in odd rounds, turned
# in even ones, so that no contender always runs first on a shared machine.
turned_order() { # round name...
    local round=$1
    shift
    if ((round % 2 == 0)); then printf '%s\n' "$@" | tac; else printf '%s\n' "$@"; fi
}
