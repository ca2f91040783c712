"""GPU benchmark: PyTorch FP32, FP16 and FP16 + CUDA graphs for the 1024 generator and the e4e encoder.

Batch 1, random weights, device time from CUDA events (median of --runs after warm-up). Each row also
states the network's multiply-accumulates (counted by torch's FlopCounterMode), the throughput that
implies, and the floor: MACs at the GPU's dense FP16 tensor-core peak. Needs only torch with CUDA;
TensorRT rows are added when tensorrt is installed. Run through bench/gpu.sh.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.backends.torch_backend import TorchEngine

# dense FP16 tensor-core peak, TFLOP/s, from NVIDIA's spec sheets (SXM parts; PCIe parts are lower)
PEAK_FP16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0, "T4": 65.0}


def peak_tflops(name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_FP16_TFLOPS.items() if key in name), None)


def count_gmac(module: nn.Module, example: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(example)
    return counter.get_total_flops() / 2 / 1e9


def device_ms(step: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def relative_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm())


def networks() -> list[tuple[str, Callable[[], nn.Module], str, tuple[int, ...]]]:
    from engines.nets.encoders import Encoder4Editing
    from engines.nets.stylegan2 import Generator

    def generator() -> nn.Module:
        torch.manual_seed(0)
        return Generator(1024).eval().export_safe()

    def encoder() -> nn.Module:
        torch.manual_seed(0)
        return Encoder4Editing().eval()

    return [("rosinality generator 1024", generator, "wplus", (1, 18, 512)),
            ("e4e encoder 256", encoder, "image", (1, 3, 256, 256))]


def modes() -> list[tuple[str, dict]]:
    return [("PyTorch FP32 (cuDNN TF32 on, torch default)", {"precision": "fp32", "cuda_graphs": False}),
            ("PyTorch FP16 channels-last", {"precision": "fp16", "cuda_graphs": False}),
            ("PyTorch FP16 channels-last + CUDA graph", {"precision": "fp16", "cuda_graphs": True})]


def tensorrt_rows(name: str, module: nn.Module, input_name: str, example: torch.Tensor, reference: torch.Tensor,
                  args: argparse.Namespace) -> list[tuple[str, float, float]]:
    import importlib.util
    import tempfile

    if importlib.util.find_spec("tensorrt") is None:
        print(f"{name}: tensorrt not installed, TensorRT rows skipped", file=sys.stderr)
        return []
    from engines.backends.tensorrt_backend import TensorRTEngine
    from engines.export import export_onnx

    rows = []
    with tempfile.TemporaryDirectory() as work:
        path = export_onnx(module.float().cpu(), {input_name: example.float().cpu()}, Path(work) / "net.onnx",
                           output_names=["out"])
        for precision in ("fp32", "fp16"):
            engine = TensorRTEngine(path, precision)
            out = engine.run_device({input_name: example})["out"]
            ms = device_ms(lambda e=engine: e.run_device({input_name: example}), args.runs, args.warmup)
            rows.append((f"TensorRT {precision.upper()}", ms, relative_l2(out.float(), reference)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch", file=sys.stderr)
        return 1
    gpu = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    peak = peak_tflops(gpu)
    lines = [(f"GPU: {gpu} (compute {major}.{minor}), torch {torch.__version__}, CUDA {torch.version.cuda}; "
              f"batch 1; median of {args.runs} runs after {args.warmup} warm-up, CUDA-event device time, "
              "random weights."),
             f"Floor = MACs at the dense FP16 tensor-core peak ({peak or 'unknown'} TFLOP/s, spec sheet).",
             ("GMAC from torch's FlopCounterMode, which counts a stride-2 transposed conv at its input resolution "
             "(the work cuDNN does): 75 GMAC for the 1024 generator; the often-quoted ~142 GMAC counts those "
             "up-convs at their output resolution."), "",
             "| network | GMAC | mode | median ms | achieved TFLOP/s | floor ms | rel L2 vs FP32 CPU |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, build, input_name, shape in networks():
        module = build()
        example_cpu = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            reference = module(example_cpu).double()  # the CPU FP32 reference every row is compared to
        gmac = count_gmac(module.cuda(), example_cpu.cuda())
        floor = f"{2 * gmac / peak:.3f}" if peak else "-"
        example = example_cpu.cuda()
        rows = []
        for label, options in modes():
            engine = TorchEngine(module, {input_name: (shape, "float32")}, ["out"], device="cuda", **options)
            out = engine.run_device({input_name: example})["out"]
            ms = device_ms(lambda e=engine, n=input_name, x=example: e.run_device({n: x}), args.runs, args.warmup)
            rows.append((label, ms, relative_l2(out.cpu(), reference)))
            print(f"{name}: {label}: {ms:.2f} ms", file=sys.stderr, flush=True)
        rows += tensorrt_rows(name, module, input_name, example, reference.float().cuda(), args)
        for label, ms, err in rows:
            lines.append(f"| {name} | {gmac:.1f} | {label} | {ms:.2f} | {2 * gmac / ms:.1f} | {floor} | {err:.1e} |")
        del module
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
