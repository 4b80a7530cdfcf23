#!/bin/bash
# `make check-ultralytics`: issue 22's checks on real Ultralytics exports. The real `ultralytics`
# package (pinned below) builds untrained YOLOv8n and YOLO11n (no weights downloaded), exports
# them to ONNX at 416 and 640, and runs its own `predict` on five pictures (odd and even borders,
# portrait and landscape). For every model and picture, `vigil model pack --expect` must agree
# with Ultralytics' boxes; packed with BGR instead, it must be refused with the right colour
# order named. Not part of `make test`: PyPI's torch pulls ~3 GB of CUDA wheels even on a CPU
# machine (~2 min to install here, 6 GB on disk), and the run takes about 3 min on 2 cores.
#
# ULTRALYTICS_VENV=DIR uses (or makes) the venv there (default .venv-ultralytics).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${ULTRALYTICS_VENV:-.venv-ultralytics}
out=target/ultralytics
pins=(ultralytics==8.4.190 torch==2.15.0 torchvision==0.29.2 onnx==1.23.2 onnxruntime==1.32.0)
if ! "$venv/bin/python" -c "import ultralytics, onnx, onnxruntime; assert ultralytics.__version__ == '8.4.190'" 2>/dev/null; then
  echo "check-ultralytics: installing ${pins[*]} into $venv (about 3 GB from PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
fi
cargo build -q -p vigil
vigil=target/debug/vigil
script=models/tools/ultralytics_reference.py
export YOLO_CONFIG_DIR="$PWD/$out/config"
rm -rf "$out" && mkdir -p "$out"
"$venv/bin/python" "$script" pictures --out-dir "$out/pictures"
checked=0
for arch in yolov8n yolo11n; do
  for size in 416 640; do
    model="$out/$arch-$size.onnx"
    "$venv/bin/python" "$script" export --arch "$arch" --imgsz "$size" --out "$model" --labels "$out/labels.txt"
    "$venv/bin/python" "$script" predict --model "$model" --out-dir "$out/json/$arch-$size" "$out"/pictures/*.png
    for picture in "$out"/pictures/*.png; do
      name=$(basename "$picture" .png)
      expect="$out/json/$arch-$size/$name.json"
      # Ultralytics' conventions and predict defaults: RGB, centred, pad 114, 0-1, round;
      # conf 0.25, NMS IoU 0.7, at most 300.
      pack=("$vigil" model pack "$model" --labels "$out/labels.txt" --name "$arch" --image "$picture"
            --pad-value 114 --score-threshold 0.25 --nms-iou 0.7 --max-detections 300 --expect "$expect")
      "${pack[@]}" --out "$out/bundles/$arch-$size-$name" > "$out/pack.log" 2>&1 || {
        cat "$out/pack.log"; echo "check-ultralytics: $arch-$size on $name: vigil disagrees with Ultralytics" >&2; exit 1; }
      echo "$arch-$size $name: $(grep 'agrees' "$out/pack.log")"
      if "${pack[@]}" --color bgr --out "$out/bundles/$arch-$size-$name-bgr" > "$out/pack.log" 2>&1; then
        echo "check-ultralytics: $arch-$size on $name: packed with BGR, and not refused" >&2; exit 1
      fi
      grep -q 'With input.color = "RGB" (pack --color rgb) they agree' "$out/pack.log" || {
        cat "$out/pack.log"; echo "check-ultralytics: $arch-$size on $name: the BGR pack did not name RGB" >&2; exit 1; }
      checked=$((checked + 1))
    done
  done
done
echo "check-ultralytics: $checked model × picture pairs agree with Ultralytics $("$venv/bin/python" -c 'import ultralytics; print(ultralytics.__version__)'), and each BGR pack was refused naming RGB"
