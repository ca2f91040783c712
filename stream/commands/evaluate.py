"""`evaluate IN OUT`: identity, temporal coherence (TL-ID, TG-ID), flicker and attribute change of an edit."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "compare an edited video with its input: identity, TL-ID/TG-ID coherence, flicker, attribute change"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="IN", help="the original video")
    parser.add_argument("output", type=Path, metavar="OUT", help="its edited version (same frames)")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="measure identity and attributes on every N-th frame (flicker uses all; default 1)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engines.errors import UserError
    from stream.evaluate import evaluate_videos
    from stream.media.source import FileSource

    # every check that can fail runs before the (long) measuring, not after it
    if args.every < 1:
        raise UserError(f"--every {args.every}: must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames {args.max_frames}: must be >= 1")
    if args.json is not None and not args.json.parent.is_dir():
        raise UserError(f"--json {args.json}: folder {args.json.parent} does not exist; create it or choose another")
    with FileSource(args.input) as source, FileSource(args.output):
        total = source.info.frames or None
    if args.max_frames is not None:
        total = min(total or args.max_frames, args.max_frames)
    with tqdm(total=total, unit="frame", desc="evaluating", dynamic_ncols=True) as bar:
        report = evaluate_videos(args.input, args.output, every=args.every, max_frames=args.max_frames,
                                 progress=bar.update)
    rows = report.rows()
    width = max(len(name) for name, _ in rows)
    print(f"{args.output} vs {args.input}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
