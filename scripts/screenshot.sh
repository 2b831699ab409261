#!/usr/bin/env bash
# The README's picture of the status page: a small history made by
# scripts/bench-report.sh (10 targets, one of them down, 90 days), its `report --html` page, and a
# screenshot of it taken by headless Chromium (Debian's `chromium`, installed
# here if missing) into docs/status-page.png, or the file given as $1.
#
#   bash scripts/screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(realpath -m "${1:-docs/status-page.png}")

if ! command -v chromium >/dev/null; then
    echo "screenshot: installing chromium" >&2
    if ((EUID == 0)); then apt-get install -y -q chromium >/dev/null; else sudo apt-get install -y -q chromium >/dev/null; fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
BENCH_TARGETS=10 BENCH_DAYS=90 BENCH_REPEAT=1 BENCH_HTML_OUT="$work/status.html" \
    bash scripts/bench-report.sh >/dev/null
# --no-sandbox: Chromium refuses to run as root with its sandbox on.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$work/profile" --window-size=1000,1100 \
    --screenshot="$out" "file://$work/status.html" 2>"$work/chromium.log" ||
    { cat "$work/chromium.log" >&2; exit 1; }
[[ -s $out ]] || { echo "screenshot: chromium wrote no $out" >&2; exit 1; }
echo "screenshot: $out" >&2
