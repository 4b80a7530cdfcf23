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
echo "cross: ready (rustc $(/usr/bin/rustc --version | cut -d' ' -f2), overlay $OVERLAY)"
