"""`calibrate`: INT8 Q/DQ graphs for the pack's networks, with an FP32 / FP16 / INT8 accuracy report.

Generator: W+ codes drawn through its own mapping network. Encoder and students: a folder of aligned
face crops (--crops). The .int8.onnx files run on ONNX Runtime here and build as explicitly quantised
TensorRT engines with `build-engines --onnx FILE --precision int8`.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HELP = "calibrate networks to INT8 (Q/DQ ONNX) and report INT8/FP16 vs FP32 accuracy and speed"

HELD_OUT = 2  # batches kept out of calibration for the report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from calibration.quantize import CALIBRATION_METHODS
    from stream.commands.build_engines import add_network_arguments

    add_network_arguments(parser)
    parser.add_argument("--crops", type=Path, help="folder of aligned face crops (encoder, students)")
    parser.add_argument("--samples", type=int, default=32, help="calibration batches (default: 32)")
    parser.add_argument("--batch", type=int, default=1, help="static batch of the calibrated graph (default: 1)")
    parser.add_argument("--method", choices=CALIBRATION_METHODS, default="entropy",
                        help="activation range method (default: entropy)")
    parser.add_argument("--out", type=Path, default=Path("out/calibrated"),
                        help="folder for the .onnx / .int8.onnx files and range caches (default: out/calibrated)")
    parser.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime (default: all cores)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine in the report")


def _feeds(network, args):
    from calibration import crops_to_feeds, load_crop_folder, materialise, wplus_feeds
    from engines.errors import UserError

    count = args.samples + HELD_OUT
    if network.mapping is not None:
        num_ws, style_dim = network.sample_shape
        feeds = wplus_feeds(network.mapping, num_ws, count, args.batch, network.input_name, z_dim=style_dim)
    else:
        if args.crops is None:
            raise UserError(f"calibrating the {network.name} needs face crops: pass --crops DIR "
                            "(a folder of aligned face crop images)")
        crops = load_crop_folder(args.crops, network.sample_shape[-1], limit=count * args.batch)
        feeds = crops_to_feeds(crops, network.input_name, args.batch)
    samples = materialise(feeds, network.specs(args.batch), f"calibration set for the {network.name}")
    if len(samples) <= HELD_OUT:
        raise UserError(f"{network.name}: only {len(samples)} calibration batches; give more crops or --samples")
    return samples[:-HELD_OUT], samples[-HELD_OUT:]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from calibration import compare_precisions, format_report, quantize_qdq
    from engines.backends.onnxruntime_backend import OnnxRuntimeEngine
    from engines.export import export_cached
    from stream.commands.build_engines import load_networks

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for network in tqdm(load_networks(args), desc="calibrate", unit="network"):
        calibration_set, held_out = _feeds(network, args)
        onnx_path = args.out / f"{network.name}_b{args.batch}.onnx"
        shutil.copyfile(export_cached(network.module, network.specs(args.batch), (network.output_name,)), onnx_path)
        result = quantize_qdq(onnx_path, tqdm(calibration_set, desc=f"{network.name} ranges", leave=False),
                              method=args.method)
        print(f"{network.name}: {result.onnx_path} ({result.samples} batches, ranges "
              f"{'reused from' if result.ranges_reused else 'cached in'} {result.range_cache.name})")
        reference = OnnxRuntimeEngine(onnx_path, "fp32", threads=args.threads)
        candidates = {"fp16": OnnxRuntimeEngine(onnx_path, "fp16", threads=args.threads),
                      "int8": OnnxRuntimeEngine(result.onnx_path, "int8", threads=args.threads)}
        rows += compare_precisions(network.name, reference, candidates, held_out, runs=args.runs)
    print(format_report(rows))
    return 0
