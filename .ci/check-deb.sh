#!/usr/bin/env bash
# Builds the generic .deb (cargo-deb) and checks it the way a user meets it, on this machine
# (as root; no systemd runs as PID 1 here, so nothing is started):
#   dpkg-deb -I/-c: control fields, files, conffiles;  lintian: no error or warning;
#   install: user `vigil` in video and render, /etc/vigil/vigil.toml root:vigil 0640, the unit
#     installed and not enabled, the binary runs, the template fails check-config only on the
#     placeholders it names, and config/set works as user vigil (check-deb-config-set.sh);
#   upgrade to a newer revision: an edited conffile and the data directory are kept;
#   remove: the binary goes, the conffile and the data stay;  purge: both go, the user stays.
# The package's binary is the debug build the tests made, standing in for the release binary
# (the same files and libraries; a release build would add minutes to CI); `make deb` builds
# the release package.
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "check-deb: installs the package on this machine: run as root" >&2; exit 1; }
out=target/deb-check
binary=target/debug/vigil
[[ -x $binary ]] || { echo "check-deb: $binary is not built" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/target/release"
strip -o "$out/target/release/vigil" "$binary"
.ci/stage-deb.sh

# --fast: the same files, compressed less (5 s instead of 23 s a package here); `make deb`
# builds the release package with cargo-deb's default compression.
build() { # revision → path of the .deb
  CARGO_TARGET_DIR=$out/target cargo deb -p vigil --no-build --fast --deb-revision "$1" --output "$out/vigil_$1.deb" >&2
  echo "$out/vigil_$1.deb"
}
fail() { echo "check-deb: $*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' vigil 2>/dev/null | grep -q installed; then
  fail "a vigil package is installed on this machine already; dpkg -P vigil first"
fi
deb=$(build 1)

# The package as built.
info=$(dpkg-deb -I "$deb")
for field in "Package: vigil" "Architecture: $(dpkg --print-architecture)" "Section: video" \
             "Depends: .*libgstreamer1.0-0" "Depends: .*gstreamer1.0-plugins-good" "Depends: .*gstreamer1.0-libav"; do
  grep -q "^ *$field" <<<"$info" || fail "dpkg-deb -I: no \`$field\`:"$'\n'"$info"
done
files=$(dpkg-deb -c "$deb")
for f in ./usr/bin/vigil ./etc/vigil/vigil.toml ./usr/lib/systemd/system/vigil.service \
         ./usr/lib/sysusers.d/vigil.conf ./usr/share/vigil/models/shapes-v1/manifest.toml \
         ./usr/share/vigil/models/shapes-v1/reference/detections.json ./usr/share/doc/vigil/systemd.md; do
  grep -q " $f\$" <<<"$files" || fail "dpkg-deb -c: $f is missing"
done
grep -q ' \./usr/lib/vigil/libonnxruntime\.so\.' <<<"$files" || fail "dpkg-deb -c: no ONNX Runtime library"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/vigil/vigil.toml ||
  fail "/etc/vigil/vigil.toml is not a conffile"
lintian --fail-on error,warning "$deb" ||
  fail "lintian found problems (above)"

# Install (and purge it again whatever happens below, so that a failed check leaves nothing).
trap 'dpkg -P vigil >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >"$out/install.log" 2>&1 || { cat "$out/install.log" >&2; fail "dpkg -i failed"; }
id -nG vigil | tr ' ' '\n' | grep -qx video || fail "user vigil is not in group video"
id -nG vigil | tr ' ' '\n' | grep -qx render || fail "user vigil is not in group render"
[[ $(stat -c '%U:%G %a' /etc/vigil/vigil.toml) == "root:vigil 640" ]] ||
  fail "/etc/vigil/vigil.toml is $(stat -c '%U:%G %a' /etc/vigil/vigil.toml), not root:vigil 640"
[[ -e /etc/systemd/system/multi-user.target.wants/vigil.service ]] && fail "the unit was enabled at install"
/usr/bin/vigil --version >/dev/null || fail "the installed vigil does not run"
set +e
checked=$(/usr/bin/vigil check-config /etc/vigil/vigil.toml 2>&1)
code=$?
set -e
[[ $code == 2 ]] || fail "check-config of the template exited $code:"$'\n'"$checked"
grep -q "/etc/vigil/ca.pem" <<<"$checked" || fail "check-config does not name the missing CA:"$'\n'"$checked"
# Remote configuration on the installed package, as its user (restores the template after).
"$(dirname "$0")/check-deb-config-set.sh"

# Upgrade: the operator's edit and the data survive.
sed -i 's/^device_id = "change-me"/device_id = "gate-01"/' /etc/vigil/vigil.toml
mkdir -p /var/lib/vigil/store && echo kept >/var/lib/vigil/store/probe
deb2=$(build 2)
dpkg -i --force-confold "$deb2" >"$out/upgrade.log" 2>&1 || { cat "$out/upgrade.log" >&2; fail "upgrade failed"; }
[[ $(dpkg-query -W -f='${Version}' vigil) == *-2 ]] || fail "the upgrade did not install revision 2"
grep -q '^device_id = "gate-01"' /etc/vigil/vigil.toml || fail "the upgrade replaced the edited configuration"
[[ -f /var/lib/vigil/store/probe ]] || fail "the upgrade lost /var/lib/vigil"

# Remove, then purge.
dpkg -r vigil >"$out/remove.log" 2>&1 || { cat "$out/remove.log" >&2; fail "dpkg -r failed"; }
[[ -e /usr/bin/vigil ]] && fail "dpkg -r left /usr/bin/vigil"
[[ -f /etc/vigil/vigil.toml && -f /var/lib/vigil/store/probe ]] || fail "dpkg -r removed the configuration or the data"
dpkg -P vigil >"$out/purge.log" 2>&1 || { cat "$out/purge.log" >&2; fail "dpkg -P failed"; }
[[ -e /etc/vigil/vigil.toml || -e /var/lib/vigil ]] && fail "dpkg -P left /etc/vigil/vigil.toml or /var/lib/vigil"
id vigil >/dev/null 2>&1 || fail "purge removed the user vigil (files elsewhere may still be its own)"
echo "check-deb: $deb: fields, files, conffile, lintian; install, upgrade (conffile and data kept), remove, purge"
