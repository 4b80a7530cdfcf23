#!/usr/bin/env bash
# Checks vigil's systemd unit offline (no systemd as PID 1 needed):
# - `systemd-analyze verify` prints nothing (it exits 0 on unknown keys and typos, so any output
#   fails); ExecStart and ExecStartPre must exist, so a copy pointing at the built binary is verified;
# - `systemd-analyze security --offline=yes` rates its exposure at most 2.0;
# - its ConfigurationDirectoryMode= is the mode the packages give /etc/vigil (the .deb's postinst,
#   the Yocto recipe): where they differ, systemd logs so at every start.
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
modes=(
  "$(sed -n 's/^ConfigurationDirectoryMode=\([0-7]*\)$/\1/p' "$unit")"
  "$(sed -n 's#^ *chmod \([0-7]*\) /etc/vigil$#\1#p' appliance/vigil/package/debian/postinst)"
  "$(sed -n 's#^ *install -d -m \([0-7]*\) .*{sysconfdir}/vigil$#\1#p' yocto/meta-vigil/recipes-vigil/vigil/vigil_git.bb)"
)
if [[ -z ${modes[0]} || ${modes[0]} != "${modes[1]}" || ${modes[0]} != "${modes[2]}" ]]; then
  echo "check-unit: /etc/vigil's mode: unit ConfigurationDirectoryMode=${modes[0]:-(none)}, .deb postinst" \
       "${modes[1]:-(none)}, Yocto recipe ${modes[2]:-(none)}: make them one" >&2
  exit 1
fi
echo "check-unit: $unit verifies cleanly; exposure $exposure (at most $max_exposure); /etc/vigil ${modes[0]}"
