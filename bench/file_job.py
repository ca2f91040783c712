"""Benchmark of the `file` job: end-to-end fps with the demo student and with encoder + generator, against
a decode + encode-only baseline run in the same process on the same clip.

    python bench/file_job.py [--pack assets/demo_pack] [--clips d11 s18] [--backend auto] [--write-results]

Every run writes H.264 (libx264, the `file` defaults) to a temporary folder; the baseline copies the audio
too, so the ratio is exactly the cost of the face stages. Without the real demo pack (assets/demo_pack) it
measures a stand-in pack of the same architecture with random weights (--stand-in): speed does not depend
on what the weights learned. --write-results replaces the "File job" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.config import FaceConfig, FileJobConfig, ModelConfig
from stream.filejob import FileJobResult, run_file_job
from stream.media import FileSink, FileSource
from stream.modelpack import DEFAULT_PACK, MANIFEST, load_pack
from stream.report import write_section

FACES = ROOT.parent / "shared" / "data" / "faces"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## File job"


def baseline(clip: Path, out: Path) -> tuple[int, float]:
    """Decode + encode only (audio copied): frames and seconds."""
    start = time.perf_counter()
    frames = 0
    with FileSource(clip) as source, FileSink(out, source.info, audio=source.audio_stream, overwrite=True) as sink:
        for frame in source.frames(on_audio=sink.write_audio):
            sink.write_frame(frame)
            frames += 1
    return frames, time.perf_counter() - start


def stand_in_pack(root: Path) -> Path:
    """A random-weight pack with the shipped demo pack's architecture (its metrics.json config) and settings."""
    import json

    import numpy as np
    import torch

    from engines.nets.encoders import DemoEncoder
    from engines.nets.student import ResidualStudent
    from engines.nets.stylegan2 import Generator, small_generator_config
    from stream.edits.directions import Direction
    from stream.modelpack import save_pack

    shipped = json.loads((DEFAULT_PACK / "metrics.json").read_text())
    cfg = shipped["config"]
    torch.manual_seed(0)
    generator = Generator(**small_generator_config(cfg["size"], width=cfg["generator_width"],
                                                   n_mlp=cfg["generator"]["n_mlp"]))
    encoder = DemoEncoder(**cfg["encoder"])
    vector = np.random.default_rng(0).standard_normal((generator.num_ws, 512)).astype(np.float32)
    save_pack(root, crop_size=256, generator=generator, encoder=encoder,
              directions=[Direction("smile", vector, layers=list(range(generator.num_ws)))],
              students={"smile": (ResidualStudent(), 1.0)}, default_edit=("smile", 1.0),
              residual_colour=shipped.get("residual_colour", "rgb"))
    return root


def edit_job(clip: Path, out: Path, pack: Path, path: str, backend: str, edit: tuple[str, float]) -> FileJobResult:
    config = FileJobConfig(input=clip, output=out, edits=(edit,),
                           model=ModelConfig(pack=pack, path=path, backend=backend),
                           face=FaceConfig(), overwrite=True)
    return run_file_job(config)


def stage_summary(result: FileJobResult) -> str:
    means = result.times.mean_ms()
    return ", ".join(f"{stage} {ms:.1f}" for stage, ms in means.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK)
    parser.add_argument("--stand-in", action="store_true", help="measure a random-weight pack of the same shape")
    parser.add_argument("--clips", nargs="+", default=["d11", "s18"], help="clip names in ../shared/data/faces")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--paths", nargs="+", default=["student", "gan"], choices=["student", "gan"])
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_file_job_"))
    pack_note = "demo pack"
    if args.stand_in or not (args.pack / MANIFEST).is_file():
        args.pack = stand_in_pack(work / "pack")
        pack_note = "stand-in pack (demo-pack architecture, random weights)"
    pack = load_pack(args.pack)
    # the pack's default edit, which has a student in the demo pack and the stand-in alike
    edit = pack.default_edit or (sorted(pack.students)[0], 1.0)
    rows = []
    for name in args.clips:
        clip = FACES / f"{name}.mp4"
        with FileSource(clip) as source:
            size = f"{source.info.width}x{source.info.height}"
        # a first baseline warms the file cache and the codec libraries; the second is the one reported
        baseline(clip, work / "warm.mp4")
        frames, seconds = baseline(clip, work / "base.mp4")
        base_fps = frames / seconds
        rows.append((name, size, "decode + encode only", base_fps, 1.0, ""))
        print(f"{name} {size}: baseline {base_fps:.1f} fps", flush=True)
        for path in args.paths:
            result = edit_job(clip, work / f"{path}.mp4", args.pack, path, args.backend, edit)
            rows.append((name, size, path, result.fps, result.fps / base_fps, stage_summary(result)))
            print(f"{name} {size}: {path} {result.fps:.1f} fps ({result.fps / base_fps:.2f} of baseline); "
                  f"ms per call: {stage_summary(result)}", flush=True)

    load = os.getloadavg()
    lines = [
        SECTION, "",
        (f"`python bench/file_job.py{' --stand-in' if args.stand_in else ''}` ({pack_note}, crop {pack.crop_size} px, "
        f"edit {edit[0]}={edit[1]:g}; "
        f"backend {args.backend}; libx264 veryfast crf 18; dlib detector every {FaceConfig().detect_every} frames; decode, tracking "
        f"and encode in threads of their own, one engine thread per network; gan path with centred code "
        f"smoothing, sigma 3 frames; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, load average at the end "
        f"{load[0]:.1f}: the machine is shared, so fps vary between runs)."), "",
        "| clip | size | run | fps | vs baseline | ms per call by stage |",
        "|---|---|---|---|---|---|",
    ]
    for name, size, run, fps, ratio, stages in rows:
        lines.append(f"| {name} | {size} | {run} | {fps:.1f} | {ratio:.2f} | {stages} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_results:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
