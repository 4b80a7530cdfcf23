"""Held-out evaluation clip: 640x480, 15 fps, 12 s (180 frames) of moving shapes, H.264 in MP4,
plus frame-exact ground truth.

The clip is four 45-frame scenes (different backgrounds and object counts), each generated
from CLIP_SEED, which no training, validation or calibration stream uses.

    python make_clip.py   ->  models/clips/shapes-eval.mp4, models/clips/shapes-eval.gt.json
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scene  # noqa: E402

MODELS = HERE.parent
CLIPS = MODELS / "clips"
WORK = MODELS / "work"
MP4 = CLIPS / "shapes-eval.mp4"
GT = CLIPS / "shapes-eval.gt.json"

CLIP_SEED = 5000
WIDTH, HEIGHT = 640, 480
FPS_N, FPS_D = 15, 1
FRAMES = 180
# (frames, objects, background) per scene
SCENES = [(45, 3, "gradient"), (45, 5, "stripes"), (45, 4, "blobs"), (45, 2, "noise")]
assert sum(s[0] for s in SCENES) == FRAMES


def clip_frames():
    """Yields (index, uint8 HxWx3 RGB frame, ground truth objects), deterministically."""
    rng = np.random.default_rng(CLIP_SEED)
    index = 0
    for count, n, kind in SCENES:
        clip = scene.Clip(rng, WIDTH, HEIGHT, n, kind)
        assert len(clip.objs) == n
        for img, gts in clip.frames(count):
            yield index, img, gts
            index += 1


def pts_ns(index: int) -> int:
    return int(round(index * 1e9 * FPS_D / FPS_N))


def encode(raw: Path, out: Path) -> None:
    gst = shutil.which("gst-launch-1.0")
    if gst is None:
        raise SystemExit("gst-launch-1.0 not found (apt-get install gstreamer1.0-tools "
                         "gstreamer1.0-plugins-{base,good,ugly,bad})")
    cmd = [gst, "-q", "filesrc", f"location={raw}", "!",
           "rawvideoparse", "format=rgb", f"width={WIDTH}", f"height={HEIGHT}",
           f"framerate={FPS_N}/{FPS_D}", "!",
           "videoconvert", "!", "video/x-raw,format=I420", "!",
           "x264enc", "bframes=0", "key-int-max=30", "pass=qual", "quantizer=22",
           "speed-preset=medium", "threads=1", "!",
           "video/x-h264,profile=high", "!",
           "h264parse", "!", "mp4mux", "!", "filesink", f"location={out}"]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True)


MP4_TIME = int((datetime(2026, 1, 1, tzinfo=timezone.utc)
                - datetime(1904, 1, 1, tzinfo=timezone.utc)).total_seconds())


def pin_mp4_times(path: Path) -> None:
    """mp4mux stamps the wall-clock time into mvhd/tkhd/mdhd; pin it so the file is
    byte-for-byte reproducible."""
    data = bytearray(path.read_bytes())

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 8 <= end:
            size = struct.unpack(">I", data[pos:pos + 4])[0]
            kind = bytes(data[pos + 4:pos + 8])
            head = 8
            if size == 1:
                size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
                head = 16
            elif size == 0:
                size = end - pos
            if kind in (b"moov", b"trak", b"mdia"):
                walk(pos + head, pos + size)
            elif kind in (b"mvhd", b"tkhd", b"mdhd"):
                body = pos + head
                if data[body] == 1:
                    struct.pack_into(">QQ", data, body + 4, MP4_TIME, MP4_TIME)
                else:
                    struct.pack_into(">II", data, body + 4, MP4_TIME, MP4_TIME)
            pos += size

    walk(0, len(data))
    path.write_bytes(bytes(data))


def main():
    CLIPS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    raw = WORK / "shapes-eval.rgb"
    frames = []
    with open(raw, "wb") as f:
        for index, img, gts in clip_frames():
            assert img.shape == (HEIGHT, WIDTH, 3)
            f.write(img.tobytes())
            for g in gts:
                b = g["box"]
                assert 0 <= b[0] < b[2] <= WIDTH and 0 <= b[1] < b[3] <= HEIGHT, b
            for i in range(len(gts)):
                for j in range(i + 1, len(gts)):
                    assert scene.overlap(gts[i]["box"], gts[j]["box"]) < scene.MAX_OVERLAP
            frames.append({"index": index, "pts_ns": pts_ns(index),
                           "objects": [{"label": g["label"], "box": [round(v, 2) for v in g["box"]]}
                                       for g in gts]})
    GT.write_text(json.dumps({"width": WIDTH, "height": HEIGHT, "fps_n": FPS_N, "fps_d": FPS_D,
                              "frames": frames}, separators=(",", ":")) + "\n")
    encode(raw, MP4)
    pin_mp4_times(MP4)
    n = sum(len(f["objects"]) for f in frames)
    print(f"wrote {MP4} ({MP4.stat().st_size} bytes), {GT} ({len(frames)} frames, {n} objects)")


if __name__ == "__main__":
    main()
