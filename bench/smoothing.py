"""Edits benchmark: does temporal smoothing of W+ codes lower the flicker of an edited face, on whole clips?

    .venv/bin/python bench/smoothing.py [--pack DIR] [--clips d0 d3 ...] [--max-frames N] [--write]

For every frame of each clip in ../shared/data/faces: the face is tracked (FaceTracker, dlib, detection
every 10 frames, One Euro on landmarks), FFHQ-aligned, encoded to W+, edited (w' = w + strength *
direction), and re-rendered with the detail-preserving residual: edited crop = crop + G(w') - G(w), with
the codes smoothed per variant (causal One Euro, centred Gaussian, each with and without the identity
anchor on the fine layers). Measured on the aligned crops, inside the feathered face mask:
- flicker: mean |edited_t - edited_t-1| over mean |crop_t - crop_t-1| (1.0: the edit adds no temporal noise);
- residual jitter: mean |R_t - R_t-1| over mean |R_t| with R = G(w') - G(w), the edit's own frame-to-frame
  change relative to its size;
- edit kept: mean |R| relative to the unsmoothed run (smoothing must not wash the edit out);
- lag: the delay (frames) that best aligns the smoothed codes with the raw ones.
Frames without a face split a clip into segments, each smoothed and measured on its own.
Models: the demo pack (--pack) or, by default, a random-weight 64 px generator and encoder (say which in
the results). Writes the "## Edits" section of bench/RESULTS.md with --write (other sections kept).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.composite import face_mask
from stream.edits.directions import Direction
from stream.edits.smoothing import (
    DEFAULT_BETA,
    DEFAULT_MIN_CUTOFF,
    anchor_offline,
    make_code_smoother,
    smooth_offline,
)
from stream.faces.align import ffhq_affine, warp_to_crop
from stream.faces.detect import DlibDetector
from stream.faces.track import FaceTracker
from stream.media.source import FileSource
from stream.pipeline import residual_change
from stream.pixels import to_images
from stream.report import write_section

FACES = ROOT.parent / "shared" / "data" / "faces"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Edits"
BATCH = 32


@dataclass
class Model:
    name: str
    crop_size: int
    encoder_size: int
    encode: Callable[[np.ndarray], np.ndarray]      # [N, 3, E, E] in [-1, 1] -> [N, num_ws, D]
    synthesis: Callable[[np.ndarray], np.ndarray]   # [N, num_ws, D] -> [N, 3, R, R]
    direction: Direction
    strength: float
    residual_colour: str = "rgb"                    # the pack's (stream.pipeline.residual_change)


def random_model(target_residual: float, checkpoint: Path | None = None) -> Model:
    """A 64 px generator + DemoEncoder, random or from a demo-pack training checkpoint (training/pack.py:
    config, generator_ema, encoder_ema); the edit a random direction scaled to a visible residual."""
    from engines.nets.encoders import DemoEncoder
    from engines.nets.stylegan2 import Generator, small_generator_config

    torch.manual_seed(0)
    if checkpoint is None:
        g = Generator(**small_generator_config(size=64, width=64)).eval()
        e = DemoEncoder(size=64, num_ws=g.num_ws).eval()
        avg = g.mean_latent(2000)
        name = "random weights (64 px generator, DemoEncoder)"
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        config = state["config"] if isinstance(state["config"], dict) else __import__("json").loads(state["config"])
        g_config = dict(config["generator"], channels={int(k): v for k, v in config["generator"]["channels"].items()})
        g = Generator(**g_config).eval()
        g.load_state_dict(state["generator_ema"])
        e = DemoEncoder(**config["encoder"]).eval()
        e.load_state_dict(state["encoder_ema"])
        avg = torch.zeros(1, g.style_dim)  # this encoder's codes go to the generator as they are
        name = f"demo-pack training checkpoint {checkpoint} (step {state['step']}, EMA weights)"
    synth = g.export_safe().eval()

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return (e(torch.from_numpy(x)) + avg).numpy()

    def synthesis(w: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return synth(torch.from_numpy(w)).numpy()

    rng = np.random.default_rng(0)
    v = rng.standard_normal((g.num_ws, g.style_dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    direction = Direction("random", v, list(range(g.num_ws)))
    # strength giving a mean |G(w') - G(w)| of `target_residual` (in [-1, 1] units) around a typical code
    w0 = np.repeat(avg.numpy()[:, None], g.num_ws, axis=1) if checkpoint is None else encode(
        np.zeros((1, 3, e.input_size, e.input_size), np.float32))
    probe = np.abs(synthesis(w0 + v) - synthesis(w0)).mean()
    return Model(name, 64, e.input_size, encode, synthesis, direction, float(target_residual / probe))


def pack_model(path: Path, edit: str) -> Model:
    from stream.modelpack import load_pack

    pack = load_pack(path)
    g, enc = pack.load_generator(), pack.load_encoder()
    directions = pack.load_directions(g.num_ws)
    if edit not in directions:
        raise SystemExit(f"{path}: no direction {edit!r} (has {', '.join(directions)})")
    d = directions[edit]
    return Model(f"demo pack {path} ({edit} at strength {d.default_strength:g})", pack.crop_size, enc.input_size,
                 lambda x: np.asarray(enc.encode(x)), lambda w: np.asarray(g.synthesis(w)), d, d.default_strength,
                 pack.residual_colour)


def track_clip(path: Path, size: int, max_frames: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Segments of consecutive frames with a face: (crops [T, S, S, 3] uint8, times [T] s)."""
    tracker = FaceTracker(DlibDetector())
    segments: list[tuple[list, list]] = []
    current: tuple[list, list] | None = None
    with FileSource(path) as source:
        for i, frame in enumerate(source.frames()):
            if max_frames is not None and i >= max_frames:
                break
            faces = tracker.update(frame.image, frame.seconds)
            if not faces:
                current = None
                continue
            face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            if current is None:
                current = ([], [])
                segments.append(current)
            current[0].append(warp_to_crop(frame.image, ffhq_affine(face.landmarks, size), size))
            current[1].append(frame.seconds)
    return [(np.stack(c), np.array(t)) for c, t in segments if len(c) >= 2]


