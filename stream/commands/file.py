"""`file IN -o OUT`: edit the faces of a video file; same frames, timestamps and audio."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from engines.backends.base import BackendChoice
from stream.commands.options import add_checkpoint_arguments, add_engine_arguments, engine_options
from stream.config import (
    DEFAULT_SMOOTHING_SIGMA,
    DETECTOR_NAMES,
    FACES_MODES,
    FILE_SMOOTHINGS,
    MODEL_PATHS,
    FaceConfig,
    FileJobConfig,
    ModelConfig,
    TuningSettings,
)
from stream.media.sink import CODECS
from stream.modelpack import DEFAULT_PACK

if TYPE_CHECKING:
    from stream.tuning import TunedGenerator

HELP = "edit the faces in a video file (audio copied, every frame and timestamp kept)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `demo`: which networks, on which backend."""
    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK, metavar="DIR",
                        help="model pack folder (default: the demo pack in assets/demo_pack)")
    parser.add_argument("--model", choices=MODEL_PATHS, default="auto",
                        help="student (distilled, fast) or gan (encoder + generator); auto: the student when "
                             "the pack has one for every edit")
    parser.add_argument("--backend", default="auto", choices=get_args(BackendChoice),
                        help="inference backend (auto: TensorRT, then ONNX Runtime, then PyTorch)")
    parser.add_argument("--faces", choices=FACES_MODES, default="all", help="edit every face or only the largest")
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality, 0 (best) to 51 (default 18)")
    parser.add_argument("--no-residual", action="store_true",
                        help="gan path: paste G(w') itself instead of crop + G(w') - G(w)")
    parser.add_argument("--smoothing", choices=FILE_SMOOTHINGS, default="centred",
                        help="temporal filter of each face's code on the gan path: centred (looks "
                             "ahead, no lag; default), causal (as live) or off")
    parser.add_argument("--smoothing-sigma", type=float, default=DEFAULT_SMOOTHING_SIGMA, metavar="FRAMES",
                        help=f"width of the centred filter in frames (default {DEFAULT_SMOOTHING_SIGMA:g})")
    parser.add_argument("--detect-every", type=int, default=FaceConfig.detect_every, metavar="N",
                        help="run the face detector every N frames, track landmarks in between "
                             f"(default {FaceConfig.detect_every})")
    add_engine_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="IN", help="video file to edit")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                        help="video file to write (.mp4 or .mkv)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_job_arguments(parser)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """How each video is edited and encoded: the options `file` shares with `batch`."""
    parser.add_argument("--edit", action="append", default=[], metavar="NAME=STRENGTH",
                        help="an edit and its strength, e.g. smile=1.0 (repeatable; default: the pack's)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--student", type=Path, metavar="FILE",
                        help="student checkpoint for the single --edit (student path; --model student uses "
                             "the pack's students)")
    parser.add_argument("--side-by-side", action="store_true", help="write before | after, side by side")
    parser.add_argument("--codec", choices=CODECS, default="h264",
                        help="h264 (libx264, lossy) or lossless (RGB, bit-exact; large files)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    parser.add_argument("--detector", choices=DETECTOR_NAMES, default="dlib", help="face detector")
    parser.add_argument("--face-models", type=Path, metavar="DIR", help="insightface model folder (det_*.onnx)")
    add_model_arguments(parser)
    add_tuning_arguments(parser)


def add_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """Pivotal tuning to the clip's face (stream/tuning.py); shared with `enrol`."""
    defaults = TuningSettings()
    parser.add_argument("--tune", action="store_true",
                        help="first tune a copy of the generator to this clip's face (pivotal tuning on the "
                             "largest face; minutes on a CPU, cached per clip), then edit with it (gan path)")
    parser.add_argument("--tune-steps", type=int, default=defaults.steps, metavar="N",
                        help=f"generator tuning steps (default {defaults.steps})")
    parser.add_argument("--tune-frames", type=int, default=defaults.max_frames, metavar="N",
                        help=f"frames of the clip to tune on, spread over it (default {defaults.max_frames})")
    parser.add_argument("--invert-steps", type=int, default=defaults.invert.steps, metavar="N",
                        help=f"code refinement steps before tuning (default {defaults.invert.steps})")
    parser.add_argument("--lpips", type=Path, metavar="VGG_PTH",
                        help="add LPIPS to the tuning loss (as PTI): LPIPS' linear heads, lpips/weights/v0.1/vgg.pth; "
                             "needs --lpips-backbone")
    parser.add_argument("--lpips-backbone", type=Path, metavar="VGG16_PTH",
                        help="torchvision's VGG16 ImageNet state dict (vgg16-397923af.pth), for --lpips")


def tuning_settings(args: argparse.Namespace) -> TuningSettings:
    from dataclasses import replace

    from engines.errors import UserError
    from stream.config import PerceptualFiles

    if (args.lpips is None) != (args.lpips_backbone is None):
        raise UserError("--lpips and --lpips-backbone go together: LPIPS needs its heads and the VGG16 they sit on")
    defaults = TuningSettings()
    perceptual = None if args.lpips is None else PerceptualFiles(args.lpips, args.lpips_backbone)
    return TuningSettings(steps=args.tune_steps, max_frames=args.tune_frames,
                          invert=replace(defaults.invert, steps=args.invert_steps), perceptual=perceptual)


