"""Command-line dispatcher: one sub-command per module in stream/commands.

Each command module defines HELP (one line), add_arguments(parser) and run(args) -> int.
Modules import lazily so that `--help` and `doctor` stay fast and work without optional extras.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engines.errors import UserError

# command name -> module under stream.commands (the single source of the command list)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "file": "file",
    "batch": "batch",
    "serve": "serve",
    "camera": "camera",
    "evaluate": "evaluate",
    "directions": "directions",
    "build-engines": "build_engines",
    "calibrate": "calibrate",
    "train-pack": "train_pack",
    "distill": "distill",
    "enrol": "enrol",
    "bench": "bench",
    "convert": "convert",
    "doctor": "doctor",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run_stream.py",
        description="Real-time GAN face editing: edit faces in video files, webcams and browser streams.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"stream.commands.{module_name}")
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
