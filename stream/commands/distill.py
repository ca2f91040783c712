"""`distill`: distil one edit of a model pack into a ResidualStudent and add it to the pack.

    run_stream.py distill --pack assets/demo_pack --run RUN_DIR --edit mouth_open --strength 1.5 --minutes 10

Makes (crop, teacher-edited crop) pairs from the crops cached by `train-pack` in RUN_DIR/crops, trains the
student, measures it against the teacher on held-out frames (PSNR, landmark attribute change, CPU speed),
writes student_<edit>.safetensors into the pack, and a teacher/student contact sheet.
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "distil one edit of a model pack into a fast residual student (pairs, training, export)"

_REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", type=Path, default=_REPO / "assets" / "demo_pack", help="model pack folder")
    # dest run_dir: the CLI keeps the command's entry point in args.run
    parser.add_argument("--run", dest="run_dir", type=Path, required=True, metavar="RUN",
                        help="train-pack run folder (its crops/ cache and split); pairs are cached here")
    parser.add_argument("--edit", default=None, help="edit to distil (default: the pack's default edit)")
    parser.add_argument("--strength", type=float, default=None,
                        help="strength to distil at, in the pipeline's units (x the direction's default_strength; "
                             "default: the pack's default edit strength)")
    parser.add_argument("--make-default", action="store_true",
                        help="make this edit at this strength the pack's default edit (what `demo` applies)")
    parser.add_argument("--minutes", type=float, default=10.0, help="student training wall time")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (tests)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sheet", type=Path, default=_REPO / "bench" / "student_contact_sheet.png")
    parser.add_argument("--results", type=Path, default=None, help="bench/RESULTS.md to update")


def save_pairs(path: Path, targets) -> None:
    """Cache the teacher's pairs atomically: a later run reuses the file, so it must never be half written."""
    import numpy as np

    from engines.atomic import atomic_output

    with atomic_output(path) as temp, open(temp, "wb") as handle:
        np.save(handle, targets)


def train_with_bar(config, inputs, targets, minutes: float, max_steps: int | None):
    """training.distill.train_student with a tqdm bar over its wall time; shared with `enrol`."""
    from tqdm import tqdm

    from training.distill import train_student

    total = int(minutes * 60)
    with tqdm(total=total, desc="training student", unit="s") as bar:
        def on_step(step: int, loss: float) -> None:
            bar.n = min(total, int(bar.format_dict["elapsed"]))
            bar.set_postfix(step=step, l1=f"{loss:.4f}")
            bar.refresh()

        return train_student(config, inputs, targets, minutes, on_step, max_steps)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import torch
    from tqdm import tqdm

    from engines.checkpoints import file_sha256
    from engines.errors import UserError
    from stream.modelpack import load_pack, save_pack
    from training.data import concat, load_cache, make_split
    from training.distill import DistillConfig, make_pairs
    from training.model_card import write_model_card, write_results_section
    from training.student_eval import evaluate_student, student_sheet

    torch.set_num_threads(args.threads)
    pack = load_pack(args.pack)
    generator, encoder = pack.load_generator(), pack.load_encoder()
    directions = pack.load_directions(generator.num_ws)
    default = pack.default_edit or (next(iter(directions)), 1.0)
    edit = args.edit or default[0]
    strength = args.strength if args.strength is not None else default[1]
    if edit not in directions:
        raise UserError(f"{args.pack}: no direction {edit!r} (have {', '.join(directions)}); pick one with --edit")
    metrics_path = args.pack / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    holdout = metrics["faces"]["heldout_clip_names"] if metrics else ["d19"]
    clips = load_cache(args.run_dir / "crops")
    crops, landmarks = concat(clips)
    split = make_split(clips, holdout)

    colour = pack.residual_colour
    # the teacher is this generator at this vector strength (a re-export recalibrates default_strength)
    vector_strength = strength * directions[edit].default_strength
    teacher = f"{file_sha256(pack.generator)[:12]}_{file_sha256(pack.directions)[:12]}"
    region = directions[edit].metadata.get("region", "face")
    pairs_path = args.run_dir / f"pairs_{edit}_{vector_strength:g}_{colour}_{region}_motion_{teacher}.npy"
    if pairs_path.exists():
        targets = np.load(pairs_path)
    else:
        targets = np.concatenate([make_pairs(generator.module, encoder.module, crops[i:i + 128], directions[edit],
                                             vector_strength, colour=colour, landmarks=landmarks[i:i + 128])
                                  for i in tqdm(range(0, len(crops), 128), desc="teacher pairs", unit="batch")])
        save_pairs(pairs_path, targets)
    config = DistillConfig(edit, strength, width=args.width, depth=args.depth, batch=args.batch)
    student, steps, seconds = train_with_bar(config, crops[split.train], targets[split.train], args.minutes,
                                             args.max_steps)
    result = evaluate_student(student, config, generator.module, encoder.module, directions[edit], crops, targets,
                              landmarks, split, colour)
    result.update({"steps": steps, "train_minutes": seconds / 60, "pairs": len(split.train),
                   "size": int(crops.shape[1])})
    print(f"student vs teacher PSNR: held-out frames {result['psnr_heldout_frames']:.2f} dB, held-out clip "
          f"{result['psnr_heldout_clip']:.2f} dB; CPU {result['teacher_ms']:.1f} ms (teacher) vs "
          f"{result['student_ms']:.1f} ms (student)")
    student_sheet(student, crops, targets, split, strength, args.sheet)
    save_pack(args.pack, crop_size=pack.crop_size, generator=generator.module, encoder=encoder.module,
              directions=list(directions.values()), students={edit: (student, strength)},
              latent_avg=encoder.latent_avg, default_edit=(edit, strength) if args.make_default else pack.default_edit,
              residual_colour=pack.residual_colour, extra=pack.extra)
    (args.run_dir / f"student_{edit}_metrics.json").write_text(json.dumps(result, indent=1))
    if metrics is not None:
        metrics["student"] = result
        if args.make_default:
            metrics["default_edit"] = [edit, strength]
        metrics_path.write_text(json.dumps(metrics, indent=1))
        write_model_card(args.pack / "MODEL_CARD.md", metrics, result)
        if args.results is not None:
            write_results_section(args.results, metrics, result)
    print(f"wrote {args.pack / f'student_{edit}.safetensors'} and {args.sheet}")
    return 0
