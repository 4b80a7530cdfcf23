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
        zones = ",".join(m["zones"]) or "-"
        reason = f" ({m['end_reason']})" if m.get("end_reason") else ""
        print(
            f"{m['last']}  {m['camera_id']}  {m['phase']:<6}{reason:<10} {m['rule']}: {m['label']:<8} "
            f"track {m['track_id']:<4} best {m['best_score']:.2f}  "
            f"box=({b['x1']:.0f},{b['y1']:.0f})-({b['x2']:.0f},{b['y2']:.0f})  zones={zones}  "
            f"{m['dwell_s']:.1f} s  id={m['id']}",
            flush=True,
        )
    else:
        model = (m.get("model") or {}).get("name")
        print(f"{topic}: {m.get('state')} (vigil {m.get('version')}, model {model})", flush=True)
