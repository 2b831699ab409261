#!/usr/bin/env bash
# Drops a results table and every table sub derives from it, on $POSTGRESQL_DSN:
# the benchmarks' clean-up.
#
#   bash scripts/drop-results.sh TABLE
set -euo pipefail
t=$1
psql "$POSTGRESQL_DSN" -X -q -v ON_ERROR_STOP=1 -Atc "SET client_min_messages = warning;
    DROP TABLE IF EXISTS $t, ${t}_rejected, ${t}_offsets, ${t}_migrations,
    ${t}_hourly, ${t}_daily, ${t}_status, ${t}_incidents CASCADE"
