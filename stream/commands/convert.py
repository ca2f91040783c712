"""`convert IN --out OUT.safetensors`: any supported checkpoint -> the project's safetensors."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "convert a rosinality .pt, NVlabs .pkl or e4e/pSp .pt checkpoint to safetensors (no code from the file runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="IN", help="checkpoint to read (.pt, .pkl, .safetensors)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.safetensors", help="file to write")


def run(args: argparse.Namespace) -> int:
    from engines.checkpoints import convert_checkpoint

    ckpt = convert_checkpoint(args.input, args.out)
    print(f"converted {args.input} -> {args.out}")
    print(f"  {ckpt.describe()}")
    if ckpt.architecture == "stylegan2-generator" or ckpt.decoder is not None:
        gen = ckpt.decoder if ckpt.decoder is not None else ckpt.module
        print(f"  generator: {gen.resolution}px, {gen.num_ws} W+ entries of {gen.style_dim}")
    print(f"  source sha256 {ckpt.sha256}")
    return 0