def frame_count(path: Path) -> int:
    with FileSource(path) as source:
        return source.info.frames


def batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def residuals(model: Model, codes: np.ndarray) -> np.ndarray:
    """G(w') - G(w) at crop size as the runtime pastes it, [T, S, S, 3] in pixel units (0-255 scale)."""
    offset = model.strength * model.direction.vector * np.isin(np.arange(len(model.direction.vector)),
                                                               model.direction.layers)[:, None]
    r = batched(model.synthesis, (codes + offset).astype(np.float32)) - batched(model.synthesis, codes)
    return residual_change(r, model.crop_size, model.residual_colour).astype(np.float32)


def variants() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    def causal(min_cutoff: float, beta: float, anchor: float = 0.0):
        def run(codes: np.ndarray, times: np.ndarray) -> np.ndarray:
            smoother = make_code_smoother(min_cutoff, beta, anchor_weight=anchor)
            return np.stack([smoother(c, t) for c, t in zip(codes, times)])
        return run

    def centred(sigma: float, anchor: float = 0.0):
        def run(codes: np.ndarray, times: np.ndarray) -> np.ndarray:
            out = smooth_offline(codes, sigma)
            return anchor_offline(out, "fine", anchor) if anchor > 0 else out
        return run

    return {
        "off": lambda codes, times: codes,
        "causal One Euro min_cutoff 0.5, beta 0.3": causal(0.5, 0.3),
        f"causal One Euro min_cutoff {DEFAULT_MIN_CUTOFF:g}, beta {DEFAULT_BETA:g} (default)":
            causal(DEFAULT_MIN_CUTOFF, DEFAULT_BETA),
        "causal One Euro min_cutoff 1, beta 3": causal(1.0, 3.0),
        "causal One Euro min_cutoff 2, beta 1": causal(2.0, 1.0),
        "causal default + identity anchor 0.5": causal(DEFAULT_MIN_CUTOFF, DEFAULT_BETA, 0.5),
        "centred Gaussian sigma 3 frames": centred(3.0),
        "centred sigma 3 + identity anchor 0.5": centred(3.0, 0.5),
    }


def lag_frames(raw: np.ndarray, smoothed: np.ndarray, max_shift: int = 8) -> int:
    """The delay (frames) that best aligns a smoothed code sequence with the raw one (0: no lag)."""
    a, b = raw.reshape(len(raw), -1), smoothed.reshape(len(smoothed), -1)
    errors = [np.abs(b[k:] - a[:len(a) - k]).mean() for k in range(min(max_shift, len(a) - 2) + 1)]
    return int(np.argmin(errors))


def measure(crops: np.ndarray, resid: np.ndarray, mask: np.ndarray) -> tuple[float, float, float, float]:
    """(sum of input change, sum of edited change, sum of residual change, mean |R|) over a segment."""
    c = crops.astype(np.float32)
    edited = np.clip(np.rint(c + resid), 0, 255)
    w = mask[None, :, :, None] / (mask.sum() * 3)
    dc = float((np.abs(np.diff(c, axis=0)) * w).sum())
    de = float((np.abs(np.diff(edited, axis=0)) * w).sum())
    dr = float((np.abs(np.diff(resid, axis=0)) * w).sum())
    size = float((np.abs(resid) * w).sum())
    return dc, de, dr, size


