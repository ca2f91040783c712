"""`doctor`: report what is installed and usable, and why something is not."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "report what is installed and usable (torch, CUDA, TensorRT, cupy, onnxruntime, dlib, insightface)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stream.modelpack import DEFAULT_PACK

    parser.add_argument("--face-models", type=Path, help="insightface model-pack folder to check (e.g. buffalo_l)")
    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK, help="model pack folder to check")


def run(args: argparse.Namespace) -> int:
    from engines.backends import resolve_backend
    from stream.doctor import run_checks

    checks = run_checks(args.face_models, args.pack)
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{'ok ' if check.ok else 'no '} {check.name:<{width}}  {check.detail}")
    backend, reason = resolve_backend("auto", have_module=True, precision="fp32")
    print(f"\n--backend auto picks: {backend} ({reason})")
    return 0
