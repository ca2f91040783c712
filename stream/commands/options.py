"""Options that several commands share (not a command itself: cli.COMMANDS does not list it)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Your own networks in place of the model pack's (the generator path)."""
    parser.add_argument("--generator", type=Path,
                        help="generator checkpoint: rosinality .pt, NVlabs .pkl, e4e/pSp .pt or safetensors "
                             "(gan path; default: the pack's)")
    parser.add_argument("--encoder", type=Path, help="encoder checkpoint: e4e/pSp/ReStyle .pt or safetensors "
                                                     "(gan path; default: the pack's)")
    parser.add_argument("--restyle-iterations", type=int, metavar="N",
                        help="ReStyle encoder: steps per face, each an encoder and a generator pass (default: "
                             "the file's n_iters_per_batch, 5, for files; 1 live). Give the same file as "
                             "--generator: ReStyle iterates with its own decoder")
    parser.add_argument("--directions", type=Path, action="append", default=[], metavar="FILE",
                        help="directions: a project directions file or a published .pt/.npy direction, "
                             "named after the file (repeatable; default: the pack's)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """How the networks run and how their change goes back (file, demo, serve, camera)."""
    from stream.config import PRECISIONS
    from stream.types import RESIDUAL_COLOURS

    parser.add_argument("--precision", choices=PRECISIONS,
                        help="engine precision (default: fp16 on TensorRT, fp32 elsewhere); int8 runs the "
                             "Q/DQ graphs `calibrate` wrote to --calibrated")
    parser.add_argument("--calibrated", type=Path, default=Path("out/calibrated"), metavar="DIR",
                        help="folder of `calibrate`'s .int8.onnx files (default out/calibrated)")
    parser.add_argument("--crop-size", type=int, metavar="PX",
                        help="side of the aligned face crop (default: the pack's, or your generator's resolution)")
    parser.add_argument("--residual-colour", choices=RESIDUAL_COLOURS,
                        help="gan path: the change as rgb or brightness only (default: the pack's setting "
                             "for its generator, rgb for yours)")
    parser.add_argument("--no-gate", action="store_true",
                        help="gan path: do not weaken edits on faces the generator reproduces poorly")
    parser.add_argument("--no-motion", action="store_true",
                        help="gan path: add the generator's change in place, instead of moving the face's own "
                             "pixels with the motion the edit draws and adding only the rest")


def engine_options(args: argparse.Namespace) -> dict:
    """ModelConfig keywords from add_engine_arguments' options."""
    return {"precision": args.precision, "calibrated": args.calibrated, "crop_size": args.crop_size,
            "residual_colour": args.residual_colour, "gate": not args.no_gate,
            "motion": not args.no_motion}
