#!/usr/bin/env bash
# Checks vigil's systemd unit offline (no systemd as PID 1 needed):
# - `systemd-analyze verify` prints nothing (it exits 0 on unknown keys and typos, so any output
#   fails); ExecStart and ExecStartPre must exist, so a copy pointing at the built binary is verified;
# - `systemd-analyze security --offline=yes` rates its exposure at most 2.0.
set -euo pipefail
unit=appliance/vigil/package/vigil.service
binary=${1:-target/debug/vigil}
max_exposure=2.0
[[ -x $binary ]] || { echo "check-unit: $binary is not built (cargo build -p vigil)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -E "s#^(ExecStart|ExecStartPre)=/usr/bin/vigil #\1=$(realpath "$binary") #" "$unit" >"$work/vigil.service"
grep -q "^ExecStart=$(realpath "$binary") " "$work/vigil.service" ||
  { echo "check-unit: $unit has no ExecStart=/usr/bin/vigil line" >&2; exit 1; }
out=$(systemd-analyze verify "$work/vigil.service" 2>&1) || true
if [[ -n $out ]]; then
  echo "check-unit: systemd-analyze verify $unit:" >&2
  echo "$out" >&2
  exit 1
fi
report=$(systemd-analyze security --offline=yes --no-pager "$work/vigil.service" 2>&1)
exposure=$(sed -n 's/.*Overall exposure level for vigil.service: \([0-9.]*\).*/\1/p' <<<"$report")
[[ -n $exposure ]] || { echo "check-unit: no exposure level in:" >&2; echo "$report" >&2; exit 1; }
if ! awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }'; then
  echo "check-unit: exposure $exposure is over $max_exposure:" >&2
  grep '✗' <<<"$report" >&2 || true
  exit 1
fi
echo "check-unit: $unit verifies cleanly; exposure $exposure (at most $max_exposure)"
