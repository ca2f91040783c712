"""CPU benchmark: PyTorch eager vs ONNX Runtime (FP32, and INT8 Q/DQ where it helps), batch 1.

Networks (random weights, the shapes that matter): the shipped demo pack's generator, encoder (shapes read
from assets/demo_pack/metrics.json) and
student, the full-size rosinality 1024 generator and the e4e encoder. Each engine is timed in this one
process: median of --runs runs after warm-up, with the thread count stated. With --write the table
replaces the "## Engines" section of bench/RESULTS.md (other sections are kept).

    .venv/bin/python bench/engines_cpu.py --write            # everything, ~10 min on 2 cores
    .venv/bin/python bench/engines_cpu.py --skip-heavy       # demo-pack networks only, ~1 min
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration import crops_to_feeds, quantize_qdq, relative_l2, wplus_feeds
from engines.backends.onnxruntime_backend import OnnxRuntimeEngine
from engines.backends.torch_backend import TorchEngine
from engines.export import export_onnx
from stream.report import write_section

log = logging.getLogger("bench.engines_cpu")
RESULTS = ROOT / "bench" / "RESULTS.md"
FACES = ROOT.parent / "shared" / "data" / "faces"
SECTION = "## Engines"


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_name: str
    shape: tuple[int, ...]
    heavy: bool
    int8: bool  # calibrate and time an INT8 Q/DQ graph
    mapping: Callable[[], Callable[[np.ndarray], np.ndarray]] | None = None  # generator: its z -> w


def _generator(size_config: dict) -> nn.Module:
    from engines.nets.stylegan2 import Generator

    torch.manual_seed(0)
    return Generator(**size_config).eval()


def _mapping(generator: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def mapping(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return generator.mapping(torch.from_numpy(z)).numpy()

    return mapping


def _student() -> nn.Module:
    from engines.nets.student import ResidualStudent

    torch.manual_seed(0)
    student = ResidualStudent()
    with torch.no_grad():
        for parameter in student.parameters():  # a trained student's delta is not zero
            parameter.normal_(0, 0.05)
    return student


def cases() -> list[Case]:
    from engines.nets.encoders import DemoEncoder, Encoder4Editing
    from engines.nets.stylegan2 import small_generator_config

    cfg = json.loads((ROOT / "assets" / "demo_pack" / "metrics.json").read_text())["config"]  # the shipped shapes
    size = cfg["size"]
    small = small_generator_config(size, width=cfg["generator_width"], n_mlp=cfg["generator"]["n_mlp"])
    return [
        Case(f"demo generator {size}px", lambda: _generator(small).export_safe(), "wplus",
             (1, _generator(small).num_ws, 512), False, True, lambda: _mapping(_generator(small))),
        Case(f"demo encoder {size}px", lambda: DemoEncoder(**cfg["encoder"]).eval(), "image", (1, 3, size, size),
             False, True),
        Case("student 256px", _student, "image", (1, 3, 256, 256), False, True),
        Case("rosinality generator 1024px", lambda: _generator({"size": 1024}).export_safe(), "wplus",
             (1, 18, 512), True, False),
        Case("e4e encoder 256px", lambda: Encoder4Editing().eval(), "image", (1, 3, 256, 256), True, True),
    ]


def _frames(size: int, count: int) -> list[np.ndarray]:
    """Centre crops of real video frames from ../shared/data/faces (smooth noise when absent)."""
    import cv2

    clips = sorted(FACES.glob("*.mp4")) if FACES.is_dir() else []
    crops: list[np.ndarray] = []
    for clip in clips:
        capture = cv2.VideoCapture(str(clip))
        while len(crops) < count:
            ok, bgr = capture.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            side = min(h, w)
            square = bgr[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
            crops.append(cv2.cvtColor(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA),
                                      cv2.COLOR_BGR2RGB))
            for _ in range(15):  # every 16th frame: some variety
                capture.grab()
        capture.release()
        if len(crops) >= count:
            return crops
    rng = np.random.default_rng(1)
    return [np.clip(rng.normal(128, 60, (size // 8, size // 8, 3)), 0, 255).astype(np.uint8)
            .repeat(8, 0).repeat(8, 1) for _ in range(count)]


def calibration_feeds(case: Case, count: int) -> list[dict[str, np.ndarray]]:
    if case.mapping is not None:
        return list(wplus_feeds(case.mapping(), case.shape[1], count, case.shape[0], "wplus"))
    return list(crops_to_feeds(_frames(case.shape[-1], count * case.shape[0]), "image", case.shape[0]))


def interleaved(engines: dict[str, object], inputs: dict[str, np.ndarray], runs: int,
                warmup: int = 2) -> dict[str, tuple[float, float]]:
    """{name: (median wall ms, median process-CPU ms)}, the engines taking turns run by run.

    Taking turns exposes every engine to the same background load on a shared machine; process CPU time
    (single-threaded runs) leaves out the time spent waiting for a core.
    """
    for engine in engines.values():
        for _ in range(warmup):
            engine.run(inputs)
    wall: dict[str, list[float]] = {name: [] for name in engines}
    cpu: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, engine in engines.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            engine.run(inputs)
            wall[name].append((time.perf_counter() - start_wall) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in engines}


def bench_case(case: Case, runs: int, threads: int, work: Path) -> dict:
    module = case.build()
    inputs = {case.input_name: np.random.default_rng(0).standard_normal(case.shape).astype(np.float32)}
    specs = {case.input_name: (case.shape, "float32")}
    path = export_onnx(module, {case.input_name: torch.from_numpy(inputs[case.input_name])},
                       work / "net.onnx", output_names=["out"])
    engines = {"torch": TorchEngine(module, specs, ["out"], threads=threads),
               "ort": OnnxRuntimeEngine(path, threads=threads)}
    int8_err = None
    if case.int8:
        feeds = calibration_feeds(case, 9)
        held_out = feeds.pop()  # error is measured on data like the calibration set's, not on noise
        quantized = quantize_qdq(path, feeds, work / "net.int8.onnx", method="minmax" if case.heavy else "entropy")
        engines["int8"] = OnnxRuntimeEngine(quantized.onnx_path, "int8", threads=threads)
        int8_err = relative_l2(engines["int8"].run(held_out)["out"], engines["ort"].run(held_out)["out"])
    times = interleaved(engines, inputs, runs, warmup=1 if case.heavy else 2)
    return {"network": case.name, "shape": "x".join(map(str, case.shape)), "times": times, "int8_err": int8_err}


def table(rows: list[dict], threads: int, runs: int) -> str:
    lines = [SECTION, "",
             (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
             f"(load average {os.getloadavg()[0]:.1f} at the end), {threads} thread(s) for both PyTorch and "
             f"ONNX Runtime; batch 1; random weights; one process, engines taking turns run by run; median of "
             f"{runs} runs (3 for the two full-size networks) after warm-up. torch {torch.__version__}, "
             f"onnxruntime {_ort_version()}. Wall ms / process-CPU ms: under load the CPU time is the steadier "
             "figure. INT8 = symmetric Q/DQ graph from `calibrate` (8 batches: video frames for image nets, "
             "W+ from the mapping net for the generator), error on a held-out batch."),
             ("Produced by `bench/engines_cpu.py --threads 1 --write`; numbers, never asserted in tests. "
             "GPU numbers (PyTorch FP32 / FP16 / FP16 + CUDA graphs, TensorRT when installed) come from "
             "`bench/gpu.sh` on an NVIDIA machine."), "",
             ("| network | input | PyTorch FP32 ms (wall / CPU) | ORT FP32 ms (wall / CPU) | ORT/PyTorch time (CPU) "
             "| ORT speed-up (CPU) | ORT INT8 ms (wall / CPU) | INT8 rel L2 vs FP32 |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t = r["times"]
        ratio = t["ort"][1] / t["torch"][1]
        int8 = f"{t['int8'][0]:.1f} / {t['int8'][1]:.1f}" if "int8" in t else "-"
        err = "-" if r["int8_err"] is None else f"{r['int8_err']:.2e}"
        lines.append(f"| {r['network']} | {r['shape']} | {t['torch'][0]:.1f} / {t['torch'][1]:.1f} | "
                     f"{t['ort'][0]:.1f} / {t['ort'][1]:.1f} | {ratio:.2f} | {1 / ratio:.2f}x | {int8} | {err} |")
    light = [r["times"]["torch"][1] / r["times"]["ort"][1] for r in rows
             if not r["network"].startswith(("rosinality", "e4e"))]
    if light:
        lines += ["", (f"ONNX Runtime vs eager PyTorch on the demo-pack networks (CPU time): {min(light):.2f}x "
                       f"to {max(light):.2f}x faster (target: at least 1.3x).")]
    return "\n".join(lines) + "\n"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine (heavy networks: 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-heavy", action="store_true", help="skip the 1024 generator and e4e encoder")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for case in cases():
        if case.heavy and args.skip_heavy:
            continue
        print(f"... {case.name}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            rows.append(bench_case(case, 3 if case.heavy else args.runs, args.threads, Path(work)))
        print(table(rows[-1:], args.threads, args.runs).splitlines()[-1], file=sys.stderr, flush=True)
    text = table(rows, args.threads, args.runs)
    print(text)
    if args.write:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
