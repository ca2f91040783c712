"""`bench`: latency of the pack's (or given) networks per backend and precision, median of repeated runs."""
from __future__ import annotations

import argparse

HELP = "time networks on each backend and precision (median of repeated runs, threads stated)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from engines.backends import BACKEND_CHOICES, PRECISIONS
    from stream.commands.build_engines import add_network_arguments

    add_network_arguments(parser)
    parser.add_argument("--backends", nargs="+", choices=[b for b in BACKEND_CHOICES if b != "auto"],
                        default=["torch", "onnxruntime"])
    parser.add_argument("--precisions", nargs="+", choices=[p for p in PRECISIONS if p != "int8"], default=["fp32"],
                        help="INT8 numbers come from `calibrate`, which needs a calibration set")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per engine (default: 20)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from engines.backends import create_engine
    from engines.backends.timing import random_inputs, time_engine
    from stream.commands.build_engines import load_networks

    threads = args.threads or os.cpu_count() or 1
    jobs = [(n, b, p) for n in load_networks(args) for b in args.backends for p in args.precisions]
    rows = []
    for network, backend, precision in tqdm(jobs, desc="bench", unit="engine"):
        engine = create_engine(network.module, backend, network.specs(args.batch), precision, threads,
                               output_names=(network.output_name,))
        timing = time_engine(engine, random_inputs(engine), runs=args.runs)
        rows.append((network.name, engine.name, engine.precision, engine.device, timing))
    print(f"batch {args.batch}, {threads} CPU threads, median of {args.runs} runs")
    print(f"{'network':<20} {'backend':<12} {'precision':<9} {'device':<6} {'median ms':>10} {'min ms':>8}")
    for name, backend, precision, device, timing in rows:
        print(f"{name:<20} {backend:<12} {precision:<9} {device:<6} {timing.median_ms:10.2f} {timing.min_ms:8.2f}")
    return 0
