"""`batch INPUTS... -o OUT_DIR`: the file job over many videos, on this machine or on a Ray cluster."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from engines.errors import UserError
from stream.commands.file import add_job_arguments

HELP = "edit many videos into a folder (resumable), on this machine or on a Ray cluster (--ray)"

# options that name files: made absolute here, since workers on a cluster do not share this working folder
_PATH_OPTIONS = ("pack", "generator", "encoder", "student", "face_models")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="video files, folders of videos, or .txt files listing one path a line")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT_DIR",
                        help="folder for the outputs, OUT_DIR/<name>.mp4 (created if missing)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs in OUT_DIR that this batch did not finish (other settings or "
                             "files of your own); finished ones are always skipped: delete them to redo them")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="workers, each loading the networks once (default: one per GPU, else 1)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run on a Ray cluster: its address (e.g. auto, or ray://HEAD:10001), or local "
                             "to start one on this machine (needs the cluster extra)")
    add_job_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stream.batch import Outcome, collect_inputs, completed, job_settings, plan, summary_table
    from stream.commands.file import job_config
    from stream.filejob import default_edits

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more")
    if args.ray:
        from stream.cluster import import_ray

        import_ray(args.ray)  # a missing extra fails before any video is opened
    for name in _PATH_OPTIONS:
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).absolute())
    args.directions = [path.absolute() for path in args.directions]
    out_dir = args.output_dir.absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"-o {out_dir}: cannot create this folder ({err.strerror}); choose another") from None
    items = plan(collect_inputs(args.inputs), out_dir)
    # the job every item shares; its input and output are replaced per item (this output is never written)
    template = job_config(args, input=items[0].input, output=out_dir / ".batch-template.mp4")
    template = replace(template, edits=default_edits(template))  # said once, not once a video
    settings = job_settings(template)

    outcomes: list[Outcome] = []
    todo = []
    for item in items:
        previous = completed(item, settings)
        if previous is None:
            todo.append(item)
        else:
            outcomes.append(previous)
    if outcomes:
        print(f"{len(outcomes)} of {len(items)} outputs already complete in {out_dir}: skipped")

    # the bar starts with the first result, once the workers (and the cluster) are up and loaded
    bars: list[tqdm] = []
    seen: dict[int, int] = {}

    def progress_bar() -> tqdm:
        if not bars:
            bars.append(tqdm(total=sum(item.frames for item in todo), unit="frame", desc=f"{len(todo)} videos",
                             dynamic_ncols=True))
        return bars[0]

    def on_frames(index: int, count: int) -> None:
        seen[index] = seen.get(index, 0) + count
        progress_bar().update(count)

    def on_outcome(outcome: Outcome) -> None:
        outcomes.append(outcome)
        bar = progress_bar()
        # the bar's total assumed the declared frame count: count what the video really had (or, when it
        # stopped early, what was done), so that the bar ends full
        shown = seen.get(outcome.item.index, 0)
        actual = outcome.frames if outcome.status == "done" else shown
        bar.total += actual - outcome.item.frames
        bar.update(actual - shown)
        if outcome.status == "failed":
            bar.write(f"failed: {outcome.item.input.name}: {outcome.reason}", file=sys.stderr)
        finished = sum(o.status == "done" for o in outcomes)
        bar.set_postfix_str(f"{finished} done, {sum(o.status == 'failed' for o in outcomes)} failed")

    start = time.perf_counter()
    try:
        if not todo:
            pass
        elif args.ray:
            from stream.cluster import run_on_ray

            run_on_ray(template, todo, args.ray, args.workers, on_frames, on_outcome)
        else:
            from stream.batch import local_devices, run_local

            run_local(template, todo, local_devices(args.workers), on_frames, on_outcome)
    finally:
        if bars:
            bars[0].close()
        if outcomes:
            print(summary_table(outcomes, time.perf_counter() - start))
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0
