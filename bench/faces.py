"""Faces benchmark: ms per stage (detect, landmarks, align, paste-back) at 512x512 and 1280x720, the
aligned-crop contact sheet of insightface's group photo, and (--fit-template) the 5-point FFHQ template.

    .venv/bin/python bench/faces.py [--frames 40] [--crop 256] [--fit-template] [--no-write]

Writes the "Faces" section of bench/RESULTS.md (other sections are kept) and bench/faces_contact_sheet.png.
Numbers are printed and recorded, never asserted.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.composite import face_mask, paste_back
from stream.faces.align import ffhq_affine, landmarks5_from_68, transform_points, warp_to_crop
from stream.faces.detect import DlibDetector

FACES = ROOT.parent / "shared" / "data" / "faces"
CLIPS = {"512x512": "d3", "1280x720": "s18"}
SECTION = "## Faces (bench/faces.py)"


def read_frames(path: Path, every: int = 1, limit: int | None = None) -> list[np.ndarray]:
    import av

    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if limit is not None and len(frames) >= limit:
                break
            if i % every == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def time_stages(frames: list[np.ndarray], crop: int) -> dict[str, float]:
    detector = DlibDetector()
    mask = face_mask(crop)
    totals = {"detect": 0.0, "landmarks": 0.0, "align": 0.0, "paste-back": 0.0}
    count = 0
    for frame in frames:
        t0 = time.perf_counter()
        boxes = detector.detect_boxes(frame)
        t1 = time.perf_counter()
        if not boxes:
            continue
        landmarks = detector.landmarker.refine(frame, boxes[0][0])
        t2 = time.perf_counter()
        affine = ffhq_affine(landmarks, crop)
        aligned = warp_to_crop(frame, affine, crop)
        t3 = time.perf_counter()
        edited = cv2.GaussianBlur(aligned, (0, 0), 2.0)  # stands in for an edit
        t4 = time.perf_counter()
        paste_back(frame, edited, aligned, affine, mask)
        t5 = time.perf_counter()
        for stage, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t5 - t4)):
            totals[stage] += dt * 1000.0
        count += 1
    return {stage: total / max(count, 1) for stage, total in totals.items()}


def contact_sheet(out_path: Path, crop: int = 256) -> int:
    import insightface

    image = cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"))
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    faces = sorted(DlibDetector(upsample=1, max_side=None).detect(rgb), key=lambda f: f.box[0])
    tiles = []
    for face in faces:
        tile = warp_to_crop(rgb, ffhq_affine(face.landmarks, crop), crop)
        # the 5-point path (template fit) below each 68-point crop, to compare by eye
        tile5 = warp_to_crop(rgb, ffhq_affine(landmarks5_from_68(face.landmarks), crop), crop)
        tiles.append(np.vstack([tile, tile5]))
    sheet = np.hstack(tiles) if tiles else np.zeros((crop, crop, 3), np.uint8)
    cv2.imwrite(str(out_path), np.ascontiguousarray(sheet[:, :, ::-1]))
    return len(faces)


def jitter_and_lag(clip: str, frames: int = 150) -> tuple[float, float, float]:
    """Mean frame-to-frame movement of the 68 landmarks in their own aligned crop (per mille of the crop
    side) without and with smoothing, and the lag (frames) of the smoothed centroid: the measure that
    tests/test_faces_track.py asserts."""
    from stream.faces.track import FaceTracker

    detector = DlibDetector()
    video = read_frames(FACES / f"{clip}.mp4", limit=frames)
    tracks = {}
    for smoothing in (False, True):
        tracker = FaceTracker(detector, smoothing=smoothing, fps=30.0)
        tracks[smoothing] = np.array([tracker.update(f)[0].landmarks for f in video], dtype=np.float64)
    jitter = {}
    for smoothing, lms in tracks.items():
        in_crop = np.array([transform_points(ffhq_affine(lm, 1), lm) for lm in lms])
        jitter[smoothing] = float(np.linalg.norm(np.diff(in_crop, axis=0), axis=-1).mean()) * 1000.0
    raw, smooth = tracks[False].mean(axis=1), tracks[True].mean(axis=1)
    t = np.arange(len(raw), dtype=np.float64)
    shifts = np.arange(0.0, 3.01, 0.05)
    errors = [np.linalg.norm(smooth[10:] - np.stack([np.interp(t - k, t, raw[:, j]) for j in (0, 1)], 1)[10:],
                             axis=1).mean() for k in shifts]
    return jitter[False], jitter[True], float(shifts[int(np.argmin(errors))])


def fit_template() -> np.ndarray:
    """Mean 5-point position in the 68-point FFHQ crop over every 5th frame of every clip (see align.py)."""
    detector = DlibDetector()
    points = []
    for path in sorted(FACES.glob("*.mp4")):
        for frame in read_frames(path, every=5):
            faces = detector.detect(frame)
            if faces:
                lm = faces[0].landmarks
                points.append(transform_points(ffhq_affine(lm, 1), landmarks5_from_68(lm)) + 0.5)
    points = np.array(points)
    print(f"template from {len(points)} faces (fractions of the crop side; std per point):")
    print(np.round(points.mean(axis=0), 4))
    print(np.round(points.std(axis=0), 4))
    return points.mean(axis=0)


def write_results(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames timed per clip")
    parser.add_argument("--crop", type=int, default=256, help="aligned crop side")
    parser.add_argument("--fit-template", action="store_true", help="refit the 5-point template and print it")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.fit_template:
        fit_template()
        return 0
    if not FACES.is_dir():
        print(f"{FACES} not found: the shared clips sit beside the checkout")
        return 2
    cv2.setNumThreads(1)
    rows = []
    for label, clip in CLIPS.items():
        frames = read_frames(FACES / f"{clip}.mp4", limit=args.frames)
        time_stages(frames[:3], args.crop)  # warm-up
        ms = time_stages(frames, args.crop)
        rows.append((label, clip, ms))
        print(f"{label} ({clip}): " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
    jitter_rows = []
    for path in sorted(FACES.glob("*.mp4")):
        raw, smooth, lag = jitter_and_lag(path.stem)
        jitter_rows.append((path.stem, raw, smooth, lag))
        print(f"{path.stem}: jitter {raw:.2f} -> {smooth:.2f} per mille ({raw / smooth:.2f}x), lag {lag:.2f} frames")
    sheet = ROOT / "bench" / "faces_contact_sheet.png"
    found = contact_sheet(sheet)
    print(f"contact sheet: {found} faces -> {sheet}")
    if args.no_write:
        return 0
    lines = [SECTION, "",
             (f"CPU, 1 thread (OMP_NUM_THREADS=1, cv2.setNumThreads(1)), mean over {args.frames} frames, "
              f"aligned crop {args.crop}x{args.crop}, one face; dlib HOG on frames shrunk to 640 px "
              "(longer side), 68-point landmarks at full size; paste-back = colour match + delta blend."), "",
             "| frame | clip | detect (HOG) ms | landmarks ms | align ms | paste-back ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {clip} | {ms['detect']:.1f} | {ms['landmarks']:.1f} | {ms['align']:.1f} | "
              f"{ms['paste-back']:.1f} |" for label, clip, ms in rows]
    lines += ["", ("Smoothing (FaceTracker defaults, first 150 frames): mean frame-to-frame movement of the 68 "
                   "landmarks inside their own aligned crop, per mille of the crop side; lag = shift (frames) "
                   "that best aligns the smoothed landmark centroid with the raw one (noise-dominated, so not "
                   "meaningful, on still clips; d12 is the fastest-moving clip)."), "",
              "| clip | jitter raw | jitter smoothed | reduction | lag (frames) |", "|---|---|---|---|---|"]
    lines += [f"| {clip} | {raw:.2f} | {smooth:.2f} | {raw / smooth:.2f}x | {lag:.2f} |"
              for clip, raw, smooth, lag in jitter_rows]
    lines += ["", (f"Contact sheet of t1.jpg: {found} faces, bench/faces_contact_sheet.png "
                   "(top row 68-point recipe, bottom row 5-point template)."), ""]
    write_results("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
