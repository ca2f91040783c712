"""`demo`: build a sample clip from a photo scikit-image ships, edit it with the demo pack, side by side."""
from __future__ import annotations

import argparse
from pathlib import Path

from stream.commands.file import add_model_arguments

HELP = "edit a generated sample clip with the demo model pack and write a before | after video"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path("out") / "demo.mp4", metavar="OUT",
                        help="side-by-side video to write (default out/demo.mp4; the sample clip goes beside it)")
    parser.add_argument("--edit", action="append", default=[], metavar="NAME=STRENGTH",
                        help="edit to apply (repeatable; default: the pack's default edit)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the sample clip (default 3)")
    add_model_arguments(parser)
    # the sample's suit and flag fool the HOG detector now and then; the astronaut is the largest face.
    # The generator path: its edit moves the face's own pixels (stream/motion.py), so an opened mouth reads
    # as opened; the pack's student was distilled from the in-place change and darkens the mouth instead.
    parser.set_defaults(faces="largest", model="gan")


def run(args: argparse.Namespace) -> int:
    from engines.errors import UserError
    from stream.commands.file import model_config, run_with_progress, stage_table
    from stream.config import FaceConfig, FileJobConfig, parse_edit
    from stream.modelpack import load_pack
    from stream.sample import build_sample_clip

    if not 0.5 <= args.seconds <= 60:
        raise UserError(f"--seconds {args.seconds}: choose 0.5 to 60")
    # bad edits, a missing or broken pack and an unusable output folder fail before the sample clip is built
    edits = tuple(parse_edit(text) for text in args.edit)
    load_pack(args.pack)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"-o {args.output}: cannot create its folder ({err.strerror}); choose another -o") from None
    sample = build_sample_clip(args.output.with_name(f"{args.output.stem}_input.mp4"), seconds=args.seconds)
    print(f"sample clip: {sample} (scikit-image's astronaut photo, panned and zoomed, with a tone)")
    config = FileJobConfig(
        input=sample,
        output=args.output,
        edits=edits,
        model=model_config(args),
        face=FaceConfig(faces=args.faces, detect_every=args.detect_every),
        side_by_side=True,
        overwrite=True,  # the demo's own output, rewritten on every run
        smoothing=args.smoothing,
        smoothing_sigma=args.smoothing_sigma,
    )
    result = run_with_progress(config)
    print(stage_table(result))
    print(f"wrote {result.output} (left: input, right: edited)")
    return 0
