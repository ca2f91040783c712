"""Faces benchmark: ms per stage (detect, landmarks, align, paste-back) at 512x512 and 1280x720, the
aligned-crop contact sheet of insightface's group photo, and (--fit-template) the 5-point FFHQ template.

    .venv/bin/python bench/faces.py [--frames 40] [--crop 256] [--fit-template] [--no-write]

Writes the "Faces" section of bench/RESULTS.md (other sections are kept) and bench/faces_contact_sheet.png.
Numbers are printed and recorded, never asserted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.composite import face_mask, paste_change
from stream.faces.align import ffhq_affine, landmarks5_from_68, transform_points, warp_to_crop
from stream.faces.detect import DlibDetector
from stream.faces.stability import crop_jitter_and_lag
from stream.media.source import read_frames
from stream.report import write_section

FACES = ROOT.parent / "shared" / "data" / "faces"
CLIPS = {"512x512": "d3", "1280x720": "s18"}
SECTION = "## Faces (bench/faces.py)"


def time_stages(frames: list[np.ndarray], crop: int) -> dict[str, float]:
    """Mean CPU ms per stage (process time: what the stage costs on an idle core, whatever else runs)."""
    from stream.faces.track import FaceTracker

    detector = DlibDetector()
    mask = face_mask(crop)
    totals = {"detect": 0.0, "landmarks": 0.0, "align": 0.0, "paste-back": 0.0}
    count = 0
    for frame in frames:
        t0 = time.process_time()
        boxes = detector.detect_boxes(frame)
        t1 = time.process_time()
        if not boxes:
            continue
        landmarks = detector.landmarker.refine(frame, boxes[0][0])
        t2 = time.process_time()
        affine = ffhq_affine(landmarks, crop)
        aligned = warp_to_crop(frame, affine, crop)
        t3 = time.process_time()
        edited = cv2.GaussianBlur(aligned, (0, 0), 2.0)  # stands in for an edit
        t4 = time.process_time()
        paste_change(frame, edited.astype(np.float32) - aligned, affine, mask)
        t5 = time.process_time()
        for stage, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t5 - t4)):
            totals[stage] += dt * 1000.0
        count += 1
    result = {stage: total / max(count, 1) for stage, total in totals.items()}
    tracker = FaceTracker(detector)
    t0 = time.process_time()
    for frame in frames:
        tracker.update(frame)
    result["tracker"] = (time.process_time() - t0) * 1000.0 / len(frames)
    return result


def round_trip_psnr(frame: np.ndarray, size: int) -> tuple[float, bool]:
    """PSNR (dB) in the face region (warped mask > 0.5) of align + paste of a zero change, and whether every
    pixel outside the mask kept its bytes."""
    from stream.faces.align import invert_affine

    face = DlibDetector().detect(frame)[0]
    affine = ffhq_affine(face.landmarks, size)
    mask = face_mask(size)
    warped = cv2.warpAffine(mask, invert_affine(affine), (frame.shape[1], frame.shape[0]))
    region = warped > 0.5
    out = paste_change(frame, np.zeros((size, size, 3), np.float32), affine, mask)
    untouched = bool(np.array_equal(out[warped == 0], frame[warped == 0]))
    mse = float(((out[region].astype(np.float64) - frame[region]) ** 2).mean())
    return (float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)), untouched


def contact_sheet(out_path: Path, crop: int = 192) -> int:
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
    cv2.imwrite(str(out_path), np.ascontiguousarray(sheet[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return len(faces)


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
    psnr_rows = []
    for clip in ("d3", "d13", "s18"):
        frame = read_frames(FACES / f"{clip}.mp4", limit=1)[0]
        for size in (256, 512, 1024):
            delta, untouched = round_trip_psnr(frame, size)
            psnr_rows.append((clip, size, delta, untouched))
            print(f"round trip {clip} @ {size}: {delta:.1f} dB, outside mask unchanged: {untouched}")
    jitter_rows = []
    for path in sorted(FACES.glob("*.mp4")):
        raw, smooth, lag = crop_jitter_and_lag(DlibDetector(), read_frames(path, limit=150))
        raw, smooth = raw * 1000.0, smooth * 1000.0  # per mille of the crop side
        jitter_rows.append((path.stem, raw, smooth, lag))
        print(f"{path.stem}: jitter {raw:.2f} -> {smooth:.2f} per mille ({raw / smooth:.2f}x), lag {lag:.2f} frames")
    sheet = ROOT / "bench" / "faces_contact_sheet.png"
    found = contact_sheet(sheet)
    print(f"contact sheet: {found} faces -> {sheet}")
    if args.no_write:
        return 0
    lines = [SECTION, "",
             (f"CPU time (process time, so other load on the machine does not count), 1 thread "
              f"(OMP_NUM_THREADS=1, cv2.setNumThreads(1)), mean over {args.frames} frames, aligned crop "
              f"{args.crop}x{args.crop}, one face. detect = dlib HOG on the frame shrunk to 640 px (longer side); "
              "landmarks = 68-point predictor at full size; align = FFHQ affine + warp; paste-back = colour "
              "match + delta blend; tracker = FaceTracker.update per frame (HOG every 10 frames, landmarks + "
              "local HOG check in between, smoothing)."), "",
             "| frame | clip | detect ms | landmarks ms | align ms | paste-back ms | tracker ms/frame |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {label} | {clip} | {ms['detect']:.1f} | {ms['landmarks']:.1f} | {ms['align']:.1f} | "
              f"{ms['paste-back']:.1f} | {ms['tracker']:.1f} |" for label, clip, ms in rows]
    lines += ["", ("Round trip (first frame, a zero change aligned and pasted back): PSNR in the face region "
                   "(warped mask > 0.5)."), "",
              "| clip | crop | dB | outside mask byte-identical |", "|---|---|---|---|"]
    lines += [f"| {clip} | {size} | {delta:.1f} | {untouched} |" for clip, size, delta, untouched in psnr_rows]
    lines += ["", ("Smoothing (FaceTracker defaults, first 150 frames): mean frame-to-frame movement of the 68 "
                   "landmarks inside their own aligned crop, per mille of the crop side; lag = shift (frames) "
                   "that best aligns the smoothed landmark centroid with the raw one (noise-dominated, so not "
                   "meaningful, on still clips; d12 is the fastest-moving clip)."), "",
              "| clip | jitter raw | jitter smoothed | reduction | lag (frames) |", "|---|---|---|---|---|"]
    lines += [f"| {clip} | {raw:.2f} | {smooth:.2f} | {raw / smooth:.2f}x | {lag:.2f} |"
              for clip, raw, smooth, lag in jitter_rows]
    lines += ["", (f"Contact sheet of t1.jpg: {found} faces, bench/faces_contact_sheet.png "
                   "(top row 68-point recipe, bottom row 5-point template)."), ""]
    write_section(ROOT / "bench" / "RESULTS.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
