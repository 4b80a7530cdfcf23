#!/usr/bin/env bash
# The demo: a local mosquitto on a free port, vigil on the embedded default configuration (a
# synthetic camera playing a generated scene, the CPU backend), and the events shown as they
# arrive over MQTT. Stops on Ctrl-C, or after DEMO_SECONDS if set.
set -euo pipefail
cd "$(dirname "$0")/../.."
VIGIL=${1:-target/release/vigil}
WORK=$(mktemp -d /tmp/vigil-demo.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo: stopped. vigil's log: $WORK/vigil.log"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" >"$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

echo "demo: mosquitto on 127.0.0.1:$PORT; vigil on the synthetic camera (data in $WORK/data)"
echo "demo: watching vigil/# — Ctrl-C to stop"
# The subscriber writes into a FIFO that the formatter reads, so that both are processes of this
# script: stopping the subscriber ends the formatter (EOF) and `wait` collects both. (Piped, $!
# would be the formatter and the subscriber would outlive the demo, keeping a piped or scripted
# demo from returning.)
mkfifo "$WORK/events.fifo"
python3 -u appliance/scripts/show_events.py <"$WORK/events.fifo" &
pids+=($!)
mosquitto_sub -h 127.0.0.1 -p "$PORT" -v -t 'vigil/#' >"$WORK/events.fifo" &
pids+=($!)

"$VIGIL" demo --mqtt-url "mqtt://127.0.0.1:$PORT" --data-dir "$WORK/data" 2>"$WORK/vigil.log" &
pids+=($!)
vigil_pid=$!

if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
  kill -TERM "$vigil_pid" 2>/dev/null || true
  wait "$vigil_pid" || true
  sleep 0.5
else
  wait "$vigil_pid" || { echo "demo: vigil exited; last lines of its log:"; tail -n 20 "$WORK/vigil.log"; exit 1; }
fi
