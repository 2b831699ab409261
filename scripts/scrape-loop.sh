#!/usr/bin/env bash
# Scrapes http://127.0.0.1:PORT/metrics five times a second (75 times Prometheus's
# default rate) until killed: the load under which bench-pub.sh and bench-sub.sh
# measure what --metrics-listen costs. A refused connection (the process not yet
# listening, or gone) is skipped.
#
#   bash scripts/scrape-loop.sh PORT &
set -uo pipefail
port=$1
while :; do
    if exec 3<>"/dev/tcp/127.0.0.1/$port"; then
        printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
        cat <&3 >/dev/null
        exec 3<&-
    fi 2>/dev/null
    sleep 0.2
done
