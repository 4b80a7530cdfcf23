#!/usr/bin/env bash
# Installs what building, running and testing vigil needs on Debian 12 / Ubuntu 22.04 (as root):
# GStreamer with its software decoders, mosquitto, systemd-analyze (the unit's checks), lintian
# and cargo-deb (the .deb's checks), OpenSSH (the HIL rig's SSH target is tested against a real
# sshd), iproute2 (the rig's network namespace), qemu-system-x86 and mmdebstrap (the rig's
# virtual board, docs/hil.md), Prometheus (it scrapes the fleet exporter in a
# test; its service is not started), rumqttd (a second MQTT broker, from crates.io) and ONNX
# Runtime (from the PyPI wheel, in ./.venv). Idempotent: each step is skipped when its result is
# already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

ORT_VERSION=1.32.0
ONNX_VERSION=1.23.2
APT_PACKAGES=(
  pkg-config gcc g++ libclang-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
  gstreamer1.0-rtsp libgstrtspserver-1.0-dev
  mosquitto mosquitto-clients
  libfaketime
  systemd lintian
  openssh-client openssh-server iproute2
  prometheus
  qemu-system-x86 qemu-utils mmdebstrap e2fsprogs
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "setup: run as root to install: ${missing[*]}" >&2; exit 1; }
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  # Packages with a service (prometheus, mosquitto) are installed, not started: the tests start
  # their own on free ports (policy-rc.d 101 = "not allowed", invoke-rc.d's convention).
  policy=/usr/sbin/policy-rc.d made=""
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy && made=1
    trap 'rm -f $policy' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$made" ]; then rm -f $policy; trap - EXIT; fi
fi
if ! command -v cargo >/dev/null; then
  echo "setup: no cargo on PATH; install Rust >= 1.92 (rustup) and run again" >&2
  exit 1
fi
if ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.'; then
  echo "setup: installing cargo-deb 3"
  cargo install -q cargo-deb --version "^3" --locked
fi
# A second MQTT broker (the rumqtt project's), for the fleet tests (docs/fleet.md, "Brokers").
if ! rumqttd --version 2>/dev/null | grep -q ' 0\.20\.0'; then
  echo "setup: installing rumqttd 0.20.0"
  # Not --locked: the metrics 0.22.1 its lockfile names no longer compiles on Rust 1.95 (E0521);
  # cargo picks the fixed 0.22.x.
  cargo install -q rumqttd --version 0.20.0 --no-default-features
fi

if ! ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1 \
   || ! .venv/bin/python -c "import onnxruntime as o; assert o.__version__ == '$ORT_VERSION'" 2>/dev/null; then
  echo "setup: installing onnxruntime $ORT_VERSION into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "onnxruntime==$ORT_VERSION"
fi
# onnx: models/tools/quantize.py (ONNX Runtime's quantiser needs it); the recipe's pin.
if ! .venv/bin/python -c "import onnx; assert onnx.__version__ == '$ONNX_VERSION'" 2>/dev/null; then
  echo "setup: installing onnx $ONNX_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "onnx==$ONNX_VERSION"
fi
# OpenCV: tests/exporter/opencv_pipeline.py, an exporter's own pipeline (cv2.resize and
# copyMakeBorder, as YOLOX's and Ultralytics' demos pre-process) that `pack --expect` is tested
# against; pinned, as its resize rounding is what the test compares with.
# Pillow: the pipeline decodes the shapes model's grid with models/recipe/decode.py, whose
# module imports it (the recipe's pin).
OPENCV_VERSION=4.12.0.88
PILLOW_VERSION=13.0.0
if ! .venv/bin/python -c "import cv2, PIL; assert cv2.__version__ == '${OPENCV_VERSION%.*}' and PIL.__version__ == '$PILLOW_VERSION'" 2>/dev/null; then
  echo "setup: installing opencv-python-headless $OPENCV_VERSION and pillow $PILLOW_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "opencv-python-headless==$OPENCV_VERSION" "pillow==$PILLOW_VERSION"
fi
# python-tuf, the TUF reference implementation: the peer vigil's TUF client and vigil-ota are
# tested against (ota/tests/interop.rs); pinned with its signing library and that library's
# crypto backend.
TUF_VERSION=7.0.1
SSLIB_VERSION=1.6.0
CRYPTOGRAPHY_VERSION=51.0.1
if ! .venv/bin/python -c "import tuf, securesystemslib, cryptography; assert (tuf.__version__, securesystemslib.__version__, cryptography.__version__) == ('$TUF_VERSION', '$SSLIB_VERSION', '$CRYPTOGRAPHY_VERSION')" 2>/dev/null; then
  echo "setup: installing tuf $TUF_VERSION, securesystemslib $SSLIB_VERSION and cryptography $CRYPTOGRAPHY_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "tuf==$TUF_VERSION" "securesystemslib==$SSLIB_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION"
fi
# oelint-adv: the Yocto layer's linter (.ci/check-yocto.sh); pinned, as its rules change.
OELINT_VERSION=9.11.2
if ! .venv/bin/oelint-adv --version 2>/dev/null | grep -q "$OELINT_VERSION"; then
  echo "setup: installing oelint-adv $OELINT_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "oelint-adv==$OELINT_VERSION"
fi
ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1
