"""`build-engines`: export the pack's (or given) networks to ONNX and build their engines ahead of time.

The pipeline calls create_engine(module, ...) with the same input specs and output names as here, so
what this command builds (exported graphs and TensorRT plans, both content-keyed in the user cache) is
what a later `file`, `camera` or `serve` run finds, instead of building on its first frame.
The network helpers here are shared by `calibrate` and `bench`.
"""
from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from engines.errors import UserError

HELP = "export networks to ONNX and build TensorRT / ONNX Runtime engines ahead of time (cached)"

NETWORK_KINDS = ("generator", "encoder", "students")


@dataclass(frozen=True)
class Network:
    """One network as the pipeline runs it: input/output names are stream/pipeline.py's *_IO."""

    name: str
    module: nn.Module
    input_name: str
    sample_shape: tuple[int, ...]  # one sample, without the batch axis
    output_name: str
    mapping: Callable[[np.ndarray], np.ndarray] | None = None  # generator: z -> w, for W+ calibration

    def specs(self, batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
        return {self.input_name: ((batch, *self.sample_shape), "float32")}


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    from stream.modelpack import DEFAULT_PACK

    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK, help="model pack folder (default: the demo pack)")
    parser.add_argument("--generator", type=Path, help="generator checkpoint instead of the pack's")
    parser.add_argument("--encoder", type=Path, help="encoder checkpoint instead of the pack's")
    parser.add_argument("--networks", nargs="+", choices=NETWORK_KINDS, default=list(NETWORK_KINDS),
                        help="which networks (default: all; students only from a pack)")


def load_networks(args: argparse.Namespace) -> list[Network]:
    """The networks args ask for, from explicit checkpoints or the pack."""
    from engines import load_encoder, load_generator
    from stream.pipeline import ENCODER_IO, GENERATOR_IO, STUDENT_IO

    wanted = set(args.networks)
    needs_pack = ("students" in wanted or ("generator" in wanted and args.generator is None)
                  or ("encoder" in wanted and args.encoder is None))
    pack = None
    if needs_pack:
        from stream.modelpack import load_pack

        pack = load_pack(args.pack)
    networks = []
    if "generator" in wanted:
        generator = load_generator(args.generator or pack.generator)  # type: ignore[union-attr]
        networks.append(Network("generator", generator.export_safe(), GENERATOR_IO[0],
                                (generator.num_ws, generator.style_dim), GENERATOR_IO[1], generator.mapping))
    if "encoder" in wanted:
        encoder = load_encoder(args.encoder or pack.encoder)  # type: ignore[union-attr]
        size = encoder.input_size
        # ReStyle's encoder reads 6 channels (the target and the previous reconstruction)
        networks.append(Network("encoder", encoder.module, ENCODER_IO[0], (encoder.input_nc, size, size),
                                ENCODER_IO[1]))
    if "students" in wanted and pack is not None:
        for edit in sorted(pack.students):
            size = pack.crop_size
            networks.append(Network(f"student-{edit}", pack.load_student(edit), STUDENT_IO[0], (3, size, size),
                                    STUDENT_IO[1]))
    if not networks:
        raise UserError("no networks selected: pass --networks and a --pack or checkpoint files")
    return networks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from engines.backends import BACKEND_CHOICES, PRECISIONS

    add_network_arguments(parser)
    parser.add_argument("--onnx", type=Path, nargs="+", help="build engines for these ONNX files instead "
                        "(e.g. the .int8.onnx that `calibrate` writes)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="default: fp16 on TensorRT, fp32 elsewhere (fp16 is slower than fp32 on CPUs)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2],
                        help="static batch sizes to build (default: 1 2; the residual edit runs the generator at 2)")
    parser.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime (default: all cores)")
    parser.add_argument("--out", type=Path, help="also copy the exported ONNX files into this folder")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engines.backends import create_engine, default_precision, resolve_backend
    from engines.backends.timing import random_inputs, time_engine
    from engines.export import check_tensorrt_compatible, export_cached

    jobs: list[tuple[str, Callable[[], Path]]] = []
    if args.onnx:
        for path in args.onnx:
            jobs.append((path.name, lambda path=path: path))
    else:
        for network in load_networks(args):
            for batch in args.batch:
                jobs.append((f"{network.name} b{batch}", lambda n=network, b=batch: export_cached(
                    n.module, n.specs(b), (n.output_name,))))
    backend, _ = resolve_backend(args.backend, have_module=False, precision=args.precision or "fp32")
    precision = args.precision or default_precision(backend)
    rows = []
    for label, make_onnx in tqdm(jobs, desc="build-engines", unit="engine"):
        onnx_path = make_onnx()
        check_tensorrt_compatible(onnx_path)
        if args.out and not args.onnx:  # --onnx files are the user's own: nothing was exported to copy
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(onnx_path, args.out / f"{label.replace(' ', '_')}.onnx")
        engine = create_engine(onnx_path, args.backend, precision=precision, threads=args.threads)
        timing = time_engine(engine, random_inputs(engine), runs=5, warmup=1)
        rows.append((label, engine.name, engine.precision, timing.median_ms, onnx_path))
    width = max(len(r[0]) for r in rows)
    print(f"{'network':<{width}}  backend      precision  median ms  graph")
    for label, name, prec, ms, path in rows:
        print(f"{label:<{width}}  {name:<11}  {prec:<9}  {ms:9.2f}  {path}")
    return 0
