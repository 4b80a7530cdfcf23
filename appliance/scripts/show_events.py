"""Formats `mosquitto_sub -v` lines from vigil's topics for a person watching the demo."""
import json
import sys

for line in sys.stdin:
    topic, _, payload = line.rstrip("\n").partition(" ")
    try:
        m = json.loads(payload)
    except ValueError:
        print(topic, payload, flush=True)
        continue
    if topic.endswith("/events"):
        b = m["box"]
        print(
            f"{m['frame']['captured_at']}  {m['camera_id']}  {m['label']:<8} {m['score']:.2f}  "
            f"box=({b['x1']:.0f},{b['y1']:.0f})-({b['x2']:.0f},{b['y2']:.0f})  "
            f"{m['latency']['total_ms']:.1f} ms  id={m['id']}",
            flush=True,
        )
    else:
        model = (m.get("model") or {}).get("name")
        print(f"{topic}: {m.get('state')} (vigil {m.get('version')}, model {model})", flush=True)