def tune_with_progress(video: Path, model: ModelConfig, face: FaceConfig, settings: TuningSettings) -> TunedGenerator:
    """stream.tuning.tune_for_video with a tqdm bar per phase; returns its TunedGenerator."""
    from tqdm import tqdm

    from stream.tuning import tune_for_video

    titles = {"faces": "finding faces", "invert": "refining codes", "tune": "tuning generator"}
    bars: dict[str, tqdm] = {}

    def on_step(phase: str, done: int, total: int) -> None:
        if phase not in bars:
            for bar in bars.values():
                bar.close()
            bars[phase] = tqdm(total=total or None, desc=titles[phase], unit="frame" if phase == "faces" else "step",
                               dynamic_ncols=True)
        bars[phase].update(done - bars[phase].n)

    try:
        return tune_for_video(video, model, face, settings, on_step=on_step)
    finally:
        for bar in bars.values():
            bar.close()


def model_config(args: argparse.Namespace, **files: Path | None):
    """ModelConfig from the shared options; `files` names checkpoints that replace the pack's. (The code
    smoothing is the job's: FileJobConfig.smoothing.)"""
    from stream.config import ModelConfig

    return ModelConfig(pack=args.pack, path=args.model, backend=args.backend, residual=not args.no_residual,
                       **engine_options(args), **files)


def job_config(args: argparse.Namespace, input: Path | None = None,
               output: Path | None = None) -> FileJobConfig:
    """The job the options ask for; `input` and `output` replace args.input and args.output (batch)."""
    from dataclasses import replace

    from engines.errors import UserError
    from stream.config import parse_edit
    from stream.media.sink import EncoderSettings

    edits = tuple(parse_edit(text) for text in args.edit)
    if args.student is not None and len(edits) != 1:
        raise UserError(f"--student {args.student}: a student performs one edit; give exactly one --edit")
    model = model_config(args, generator=args.generator, encoder=args.encoder, directions=tuple(args.directions),
                         student=args.student, student_edit=edits[0][0] if args.student else None,
                         restyle_iterations=args.restyle_iterations)
    if args.tune:
        if args.student is not None or args.model == "student":
            raise UserError("--tune tunes the generator, and the student path has none: use --model gan "
                            "(or `enrol CLIP --out DIR` for a personal student)")
        model = replace(model, path="gan")
    return FileJobConfig(
        input=input or args.input,
        output=output or args.output,
        edits=edits,
        model=model,
        face=FaceConfig(detector=args.detector, face_models=args.face_models, detect_every=args.detect_every,
                        faces=args.faces),
        encoder=EncoderSettings(codec=args.codec, crf=args.crf, preset=args.preset),
        side_by_side=args.side_by_side,
        overwrite=args.overwrite,
        smoothing=args.smoothing,
        smoothing_sigma=args.smoothing_sigma,
    )


def stage_table(result) -> str:
    """Milliseconds per stage: mean per call, calls, and the share of the job's wall time (decode and write
    run in threads of their own, beside the other stages, so the shares add up to more than 100%)."""
    means = result.times.mean_ms()
    order = ["decode", "detect", "align", "encode", "smooth", "edit", "generate", "motion", "student", "composite", "write"]
    stages = [s for s in order if s in means] + sorted(s for s in means if s not in order)
    total_ms = result.seconds * 1000.0
    lines = [f"{'stage':<10} {'ms/call':>8} {'calls':>6} {'share':>6}"]
    for stage in stages:
        share = result.times.totals_ms[stage] / total_ms if total_ms else 0.0
        lines.append(f"{stage:<10} {means[stage]:>8.2f} {result.times.counts[stage]:>6d} {share:>6.1%}")
    lines.append(f"{result.frames} frames in {result.seconds:.1f} s: {result.fps:.1f} fps ({result.model} path)")
    return "\n".join(lines)


def run_with_progress(config: FileJobConfig):
    """Run the job with a tqdm bar (frames, fps, time left); shared with `demo`."""
    from tqdm import tqdm

    from stream.filejob import run_file_job

    bar: list[tqdm] = []

    def start(info) -> None:
        bar.append(tqdm(total=info.frames or None, unit="frame", desc=config.input.name, dynamic_ncols=True))

    try:
        return run_file_job(config, on_start=start, on_frame=lambda _frame: bar[0].update(1))
    finally:
        if bar:
            bar[0].close()


def check_paths(config: FileJobConfig) -> None:
    """Open IN and set up OUT (then drop it): a bad path fails now, not after minutes of tuning."""
    from stream.media import FileSink, FileSource

    with FileSource(config.input) as source:
        FileSink(config.output, source.info, settings=config.encoder, overwrite=config.overwrite).abort()


def with_tuned_generator(config: FileJobConfig, args: argparse.Namespace) -> FileJobConfig:
    """The job's config rendering with the generator tuned to its input (tuned now or from the cache)."""
    from dataclasses import replace

    check_paths(config)
    tuned = tune_with_progress(config.input, config.model, config.face, tuning_settings(args))
    if tuned.tuning is None:
        print(f"using the generator tuned to this clip earlier: {tuned.path}")
    else:
        t = tuned.tuning
        print(f"tuned the generator to {t.frames} frames in {t.seconds:.0f} s: reconstruction "
              f"{t.psnr_encoded:.1f} dB -> {t.psnr_tuned:.1f} dB (cached in {tuned.path})")
    return replace(config, model=replace(config.model, tuned_generator=tuned.path))


def run(args: argparse.Namespace) -> int:
    config = job_config(args)
    if args.tune:
        config = with_tuned_generator(config, args)
    result = run_with_progress(config)
    print(stage_table(result))
    print(f"wrote {result.output}")
    return 0