def report(model: Model, names: list[str], frames: int, totals: dict[str, np.ndarray],
           per_clip: dict[str, dict[str, float]], elapsed: float) -> str:
    """The Edits section for the clips measured so far."""
    off = totals["off"]
    about = (f"Produced by `bench/smoothing.py {' '.join(sys.argv[1:])}` "
             f"({time.strftime('%Y-%m-%d')}): whole clips {', '.join(names)} from ../shared/data/faces, "
             f"{frames} face frames. Model: **{model.name}**; edit strength {model.strength:.3g}. Per frame: "
             "FaceTracker (dlib, detection every 10 frames, One Euro landmarks) -> FFHQ crop "
             f"{model.crop_size} px -> encoder -> W+ -> smoothing variant -> edited crop = crop + G(w') - G(w) "
             "(residual resized to the crop). Measured on the aligned crops inside the feathered face mask, "
             "summed over all clips: **flicker** = mean |edited_t - edited_t-1| / mean |crop_t - crop_t-1| "
             "(1.0 = the edit adds no temporal noise); **residual jitter** = mean |R_t - R_t-1| / mean |R_t|, "
             "R = G(w') - G(w); **edit kept** = mean |R| / that of the unsmoothed run. Numbers, never asserted.")
    about += (" **Added flicker left** = (flicker - 1) / (that of the unsmoothed run - 1): the share of the "
              "temporal noise the edit adds that survives the smoothing (a ratio of small numbers: below 0 when "
              "the smoothed edit also evens out some of the input's own change). **Lag** = the delay in frames "
              "that best aligns the smoothed code sequence with the raw one, frame-weighted mean over clips.")
    lines = [SECTION, "", about, "",
             "| smoothing | flicker | added flicker left | residual jitter | edit kept | lag (frames) | "
             "flicker per clip (" + ", ".join(names) + ") |", "|---|---|---|---|---|---|---|"]
    off_added = off[1] / off[0] - 1.0
    for name, s in totals.items():
        clips = ", ".join(f"{per_clip[c][name]:.3f}" for c in names)
        left = (s[1] / s[0] - 1.0) / off_added if off_added > 0 else float("nan")
        lines.append(f"| {name} | {s[1] / s[0]:.4f} | {left:.2f} | {s[2] / s[3]:.4f} | {s[3] / off[3]:.3f} | "
                     f"{s[4] / max(frames, 1):.1f} | {clips} |")
    lines += ["", f"Wall time {elapsed / 60:.1f} min on a 2-core machine shared with other jobs.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=None, help="demo pack folder (default: random weights)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="demo-pack training checkpoint (training/pack.py) instead of random weights")
    parser.add_argument("--edit", default="smile", help="the pack's direction to apply (default smile)")
    parser.add_argument("--clips", nargs="*", default=None, help="clip names (default: all in shared/data/faces)")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per clip (default: whole clips)")
    parser.add_argument("--residual", type=float, default=0.06,
                        help="random model: mean |G(w') - G(w)| to scale the edit to, [-1, 1] units")
    parser.add_argument("--write", action="store_true", help="write the Edits section of bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    model = pack_model(args.pack, args.edit) if args.pack else random_model(args.residual, args.checkpoint)
    # shortest clips first, so that an interrupted run has measured whole clips
    names = args.clips or [p.stem for p in sorted(FACES.glob("*.mp4"), key=frame_count)]
    mask = face_mask(model.crop_size)
    runs = variants()
    totals = {name: np.zeros(5) for name in runs}        # summed over clips (the last: lag x frames)
    per_clip: dict[str, dict[str, float]] = {}
    frames = 0
    started = time.perf_counter()
    for clip in names:
        segments = track_clip(FACES / f"{clip}.mp4", model.crop_size, args.max_frames)
        clip_frames = sum(len(c) for c, _ in segments)
        frames += clip_frames
        clip_sums = {name: np.zeros(5) for name in runs}
        for crops, times in segments:
            codes = batched(model.encode, to_images(crops, model.encoder_size))
            for name, smooth in runs.items():
                smoothed = smooth(codes, times).astype(np.float32)
                clip_sums[name] += (*measure(crops, residuals(model, smoothed), mask),
                                    lag_frames(codes, smoothed) * len(codes))
        for name in runs:
            totals[name] += clip_sums[name]
        base = clip_sums["off"]
        per_clip[clip] = {name: (s[1] / s[0]) for name, s in clip_sums.items()}
        print(f"{clip}: {clip_frames} face frames in {len(segments)} segment(s); flicker off "
              f"{per_clip[clip]['off']:.3f}, best {min(per_clip[clip].values()):.3f}; edit size "
              f"{base[3] / max(clip_frames, 1):.2f}", flush=True)
        if args.write:  # after every clip, so that a long run leaves what it measured
            write_section(RESULTS, report(model, list(per_clip), frames, totals, per_clip, time.perf_counter() - started))
    elapsed = time.perf_counter() - started
    print(report(model, names, frames, totals, per_clip, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
