"""Tuning benchmark: how well does G(w) draw a person the pack never saw, before and after pivotal tuning?

    .venv/bin/python bench/tuning.py [--pack DIR] [--clips d19 lx01] [--frames 24] [--steps 200]
                                     [--invert-steps 60] [--threads 2] [--json OUT]

For each clip of ../shared/data/faces: the largest face of frames spread over the clip is aligned (dlib),
the sampled crops are split alternately into tuning frames and held-out frames of the same clip, and
stream/tuning.py runs on the tuning frames as `file --tune` does (track inversion, the mean refinement
folded into a copy of the generator, tuning with the locality term). Reported, at the generator's
resolution, PSNR of G(encoder's code) against the crop:
- before: the pack's generator; inverted: after folding the refined codes' mean offset; tuned: after tuning;
  on the tuning frames and on the held-out frames (does it generalise to frames it never saw?);
- far change: mean |G_tuned(w) - G_original(w)| (0-255) at codes half way or more from a pivot to a random
  code (what the locality term holds), beside the same at the pivots;
- seconds for inversion and tuning, on the machine's CPU (its load is printed: the 2-core box is shared).
Prints a markdown table; --json keeps the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.nets.synthesis import synthesize
from stream.config import InversionSettings, TuningSettings
from stream.faces.detect import make_detector
from stream.modelpack import DEFAULT_PACK, load_pack
from stream.tuning import (
    ClipFaces,
    collect_faces,
    encode,
    face_weights,
    far_code_sampler,
    fold_code_offset,
    invert,
    reconstruction_psnr,
    to_images,
    tune_generator,
)

FACES = ROOT.parent / "shared" / "data" / "faces"


def measure_clip(name: str, pack, settings: TuningSettings, frames: int) -> dict:
    generator, encoder = pack.load_generator(), pack.load_encoder()
    faces = collect_faces(FACES / f"{name}.mp4", make_detector("dlib"), pack.crop_size, every=1, max_frames=frames)
    size = generator.resolution
    parts = {}
    for part, sl in (("tune", slice(0, None, 2)), ("heldout", slice(1, None, 2))):
        sub = ClipFaces(faces.crops[sl], faces.landmarks[sl], faces.frames[sl])
        parts[part] = (encode(encoder, sub.crops), to_images(sub.crops, size), face_weights(sub, size))
    codes, targets, weights = parts["tune"]
    base = generator.module
    row: dict = {"clip": name, "frames_tuned": len(codes), "frames_heldout": len(parts["heldout"][0])}
    for part, (c, t, _) in parts.items():
        row[f"psnr_before_{part}"] = reconstruction_psnr(base, c, t)
    start = time.perf_counter()
    refined = invert(base, codes, targets, weights, settings.invert, track=True)
    row["invert_s"] = time.perf_counter() - start
    fold_code_offset(base, (refined - codes).mean(0))
    for part, (c, t, _) in parts.items():
        row[f"psnr_inverted_{part}"] = reconstruction_psnr(base, c, t)
    far = far_code_sampler(codes, base, generator.latent_avg is not None, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    tuned = tune_generator(base, codes, targets, weights, settings, far)
    row["tune_s"] = time.perf_counter() - start
    row["s_per_step"] = row["tune_s"] / max(settings.steps, 1)
    for part, (c, t, _) in parts.items():
        row[f"psnr_tuned_{part}"] = reconstruction_psnr(tuned, c, t)
    torch.manual_seed(1)
    count = 16
    reach = torch.linspace(0.5, 1.0, count)[:, None, None]
    near = codes[torch.arange(count) % len(codes)]
    far_codes = near + reach * (far(count) - near)
    with torch.no_grad():
        row["change_at_pivots"] = float((synthesize(tuned, codes) - synthesize(base, codes)).abs().mean() * 127.5)
        row["change_far"] = float((synthesize(tuned, far_codes) - synthesize(base, far_codes)).abs().mean() * 127.5)
    return row


def table(rows: list[dict]) -> str:
    header = ("| clip | frames tuned / held out | PSNR before (tuned / held-out frames) | after inversion "
              "| after tuning | change at pivots / far codes (0-255) | inversion s | tuning s (s/step) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['clip']} | {r['frames_tuned']} / {r['frames_heldout']} "
            f"| {r['psnr_before_tune']:.2f} / {r['psnr_before_heldout']:.2f} dB "
            f"| {r['psnr_inverted_tune']:.2f} / {r['psnr_inverted_heldout']:.2f} dB "
            f"| {r['psnr_tuned_tune']:.2f} / {r['psnr_tuned_heldout']:.2f} dB "
            f"| {r['change_at_pivots']:.2f} / {r['change_far']:.2f} | {r['invert_s']:.0f} "
            f"| {r['tune_s']:.0f} ({r['s_per_step']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK)
    parser.add_argument("--clips", nargs="+", default=["d19"])
    parser.add_argument("--frames", type=int, default=24, help="sampled frames per clip (half tuned, half held out)")
    parser.add_argument("--steps", type=int, default=TuningSettings().steps)
    parser.add_argument("--invert-steps", type=int, default=InversionSettings().steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = TuningSettings(steps=args.steps, invert=InversionSettings(steps=args.invert_steps))
    pack = load_pack(args.pack)
    rows = []
    for name in args.clips:
        rows.append(measure_clip(name, pack, settings, args.frames))
        print(json.dumps(rows[-1]), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1))
    print(f"machine: {os.cpu_count()} CPUs, {args.threads} torch threads, load average {os.getloadavg()}; "
          f"settings {settings}")
    print(table(rows))


if __name__ == "__main__":
    main()
