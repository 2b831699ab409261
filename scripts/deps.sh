#!/usr/bin/env bash
# Install the build and runtime prerequisites of metrics-flow, but only the
# ones that are missing. Safe to run on every CI run: when everything is
# present it prints nothing and never touches apt.
set -euo pipefail

log() { echo "deps: $*" >&2; }

missing=()

# A package counts as present only when dpkg says it is fully installed;
# "deinstall ok config-files" (removed but not purged) must not fool us.
want_pkg() {
    local pkg=$1 status
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
}

# Some tools may come from somewhere other than Debian's package (a JDK
# unpacked by hand, for example); the command being there is what matters.
want_cmd() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
}

# rdkafka (librdkafka built by its own configure and make, with the libz and
# openssl features) and the openssl crate.
want_pkg pkg-config
want_pkg libssl-dev
want_pkg zlib1g-dev
want_pkg make
want_pkg build-essential
# scripts/stack.sh: a private PostgreSQL cluster (initdb, pg_ctl, psql), TLS
# material (openssl CLI) and Kafka run from Maven Central jars (java, mvn).
want_pkg postgresql
want_pkg openssl
want_cmd java openjdk-17-jre-headless
want_cmd mvn maven
# tests/metrics.rs checks the /metrics endpoint's output with promtool.
want_cmd promtool prometheus

((${#missing[@]} == 0)) && exit 0

as_root=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    as_root=(sudo)
fi

# apt's own output is long; keep it in a file and show it only on failure.
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
apt_run() {
    if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive "$@" >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        log "failed: $*"
        exit 1
    fi
}

# One update for the whole run: the package lists may be absent or stale on a
# fresh machine, and updating is the slow part, so do it only when needed.
apt_run apt-get update -q
for pkg in "${missing[@]}"; do log "installing $pkg"; done
apt_run apt-get install -y -q --no-install-recommends "${missing[@]}"
