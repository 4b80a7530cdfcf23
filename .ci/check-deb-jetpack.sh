#!/usr/bin/env bash
# Builds the JetPack 6 variant of the .deb (arm64) from the aarch64 release binary `make aarch64`
# made, and checks it as far as an amd64 machine can: control fields (arm64, the hand-written L4T,
# TensorRT and CUDA depends, no $auto left), files, the conffile, that the binary and the ONNX
# Runtime library inside are aarch64, and lintian. Installing it needs a Jetson on JetPack 6
# (docs/packaging.md). The binary is the CPU/GStreamer build (no `--features tensorrt`: CI has
# no TensorRT to link); the package around it is the same.
set -euo pipefail
target=aarch64-unknown-linux-gnu
binary=target/cross/$target/release/vigil
out=target/deb-check-jetpack
fail() { echo "check-deb-jetpack: $*" >&2; exit 1; }
[[ -x $binary ]] || fail "$binary is not built (make aarch64)"
.ci/stage-deb.sh arm64
rm -rf "$out" && mkdir -p "$out/target/$target/release"
cp "$binary" "$out/target/$target/release/vigil"
deb="$out/vigil_jetpack_arm64.deb"
# --fast: the same files, compressed less (as in check-deb.sh).
CARGO_TARGET_DIR=$out/target cargo deb -p vigil --variant jetpack --target $target --no-build --no-strip --fast \
  --output "$deb" >&2

info=$(dpkg-deb -I "$deb")
for field in "Package: vigil" "Architecture: arm64" "Depends: .*libc6 (>= 2.34)" \
             "Depends: .*libgstreamer1.0-0 (>= 1.20)" "Depends: .*nvidia-l4t-core (>= 36.3)" \
             "Depends: .*nvidia-l4t-gstreamer" "Depends: .*nvidia-l4t-multimedia" "Depends: .*libnvinfer10" \
             "Depends: .*libnvonnxparsers10" "Depends: .*gstreamer1.0-libav"; do
  grep -q "^ *$field" <<<"$info" || fail "dpkg-deb -I: no \`$field\`:"$'\n'"$info"
done
grep -q '\$auto' <<<"$info" && fail "dpkg-deb -I: \$auto left in the depends"
files=$(dpkg-deb -c "$deb")
for f in ./usr/bin/vigil ./etc/vigil/vigil.toml ./usr/lib/systemd/system/vigil.service ./usr/lib/sysusers.d/vigil.conf; do
  grep -q " $f\$" <<<"$files" || fail "dpkg-deb -c: $f is missing"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/vigil/vigil.toml ||
  fail "/etc/vigil/vigil.toml is not a conffile"
unpacked="$out/unpacked"
dpkg-deb -x "$deb" "$unpacked"
file -L "$unpacked/usr/bin/vigil" | grep -q "ARM aarch64" || fail "usr/bin/vigil is not an aarch64 executable"
ort=$(ls "$unpacked"/usr/lib/vigil/libonnxruntime.so.* 2>/dev/null | head -1)
[[ -n $ort ]] || fail "dpkg-deb -c: no ONNX Runtime library"
file -L "$ort" | grep -q "ARM aarch64" || fail "$(basename "$ort") is not an aarch64 library"
lintian --fail-on error,warning "$deb" || fail "lintian found problems (above)"
echo "check-deb-jetpack: $deb: arm64, L4T/TensorRT/CUDA depends, files, conffile, aarch64 binary and ONNX Runtime, lintian"
