"""Contact sheet of edits on people the demo pack never saw: input, then G(w') - G(w) pasted on the whole
face, the same confined to its region with the confidence gate (`--no-motion`), the default (the face's own
pixels moved by the generator's motion, plus the rest of the change, in the region: stream/motion.py), and
the default with the generator tuned to the clip (shortened `file --tune`), at strengths 1 and 2.

    python bench/local_sheet.py [--clips d19 lx01 sp04] [--edit mouth_open] [--tune-steps 60]
                                [--out bench/local_edits_sheet.png]

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


def tuned(clip: Path, steps: int) -> Path:
    """The clip's generator, tuned with a shortened `file --tune` (cached like it)."""
    from stream.config import InversionSettings, TuningSettings
    from stream.tuning import tune_for_video

    settings = TuningSettings(steps=steps, max_frames=12, invert=InversionSettings(steps=20))
    return tune_for_video(clip, ModelConfig(path="gan"), FaceConfig(), settings).path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["d19", "lx01", "sp04"])
    parser.add_argument("--edit", default="mouth_open")
    parser.add_argument("--frame", type=int, default=20)
    parser.add_argument("--tune-steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "local_edits_sheet.png")
    args = parser.parse_args()
    motion = EditNetworks(ModelConfig(path="gan", smoothing="off"))
    confined = EditNetworks(ModelConfig(path="gan", smoothing="off", motion=False))
    whole = EditNetworks(ModelConfig(path="gan", smoothing="off", gate=False, motion=False))
    whole.region = lambda name: "face"  # type: ignore[method-assign]
    rows = []
    for name in args.clips:
        clip = FACES / f"{name}.mp4"
        kinds = [("whole face", whole), ("region+gate", confined), ("motion", motion)]
        if args.tune_steps:
            kinds.append(("motion+tune", EditNetworks(ModelConfig(path="gan", smoothing="off",
                                                            tuned_generator=tuned(clip, args.tune_steps)))))
        columns = [("input", None, 0.0)] + [(f"{label} x{s:g}", nets, s) for s in (1.0, 2.0) for label, nets in kinds]
        frames = read_frames(clip, limit=args.frame + 1)
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
    header = np.full((28, rows[0].shape[1], 3), 255, np.uint8)
    for i, (label, _, _) in enumerate(columns):
        cv2.putText(header, label, (i * TILE + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    sheet = np.concatenate([header, *rows], axis=0)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({len(rows)} people, edit {args.edit})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
