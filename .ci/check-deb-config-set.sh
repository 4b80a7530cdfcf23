#!/usr/bin/env bash
# config/set on the installed .deb, as the package runs it: /usr/bin/vigil as user `vigil`,
# started with the package's /etc/vigil/vigil.toml (root:vigil 0640 in root:vigil 0750: not
# writable by vigil, as under the unit's ProtectSystem=strict). A change sent over MQTT must be
# applied (reply `applied`), written to /var/lib/vigil/remote/vigil.toml and run from there, and
# the package's file left as it was. Called by check-deb.sh with the package installed; restores
# /etc/vigil/vigil.toml afterwards. systemd is not PID 1 here: a loop restarts vigil on exit 75,
# as the unit's Restart= does.
set -euo pipefail

fail() { echo "check-deb-config-set: $*" >&2; [[ -f ${work:-}/vigil.log ]] && tail -40 "$work/vigil.log" >&2; exit 1; }
work=$(mktemp -d)
conf=/etc/vigil/vigil.toml
cp -p "$conf" "$work/vigil.toml.package"
pids=()
cleanup() {
  # vigil first (SIGTERM: a clean stop), then its restart loop and the broker.
  pkill -TERM -u vigil -f '^/usr/bin/vigil run' 2>/dev/null || true
  for _ in $(seq 50); do pgrep -u vigil -f '^/usr/bin/vigil run' >/dev/null || break; sleep 0.1; done
  pkill -KILL -u vigil -f '^/usr/bin/vigil run' 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  cp -p "$work/vigil.toml.package" "$conf"
  rm -rf /var/lib/vigil/remote /var/lib/vigil/config-change.json
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)

# The operator's configuration, as they would write it into the package's file.
cat >"$conf" <<EOF
device_id = "deb-check"
data_dir = "/var/lib/vigil"
[mqtt]
url = "mqtt://127.0.0.1:$port"
[model]
bundle = "/usr/share/vigil/models/shapes-v1"
[[camera]]
id = "pattern"
uri = "test://ball"
EOF
chown root:vigil "$conf"
chmod 0640 "$conf"
# What StateDirectory=vigil makes under the unit.
install -d -o vigil -g vigil -m 0750 /var/lib/vigil
as_vigil() { setpriv --reuid=vigil --regid=vigil --init-groups "$@"; }
as_vigil test -w /etc/vigil && fail "/etc/vigil is writable by vigil; the check needs it as the package leaves it"
package_sum=$(sha256sum "$conf")

# vigil under a loop that starts it again on 75 (a restart to apply, or to roll back).
(
  for _ in 1 2 3 4; do
    rc=0
    as_vigil /usr/bin/vigil run --config "$conf" >>"$work/vigil.log" 2>&1 || rc=$?
    [[ $rc == 75 ]] || break
  done
  echo "$rc" >"$work/rc"
) &
pids+=($!)

ask() { # command request-id args-json timeout → the reply
  local sub
  mosquitto_sub -p "$port" -t "vigil/deb-check/reply/$2" -C 1 -W "$4" >"$work/reply-$2" &
  sub=$!
  sleep 0.5
  mosquitto_pub -p "$port" -t "vigil/deb-check/cmd/$1" -q 1 -m "{\"request_id\": \"$2\", \"args\": $3}"
  wait "$sub" || fail "no reply to $1 ($2) within $4 s"
  cat "$work/reply-$2"
}

mosquitto_sub -p "$port" -t vigil/deb-check/status -C 1 -W 60 >/dev/null || fail "vigil did not come online"
current=$(ask config/get g1 '{}' 30)
wanted=$(python3 -c 'import json, sys
c = json.loads(sys.argv[1])["result"]
c["mqtt"]["metrics_interval_s"] = 7
print(json.dumps({"config": c, "health_window_s": 5}))' "$current")
reply=$(ask config/set s1 "$wanted" 120)
python3 -c 'import json, sys
r = json.loads(sys.argv[1])
assert r["ok"] is True and r["result"]["applied"] is True, r' "$reply" || fail "config/set was not applied: $reply"

remote=/var/lib/vigil/remote/vigil.toml
[[ $(stat -c '%U' "$remote") == vigil ]] || fail "$remote is not vigil's"
grep -q '^metrics_interval_s = 7' "$remote" || fail "$remote does not hold the change"
[[ $(sha256sum "$conf") == "$package_sum" ]] || fail "the package's $conf was changed"
grep -q "running the configuration set over MQTT, $remote" "$work/vigil.log" || fail "vigil does not say it runs $remote"
after=$(ask config/get g2 '{}' 30)
python3 -c 'import json, sys
assert json.loads(sys.argv[1])["result"]["mqtt"]["metrics_interval_s"] == 7' "$after" || fail "config/get: $after"
echo "check-deb-config-set: config/set applied as user vigil on the installed package ($remote; $conf untouched)"
