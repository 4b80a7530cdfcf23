#!/usr/bin/env bash
# The aarch64 build end to end under qemu-aarch64: a `test://ball` camera → ONNX Runtime's
# aarch64 library (the PyPI wheel's, fetched by cross/setup.sh) running the shipped INT8 model →
# sled → a local mosquitto, until the broker has an event from it. qemu runs with the prefix
# cross/setup.sh makes (an aarch64 /proc/cpuinfo for ONNX Runtime's CPU detection; every other
# path falls through to /). qemu is much slower than the machine, so the camera's budget is a
# minute and one observation starts an event.
set -euo pipefail
binary=${1:-target/cross/aarch64-unknown-linux-gnu/release/vigil}
ort=$(ls target/cross/ort/libonnxruntime.so.[0-9]* 2>/dev/null | head -1)
[[ -x $binary ]] || { echo "qemu-smoke: $binary is not built (make aarch64)" >&2; exit 1; }
[[ -n $ort ]] || { echo "qemu-smoke: no aarch64 ONNX Runtime in target/cross/ort (make cross-setup)" >&2; exit 1; }
[[ -f target/cross/qemu-root/proc/cpuinfo ]] || { echo "qemu-smoke: no qemu prefix (make cross-setup)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
cat >"$work/vigil.toml" <<EOF
device_id = "qemu-smoke"
data_dir = "$work/data"
[mqtt]
url = "mqtt://127.0.0.1:$port"
metrics_interval_s = 0
[model]
bundle = "$PWD/models/bundles/shapes-v1"
[inference]
backend = "onnxruntime"
ort_library = "$PWD/$ort"
[[rule]]
name = "any"
min_frames = 1
[[camera]]
id = "ball"
uri = "test://ball"
latency_budget_ms = 60000
EOF
mosquitto_sub -h 127.0.0.1 -p "$port" -t vigil/qemu-smoke/events -C 1 -W 300 >"$work/event.json" &
sub=$!
pids+=($sub)
GST_REGISTRY_FORK=no VIGIL_LOG=info,ort=warn qemu-aarch64 -L "$PWD/target/cross/qemu-root" "$binary" run --config "$work/vigil.toml" \
  2>"$work/vigil.log" &
vigil=$!
pids+=($vigil)
# Until the event arrives, vigil dies, or mosquitto_sub gives up (-W).
while kill -0 "$sub" 2>/dev/null && kill -0 "$vigil" 2>/dev/null; do sleep 1; done
sleep 1
if ! grep -q '"phase":"new"' "$work/event.json"; then
  echo "qemu-smoke: no event from the aarch64 vigil (within 300 s, or it died); its log:" >&2
  tail -40 "$work/vigil.log" >&2
  exit 1
fi
echo "qemu-smoke: the aarch64 vigil under qemu sent an event: $(cut -c1-160 "$work/event.json")"
