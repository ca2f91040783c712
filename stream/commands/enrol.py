"""`enrol CLIP --out DIR [--edit NAME]`: a personal model pack for live use, from a short clip of one person.

    run_stream.py enrol me.mp4 --out packs/me --edit mouth_open

1. Tunes a copy of the pack's generator to the clip's face (stream/tuning.py, cached like `file --tune`).
2. Makes (crop, teacher-edited crop) pairs from the clip's aligned faces with that tuned generator, and
   distils a student for the edit from them (training/distill.py, as `distill` does for the demo pack).
3. Writes a pack (stream/modelpack.py format) with the tuned generator, the pack's encoder and directions
   and the personal student, the edit as its default; `serve`, `camera` and `file --pack DIR` load it.

The last frames of the clip (--holdout) are kept out of the student's training and measure it: student
vs teacher PSNR there. The pack is written beside DIR and renamed into place once complete.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stream.commands.file import add_tuning_arguments
from stream.config import DETECTOR_NAMES
from stream.modelpack import DEFAULT_PACK

HELP = "make a personal pack from a short clip of one person: a tuned generator and that person's student"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clip", type=Path, metavar="CLIP", help="a short video of the person (one face)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the pack to")
    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK, metavar="DIR",
                        help="the pack to start from (default: the demo pack)")
    parser.add_argument("--edit", default=None, metavar="NAME", help="edit to distil (default: the pack's default edit)")
    parser.add_argument("--strength", type=float, default=None,
                        help="strength to distil at (default: the pack's default edit strength, else 1)")
    parser.add_argument("--minutes", type=float, default=5.0, help="student training wall time (default 5)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop the student after this many steps")
    parser.add_argument("--frames", type=int, default=300, metavar="N",
                        help="frames of the clip to distil on, spread over it (default 300)")
    parser.add_argument("--holdout", type=float, default=0.15, metavar="FRACTION",
                        help="last fraction of the frames kept out of distillation to measure it (default 0.15)")
    parser.add_argument("--detector", choices=DETECTOR_NAMES, default="dlib", help="face detector")
    parser.add_argument("--face-models", type=Path, metavar="DIR", help="insightface model folder (det_*.onnx)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it holds a pack")
    add_tuning_arguments(parser)


def _choose_edit(args: argparse.Namespace, pack, names: list[str]) -> tuple[str, float]:
    from engines.errors import UserError

    default = pack.default_edit
    edit = args.edit or (default[0] if default else names[0])
    if edit not in names:
        raise UserError(f"--edit {edit}: {pack.root} has no such direction (it has {', '.join(names)})")
    if args.strength is not None:
        return edit, args.strength
    return edit, default[1] if default and default[0] == edit else 1.0


def _check_out(args: argparse.Namespace) -> None:
    from engines.errors import UserError
    from stream.modelpack import MANIFEST

    out = args.out
    if out.resolve() == args.pack.resolve():
        raise UserError(f"--out {out}: that is the pack enrolment starts from; choose a new folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not ((out / MANIFEST).is_file() and args.overwrite):
        raise UserError(f"--out {out}: folder is not empty; choose a new one, or pass --overwrite to replace a pack")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: its parent folder {out.parent} does not exist")
    if not 0 < args.holdout < 1:
        raise UserError(f"--holdout {args.holdout}: give a fraction between 0 and 1")


def run(args: argparse.Namespace) -> int:
    import os
    import secrets
    import shutil

    import numpy as np
    import torch
    from tqdm import tqdm

    from engines import load_generator
    from stream.commands.distill import train_with_bar
    from stream.commands.file import tune_with_progress, tuning_settings
    from stream.config import FaceConfig, ModelConfig
    from stream.faces.detect import make_detector
    from stream.modelpack import load_pack, save_pack
    from stream.tuning import collect_faces
    from training.distill import DistillConfig, apply_student, make_pairs
    from training.losses import psnr_uint8

    if args.threads:
        torch.set_num_threads(args.threads)
    _check_out(args)
    pack = load_pack(args.pack)
    encoder = pack.load_encoder()
    directions = pack.load_directions(pack.load_generator().num_ws)
    edit, strength = _choose_edit(args, pack, sorted(directions))

    face = FaceConfig(detector=args.detector, face_models=args.face_models)
    tuned = tune_with_progress(args.clip, ModelConfig(pack=args.pack), face, tuning_settings(args))
    generator = load_generator(tuned.path)
    faces = collect_faces(args.clip, make_detector(args.detector, args.face_models), pack.crop_size,
                          max_frames=args.frames)
    crops = faces.crops
    cut = max(1, min(len(crops) - 1, round(len(crops) * (1 - args.holdout)))) if len(crops) > 1 else 1
    vector_strength = strength * directions[edit].default_strength
    # with 68 landmarks the teacher's change is confined to the edit's region, as the runtime confines it
    landmarks = faces.landmarks if faces.landmarks.shape[1] == 68 else None
    targets = np.concatenate([make_pairs(generator.module, encoder.module, crops[i:i + 32], directions[edit],
                                         vector_strength, colour=pack.residual_colour,
                                         landmarks=None if landmarks is None else landmarks[i:i + 32])
                              for i in tqdm(range(0, len(crops), 32), desc="teacher pairs", unit="batch")])
    student, steps, seconds = train_with_bar(DistillConfig(edit, strength), crops[:cut], targets[:cut],
                                             args.minutes, args.max_steps)
    held = slice(cut, None) if cut < len(crops) else slice(0, None)
    measured = {"student_vs_teacher_psnr": psnr_uint8(apply_student(student, crops[held]), targets[held]),
                "identity_vs_teacher_psnr": psnr_uint8(crops[held], targets[held]),
                "student_steps": steps, "student_minutes": round(seconds / 60, 2),
                "frames_distilled": int(cut), "frames_held_out": len(crops[held])}
    if tuned.tuning is not None:
        measured.update(tuning_seconds=round(tuned.tuning.seconds, 1), frames_tuned=tuned.tuning.frames,
                        psnr_before_tuning=round(tuned.tuning.psnr_encoded, 2),
                        psnr_after_tuning=round(tuned.tuning.psnr_tuned, 2))

    # written beside DIR, then renamed into place: an interrupted enrol leaves no half pack at DIR
    staging = args.out.with_name(f".{args.out.name}.{secrets.token_hex(4)}.partial")
    try:
        save_pack(staging, crop_size=pack.crop_size, generator=generator.module, encoder=encoder.module,
                  directions=list(directions.values()), students={edit: (student, strength)},
                  latent_avg=encoder.latent_avg, default_edit=(edit, strength), residual_colour=pack.residual_colour,
                  extra={"enrolled": {"clip": args.clip.name, "base_pack": str(args.pack), **measured}})
        if args.out.exists():
            shutil.rmtree(args.out)
        os.replace(staging, args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"student vs teacher on {measured['frames_held_out']} held-out frames: "
          f"{measured['student_vs_teacher_psnr']:.2f} dB (no edit vs teacher: {measured['identity_vs_teacher_psnr']:.2f} dB)")
    print(f"wrote {args.out}: try `run_stream.py file IN -o OUT --pack {args.out}` or `camera --pack {args.out}`")
    return 0
