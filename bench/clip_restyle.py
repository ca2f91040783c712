"""CPU benchmark: CLIP ViT-B/32 text and image encoding, and the cost of one ReStyle step.

Random weights at the real shapes (CLIP ViT-B/32; ReStyle's IR-SE-50 6-channel encoder with the 1024 px
StyleGAN2 decoder), eager PyTorch float32, batch sizes stated, median of --runs after a warm-up, wall and
process-CPU ms (the machine is shared: CPU time is the steadier figure). Baselines in the same run: a
ReStyle step against one pass of the e4e encoder; CLIP's cost per face against the demo pack generator's
render of it. With --write the table replaces the "## CLIP and ReStyle" section of bench/RESULTS.md.

    .venv/bin/python bench/clip_restyle.py --write            # ~5 min on 2 shared cores
    .venv/bin/python bench/clip_restyle.py --skip-restyle     # CLIP only, ~1 min
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.report import write_section

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## CLIP and ReStyle (bench/clip_restyle.py)"
PROMPTS = ["a photo of a smiling face.", "a face with an open mouth", "a bald man with a beard",
           "a close-up photo of a person with round glasses", "a portrait of an old woman", "a face",
           "a cropped photo of a face.", "a bright photo of a surprised face."]


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median wall ms, median process-CPU ms) of `runs` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def clip_rows(runs: int) -> tuple[list[tuple[str, str, float, float]], float]:
    from engines.nets.clip import ClipModel

    torch.manual_seed(0)
    model = ClipModel(activation="quickgelu").eval()  # ViT-B/32: 151M parameters
    rows = []
    tokens1, tokens8 = model.tokenize(PROMPTS[:1]), model.tokenize(PROMPTS)
    rows.append(("tokenize (BPE, cached words)", "8 prompts", *timed(lambda: model.tokenize(PROMPTS), runs)))
    with torch.inference_mode():
        rows.append(("encode_text", "1x77", *timed(lambda: model.encode_text(tokens1), runs)))
        rows.append(("encode_text", "8x77", *timed(lambda: model.encode_text(tokens8), runs)))
        image1, image8 = torch.randn(1, 3, 224, 224), torch.randn(8, 3, 224, 224)
        rows.append(("encode_image", "1x3x224x224", *timed(lambda: model.encode_image(image1), runs)))
        image_row = ("encode_image", "8x3x224x224", *timed(lambda: model.encode_image(image8), runs))
        rows.append(image_row)
        # what text directions pay per face: the demo generator's render + resize + CLIP image encoding
        from engines import load_generator

        generator = load_generator(ROOT / "assets" / "demo_pack" / "generator.safetensors")
        wplus = torch.randn(8, generator.num_ws, generator.style_dim)
        synthesis = generator.export_safe()
        render = timed(lambda: synthesis(wplus), runs)
        rows.append((f"demo generator render ({generator.resolution} px), baseline", "8 faces", *render))
        score = timed(lambda: model.encode_image(model.preprocess_generated(synthesis(wplus))), runs)
        rows.append(("render + preprocess + encode_image (one text score)", "8 faces", *score))
    return rows, score[1] / 8


def restyle_rows(runs: int) -> list[tuple[str, str, float, float]]:
    from engines.nets.encoders import BackboneEncoder, Encoder4Editing
    from engines.nets.stylegan2 import Generator
    from engines.restyle import pool_to

    torch.manual_seed(0)
    encoder = BackboneEncoder(input_nc=6).eval()
    e4e = Encoder4Editing(num_layers=50, mode="ir_se", stylegan_size=1024).eval()
    synthesis = Generator(1024).eval().export_safe()
    x6, x3 = torch.randn(1, 6, 256, 256), torch.randn(1, 3, 256, 256)
    codes = torch.randn(1, 18, 512)
    rows = []
    with torch.inference_mode():
        rows.append(("e4e encoder (IR-SE-50 + pyramid), baseline", "1x3x256x256", *timed(lambda: e4e(x3), runs)))
        rows.append(("ReStyle encoder (IR-SE-50, 6 channels)", "1x6x256x256", *timed(lambda: encoder(x6), runs)))
        rows.append(("StyleGAN2 1024 synthesis + 4x4 pool", "1x18x512",
                     *timed(lambda: pool_to(synthesis(codes), 256), runs)))
    step = ("one ReStyle step (sum of the two rows above)", "1 face", rows[1][2] + rows[2][2], rows[1][3] + rows[2][3])
    return [*rows, step]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--restyle-runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-restyle", action="store_true")
    parser.add_argument("--write", action="store_true", help="replace the section in bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip, per_face = clip_rows(args.runs)
    restyle = [] if args.skip_restyle else restyle_rows(args.restyle_runs)
    machine = (f"CPU: {platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
               f"{os.getloadavg()[0]:.1f} at the end), {args.threads} PyTorch thread(s); eager float32, random "
               f"weights at the real shapes; median of {args.runs} runs ({args.restyle_runs} for the full-size "
               f"ReStyle networks) after a warm-up; torch {torch.__version__}. "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Numbers, never asserted in tests.")
    lines = [SECTION, "", machine, "", "| network | input | wall ms | CPU ms |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {shape} | {wall:.1f} | {cpu:.1f} |" for name, shape, wall, cpu in clip + restyle]
    lines.append("")
    lines.append(f"A text score costs {per_face:.0f} ms of CPU per face with the demo generator; "
                 "`directions text` with the default 64 samples scores 64 faces. StyleCLIP's relevance "
                 "renders and encodes 2 x samples faces per style channel (888 channels on the demo generator): "
                 f"about {888 * 8 * per_face / 1e3 / 60:.0f} min of CPU at the default 4 samples, once per "
                 "generator and CLIP (cached).")
    if restyle:
        e4e_cpu, step_cpu = restyle[0][3], restyle[-1][3]
        lines.append(f"A ReStyle step costs {step_cpu / e4e_cpu:.1f}x one e4e pass (CPU time); an inversion of "
                     "n steps costs n encoder and n - 1 generator passes (the average image is computed once), "
                     f"so the upstream default of 5 is about {(5 * restyle[1][3] + 4 * restyle[2][3]) / 1e3:.0f} s "
                     f"of CPU per face here and 1 step (the live default) {restyle[1][3] / 1e3:.1f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
