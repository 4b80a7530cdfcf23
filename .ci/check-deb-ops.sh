#!/usr/bin/env bash
# Builds the operator's package, vigil-ops, and checks it: amd64 from the debug binary the tests
# made (stripped; `make deb-ops` builds the release package) — control fields, files, lintian,
# install, the binary runs, remove; arm64 from the cross build `make aarch64` made — control
# fields (hand-written depends, no $auto), an aarch64 binary, lintian. The device's package must
# not carry it, nor vigil-ops the device's binary.
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "check-deb-ops: installs the package on this machine: run as root" >&2; exit 1; }
fail() { echo "check-deb-ops: $*" >&2; exit 1; }
out=target/deb-check-ops
binary=target/debug/vigil-ops
[[ -x $binary ]] || fail "$binary is not built"
rm -rf "$out" && mkdir -p "$out/target/release"
strip -o "$out/target/release/vigil-ops" "$binary"
if dpkg-query -W -f='${Status}' vigil-ops 2>/dev/null | grep -q installed; then
  fail "a vigil-ops package is installed on this machine already; dpkg -P vigil-ops first"
fi
deb="$out/vigil-ops_amd64.deb"
# --fast: the same files, compressed less (as in check-deb.sh).
CARGO_TARGET_DIR=$out/target cargo deb -p vigil-ops --no-build --fast --output "$deb" >&2
info=$(dpkg-deb -I "$deb")
for field in "Package: vigil-ops" "Architecture: $(dpkg --print-architecture)" "Section: net" "Depends: .*libc6"; do
  grep -q "^ *$field" <<<"$info" || fail "dpkg-deb -I: no \`$field\`:"$'\n'"$info"
done
files=$(dpkg-deb -c "$deb")
for f in ./usr/bin/vigil-ops ./usr/share/doc/vigil-ops/fleet.md ./usr/share/vigil-ops/grafana/vigil-fleet.json; do
  grep -q " $f\$" <<<"$files" || fail "dpkg-deb -c: $f is missing"
done
grep -q ' \./usr/bin/vigil$' <<<"$files" && fail "the operator's package carries the device's binary"
lintian --fail-on error,warning "$deb" || fail "lintian found problems (above)"
trap 'dpkg -P vigil-ops >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >"$out/install.log" 2>&1 || { cat "$out/install.log" >&2; fail "dpkg -i failed"; }
/usr/bin/vigil-ops --version >/dev/null || fail "the installed vigil-ops does not run"
/usr/bin/vigil-ops fleet ota push --help | grep -q -- "--max-failures" || fail "vigil-ops fleet ota push --help"
dpkg -P vigil-ops >"$out/purge.log" 2>&1 || { cat "$out/purge.log" >&2; fail "dpkg -P failed"; }
[[ -e /usr/bin/vigil-ops ]] && fail "dpkg -P left /usr/bin/vigil-ops"
echo "check-deb-ops: $deb: fields, files, lintian; install, runs, purge"

target=aarch64-unknown-linux-gnu
cross=target/cross/$target/release/vigil-ops
[[ -x $cross ]] || fail "$cross is not built (make aarch64)"
mkdir -p "$out/target/$target/release"
cp "$cross" "$out/target/$target/release/vigil-ops"
deb="$out/vigil-ops_arm64.deb"
CARGO_TARGET_DIR=$out/target cargo deb -p vigil-ops --variant arm64 --target $target --no-build --no-strip --fast \
  --output "$deb" >&2
info=$(dpkg-deb -I "$deb")
for field in "Package: vigil-ops" "Architecture: arm64" "Depends: .*libc6 (>= 2.34)" "Depends: .*libgstreamer1.0-0"; do
  grep -q "^ *$field" <<<"$info" || fail "dpkg-deb -I (arm64): no \`$field\`:"$'\n'"$info"
done
grep -q '\$auto' <<<"$info" && fail "dpkg-deb -I (arm64): \$auto left in the depends"
dpkg-deb -x "$deb" "$out/unpacked-arm64"
file -L "$out/unpacked-arm64/usr/bin/vigil-ops" | grep -q "ARM aarch64" || fail "usr/bin/vigil-ops is not aarch64"
lintian --fail-on error,warning "$deb" || fail "lintian found problems in the arm64 package (above)"
echo "check-deb-ops: $deb: fields, an aarch64 binary, lintian"
