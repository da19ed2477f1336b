#!/usr/bin/env bash
# Runs `systemd-analyze verify` on the units, with /usr/bin/posd replaced by a built binary
# (verify checks that ExecStart exists). Usage: systemd/verify.sh [PATH-TO-POSD]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$here/../target}/debug/posd}"
[ -x "$bin" ] || { echo "verify.sh: $bin is not an executable posd; build it first" >&2; exit 2; }
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze missing: apt-get install -y systemd" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for u in posd.service posd-replay.service posd-replay.timer posd-hub.service; do
    sed "s#/usr/bin/posd#$bin#g" "$here/$u" > "$tmp/$u"
done
out="$(cd "$tmp" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no ./posd.service ./posd-replay.service ./posd-replay.timer ./posd-hub.service 2>&1)" || {
    echo "$out" >&2; echo "systemd-analyze verify failed" >&2; exit 1; }
# verify exits 0 on some problems; any line naming one of our units is a finding.
if echo "$out" | grep -E 'posd(-replay|-hub)?\.(service|timer)' >&2; then
    echo "systemd-analyze verify reported problems in the units" >&2
    exit 1
fi
echo "systemd-analyze verify: posd.service posd-replay.service posd-replay.timer posd-hub.service OK"
