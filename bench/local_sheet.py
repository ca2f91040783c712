"""Contact sheet of edits on people the demo pack never saw: input, then the edit pasted on the whole face
and confined to its region (with the confidence gate), at strengths 1 and 2.

    python bench/local_sheet.py [--clips d19 lx01 sp04 rr01] [--edit mouth_open] [--out bench/local_edits_sheet.png]

One frame per clip (--frame), the face cut out of the full-resolution output around the input's face box.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.config import FaceConfig, ModelConfig
from stream.filejob import build_tracker
from stream.media.source import read_frames
from stream.session import EditNetworks

FACES = ROOT.parent / "shared" / "data" / "faces"
TILE = 192


def face_tile(frame: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    x0, y0, x1, y1 = box
    side = 1.5 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = frame.shape[:2]
    a, b = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
    c, d = int(min(cx + side / 2, w)), int(min(cy + side / 2, h))
    return cv2.resize(frame[b:d, a:c], (TILE, TILE), interpolation=cv2.INTER_AREA)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["d19", "lx01", "sp04", "rr01"])
    parser.add_argument("--edit", default="mouth_open")
    parser.add_argument("--frame", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "local_edits_sheet.png")
    args = parser.parse_args()
    confined = EditNetworks(ModelConfig(path="gan", smoothing="off"))
    whole = EditNetworks(ModelConfig(path="gan", smoothing="off", gate=False))
    whole.region = lambda name: "face"  # type: ignore[method-assign]
    columns = [("input", None, 0.0)] + [(f"{label} x{s:g}", nets, s) for s in (1.0, 2.0)
                                        for label, nets in (("whole face", whole), ("region+gate", confined))]
    rows = []
    for name in args.clips:
        frames = read_frames(FACES / f"{name}.mp4", limit=args.frame + 1)
        tiles = []
        box = None
        for _label, nets, strength in columns:
            if nets is None:
                tiles.append(None)
                continue
            session = nets.session(build_tracker(FaceConfig(detect_every=1), 25.0))
            session.set_edits([(args.edit, strength)])
            out = frames[-1]
            for index, frame in enumerate(frames):
                out = session.process(frame, index / 25.0)
            located = session.tracker.update(frames[-1], len(frames) / 25.0)
            box = located[0].box if located else box
            tiles.append(out)
        if box is None:
            print(f"{name}: no face found, skipped")
            continue
        tiles[0] = frames[-1]
        rows.append(np.concatenate([face_tile(t, box) for t in tiles], axis=1))
    header = np.full((28, TILE * len(columns), 3), 255, np.uint8)
    for i, (label, _, _) in enumerate(columns):
        cv2.putText(header, label, (i * TILE + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    sheet = np.concatenate([header, *rows], axis=0)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({len(rows)} people, edit {args.edit})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
