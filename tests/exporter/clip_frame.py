"""Writes frame N of a clip, resized (aspect not kept) to W×H with OpenCV, as a PNG picture.

Usage: clip_frame.py CLIP N W H OUT.png
"""
import sys

import cv2

clip, n, w, h, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cap = cv2.VideoCapture(clip)
cap.set(cv2.CAP_PROP_POS_FRAMES, n)
ok, frame = cap.read()
if not ok:
    sys.exit(f"cannot read frame {n} of {clip}")
cv2.imwrite(out, cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA))
