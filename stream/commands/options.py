"""Options that several commands share (not a command itself: cli.COMMANDS does not list it)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Your own networks in place of the model pack's (the generator path)."""
    parser.add_argument("--generator", type=Path,
                        help="generator checkpoint: rosinality .pt, NVlabs .pkl, e4e/pSp .pt or safetensors "
                             "(gan path; default: the pack's)")
    parser.add_argument("--encoder", type=Path, help="encoder checkpoint: e4e/pSp .pt or safetensors "
                                                     "(gan path; default: the pack's)")
    parser.add_argument("--directions", type=Path, action="append", default=[], metavar="FILE",
                        help="directions: a project directions file or a published .pt/.npy direction, "
                             "named after the file (repeatable; default: the pack's)")
