#!/usr/bin/env bash
# Prepares this Debian 12 x86_64 machine to cross-build vigil for aarch64 (Jetson) and run the
# result under qemu-aarch64. Idempotent. The recipe (docs/cross.md), as measured on this machine:
# - rustup cannot fetch other targets here, so Debian's rustc-web (with its arm64 std) compiles;
# - GStreamer's arm64 -dev files come from multiarch, except libgstreamer-plugins-base1.0-dev,
#   which is not Multi-Arch: same on bookworm and is unpacked into a private overlay instead.
set -euo pipefail
OVERLAY=${VIGIL_ARM64_OVERLAY:-/opt/vigil-arm64-overlay}

PKGS=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross pkgconf qemu-user
      libgstreamer1.0-dev:arm64 libgstreamer-plugins-base1.0-0:arm64 gstreamer1.0-plugins-base:arm64 liborc-0.4-dev:arm64 file)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "cross: run as root to install: ${missing[*]}" >&2; exit 1; }
  echo "cross: installing ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

L="$OVERLAY/usr/lib/aarch64-linux-gnu"
if [ ! -f "$L/pkgconfig/gstreamer-video-1.0.pc" ]; then
  echo "cross: unpacking libgstreamer-plugins-base1.0-dev:arm64 into $OVERLAY"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq libgstreamer-plugins-base1.0-dev:arm64 >/dev/null)
  mkdir -p "$OVERLAY"
  dpkg-deb -x "$tmp"/*.deb "$OVERLAY"
  rm -rf "$tmp"
  # Its .so links point at files of the (installed) runtime package: re-aim them at /usr.
  for l in "$L"/*.so; do ln -sf "/usr/lib/aarch64-linux-gnu/$(readlink "$l")" "$l"; done
  sed -i "s|^prefix=/usr\$|prefix=$OVERLAY/usr|" "$L"/pkgconfig/*.pc
fi
# ONNX Runtime's aarch64 library, from the same PyPI release as the x86_64 one (make setup), for
# the qemu smoke run (.ci/qemu-smoke.sh).
ORT_VERSION=$(sed -n 's/^ORT_VERSION=//p' appliance/scripts/setup.sh)
ORT_DIR=target/cross/ort
if [ ! -f "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ]; then
  [ -x .venv/bin/pip ] || { echo "cross: no .venv here; run make setup first" >&2; exit 1; }
  echo "cross: fetching onnxruntime $ORT_VERSION for aarch64 (PyPI wheel)"
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --disable-pip-version-check "onnxruntime==$ORT_VERSION" --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
    --python-version 3.11 -d "$tmp"
  mkdir -p "$ORT_DIR"
  .venv/bin/python - "$tmp"/onnxruntime-*.whl "$ORT_DIR" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime.so."):
            with open(f"{out}/{name.rsplit('/', 1)[1]}", "wb") as f:
                f.write(z.read(name))
PY
  rm -rf "$tmp"
fi
# ONNX Runtime's CPU detection reads /proc/cpuinfo and the CPUs in /sys; under qemu-user on
# x86_64 it reads the host's and dies (SIGSEGV). qemu looks a path up under its -L prefix first
# and falls back to the real one, so this prefix holds only an aarch64 /proc/cpuinfo (an Orin's
# Cortex-A78AE) and a single CPU in /sys (with the host's count it still dies).
QEMU_ROOT=target/cross/qemu-root
mkdir -p "$QEMU_ROOT/proc" "$QEMU_ROOT/sys/devices/system/cpu"
echo 0 >"$QEMU_ROOT/sys/devices/system/cpu/possible"
echo 0 >"$QEMU_ROOT/sys/devices/system/cpu/present"
printf '%s\n' "processor	: 0" "BogoMIPS	: 62.50" \
  "Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" \
  "CPU implementer	: 0x41" "CPU architecture: 8" "CPU variant	: 0x0" "CPU part	: 0xd42" "CPU revision	: 1" "" \
  >"$QEMU_ROOT/proc/cpuinfo"
echo "cross: ready (rustc $(/usr/bin/rustc --version | cut -d' ' -f2), overlay $OVERLAY)"
