"""`train-pack`: train the demo model pack from face videos (resumable), then optionally export it.

    run_stream.py train-pack --data ../shared/data/faces --run RUN_DIR --minutes 50
    run_stream.py train-pack --run RUN_DIR --minutes 0 --export assets/demo_pack

    run_stream.py train-pack --run RUN128 --grow-from RUN_DIR --minutes 60
    run_stream.py train-pack --run RUN --init-from-pack assets/demo_pack --holdout-clip d19 sp04 --minutes 90

The first run extracts aligned crops into RUN_DIR/crops (cached); each run trains for --minutes more and
checkpoints to RUN_DIR, so a stopped run resumes where it was. --grow-from starts a new run at twice the
resolution from another run's trained networks (training/grow.py) and reads that run's crop cache.
--init-from-pack starts a new run from an exported pack's networks (training/finetune.py), e.g. to fine-tune
the shipped pack on more clips. A clip that cannot be used is skipped with one line. --export discovers the edit directions,
measures them, and writes the pack (safetensors + pack.json + MODEL_CARD.md) and its contact sheet.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from engines.errors import UserError

if TYPE_CHECKING:
    from training.pack import PackConfig

HELP = "train the demo model pack (encoder + small StyleGAN2) from face videos; resumable; --export writes it"

_REPO = Path(__file__).resolve().parents[2]
_SHARED_FACES = _REPO.parent / "shared" / "data" / "faces"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=_SHARED_FACES, help="folder of face videos (*.mp4)")
    # dest run_dir: the CLI keeps the command's entry point in args.run
    parser.add_argument("--run", dest="run_dir", type=Path, required=True, metavar="RUN",
                        help="run folder for the crop cache, checkpoints and logs (keep it outside the repo)")
    parser.add_argument("--minutes", type=float, default=50.0, help="training wall time to add in this call (0: none)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (tests)")
    parser.add_argument("--size", type=int, default=64, help="generator / encoder resolution (new runs only)")
    parser.add_argument("--generator-width", type=int, default=96, help="generator channels up to 32 px (new runs)")
    parser.add_argument("--encoder-width", type=int, default=32, help="DemoEncoder width (new runs)")
    parser.add_argument("--grow-from", type=Path, default=None, metavar="RUN",
                        help="new runs: start from RUN's networks grown to twice its resolution")
    parser.add_argument("--init-from-pack", type=Path, default=None, metavar="PACK",
                        help="new runs: start from an exported pack's generator and encoder (its architecture)")
    parser.add_argument("--uniform-draws", action="store_true",
                        help="new runs: draw training crops uniformly (default: rare expressions more often)")
    parser.add_argument("--eye-weight", type=float, default=None,
                        help="new runs: loss weight added on the eyes (default 3, as on the mouth; grown runs: "
                             "the grown run's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None,
                        help="new runs: Adam learning rate (default 5e-4; grown runs: the grown run's)")
    parser.add_argument("--holdout-clip", dest="holdout_clips", nargs="+", default=["d19"], metavar="CLIP",
                        help="clip names held out entirely (unseen people; new runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU, more threads spin and run slower)")
    parser.add_argument("--checkpoint-minutes", type=float, default=4.0)
    parser.add_argument("--export", type=Path, default=None,
                        help="after training, write the pack here (e.g. assets/demo_pack)")
    parser.add_argument("--sheet", type=Path, default=_REPO / "bench" / "pack_contact_sheet.png",
                        help="contact sheet PNG written with --export")
    parser.add_argument("--baseline-pack", type=Path, default=None, metavar="PACK",
                        help="with --export: measure this earlier pack's reconstructions on the same frames, for the "
                             "model card's comparison (copy the shipped pack aside first if --export replaces it)")
    parser.add_argument("--results", type=Path, default=None,
                        help="bench/RESULTS.md to update with the measured numbers (with --export)")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from training.data import SkippedClip, build_cache, load_cache
    from training.pack import CHECKPOINT, PackConfig, load_state, open_run, prepare_data, save_state, train

    torch.set_num_threads(args.threads)
    if args.run_dir.exists() and not args.run_dir.is_dir():
        raise UserError(f"--run {args.run_dir}: is a file, not a folder; choose a run folder")
    if args.grow_from is not None and args.init_from_pack is not None:
        raise UserError("--grow-from and --init-from-pack both start a new run; give one of them")
    growing = args.grow_from is not None and not (args.run_dir / CHECKPOINT).exists()
    from_pack = args.init_from_pack is not None and not (args.run_dir / CHECKPOINT).exists()
    if growing and not (args.grow_from / CHECKPOINT).is_file():
        raise UserError(f"--grow-from {args.grow_from}: no {CHECKPOINT} there; give the folder of a train-pack run")
    crops_dir = args.run_dir / "crops"
    if args.grow_from is not None and not crops_dir.exists() and (args.grow_from / "crops").is_dir():
        shutil.copytree(args.grow_from / "crops", crops_dir)  # the grown run keeps its own copy of the cache
    clips = sorted(args.data.glob("*.mp4")) if args.data.is_dir() else []
    done = len(list(crops_dir.glob("*.npz"))) + len(list(crops_dir.glob("*.skipped")))
    if clips and done < len(clips):
        for clip in tqdm(build_cache(args.data, crops_dir), total=len(clips), desc="aligning faces", unit="clip"):
            if isinstance(clip, SkippedClip):
                tqdm.write(f"  skipped {clip.reason}")
            else:
                tqdm.write(f"  {clip.name}: {len(clip)} faces")
    given = {k: v for k, v in (("lr", args.lr), ("eye_weight", args.eye_weight)) if v is not None}
    config = PackConfig(size=args.size, generator_width=args.generator_width, encoder_width=args.encoder_width,
                        batch=args.batch, holdout_clips=args.holdout_clips,
                        balance_expressions=not args.uniform_draws, **given)
    cache = load_cache(crops_dir)  # before open_run, so a missing cache leaves no empty run folder behind
    if growing:
        from training.grow import grow_state

        state = grow_state(load_state(args.grow_from), lr=args.lr, eye_weight=args.eye_weight,
                           balance_expressions=not args.uniform_draws)
    elif from_pack:
        from training.finetune import state_from_pack

        state = state_from_pack(args.init_from_pack, args.holdout_clips, lr=args.lr, eye_weight=args.eye_weight,
                                balance_expressions=not args.uniform_draws)
    else:
        state = open_run(args.run_dir, config)
    data = prepare_data(cache, state.config)  # a bad --holdout-clip fails here, before a new run is saved
    if growing or from_pack:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        save_state(state, args.run_dir)  # a resume (or --minutes 0) starts from these networks
        origin = f"grew {args.grow_from} to" if growing else f"started from {args.init_from_pack} at"
        print(f"{origin} {state.config.size} px, step {state.step}")
    print(f"training on {len(data.split.train)} crops; held out: {len(data.split.heldout_frames)} frames, "
          f"{len(data.split.heldout_clip)} of clips {', '.join(state.config.holdout_clips)}")
    if args.minutes > 0:
        total = int(args.minutes * 60)
        with tqdm(total=total, desc="training", unit="s") as bar:
            def on_step(st, stats: dict[str, float]) -> None:
                bar.n = min(total, int(st.seconds - start_seconds))
                bar.set_postfix(step=st.step, loss=f"{stats['loss']:.4f}")
                bar.refresh()

            start_seconds = state.seconds
            state = train(state, data, args.run_dir, args.minutes, args.checkpoint_minutes, on_step, args.max_steps)
        last = state.history[-1]
        print(f"step {state.step}, {state.seconds / 60:.1f} min trained: PSNR {last['psnr_heldout_frames']:.2f} dB "
              f"held-out frames, {last['psnr_heldout_clip']:.2f} dB held-out clip")
    if args.export is not None:
        import json

        from training.export import export_pack
        from training.model_card import write_results_section

        baseline = None
        if args.baseline_pack is not None:
            from training.finetune import state_from_pack

            baseline = state_from_pack(args.baseline_pack, state.config.holdout_clips)
            if baseline.config.size != state.config.size:
                raise UserError(f"--baseline-pack {args.baseline_pack}: a {baseline.config.size} px pack; the run is "
                                f"{state.config.size} px, give a pack of the same size")
        skipped = {p.stem: p.read_text().strip() for p in sorted(crops_dir.glob("*.skipped"))}
        published = args.baseline_pack / "metrics.json" if args.baseline_pack is not None else None
        card = export_pack(state, data, load_cache(crops_dir), args.export, _command_line(args, state.config),
                           args.sheet, baseline, skipped,
                           json.loads(published.read_text()) if published and published.is_file() else None)
        print(f"wrote {args.export} ({card}), contact sheet {args.sheet}")
        if args.results is not None:
            metrics = json.loads((args.export / "metrics.json").read_text())
            print(f"updated {write_results_section(args.results, metrics, None)}")
    return 0


def _command_line(args: argparse.Namespace, config: PackConfig) -> str:
    """The call as it can be repeated, with the settings the run used (a resumed or grown run keeps its own)."""
    shape = ("" if args.grow_from or args.init_from_pack else f"--size {config.size} --generator-width {config.generator_width} "
             f"--encoder-width {config.encoder_width} ")
    return (f"run_stream.py train-pack --data {args.data} --run {args.run_dir} --minutes {args.minutes:g} {shape}"
            f"--batch {config.batch} --lr {config.lr:g} --holdout-clip {' '.join(config.holdout_clips)} "
            f"--eye-weight {config.eye_weight:g}" + (f" --grow-from {args.grow_from}" if args.grow_from else "")
            + (f" --init-from-pack {args.init_from_pack}" if args.init_from_pack else "")
            + ("" if config.balance_expressions else " --uniform-draws"))
