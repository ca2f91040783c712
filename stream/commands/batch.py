"""`batch INPUTS... -o OUT_DIR`: the file job over many videos, on this machine or on a Ray cluster."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from engines.errors import UserError
from stream.commands.file import add_job_arguments

if TYPE_CHECKING:
    from tqdm import tqdm

    from stream.batch import BatchItem, Outcome

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
    from stream.batch import BatchSpec, Outcome, collect_inputs, completed, plan, summary_table
    from stream.commands.file import job_config, tuning_settings
    from stream.filejob import default_edits
    from stream.session import EditNetworks

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
    job = job_config(args, input=items[0].input, output=out_dir / ".batch-template.mp4")
    # the edits, the pack's default when none was given, checked once here (reads the pack, loads no network)
    networks = EditNetworks(job.model)
    job = replace(job, edits=networks.check_edits(default_edits(job, networks)))
    spec = BatchSpec(job, tuning_settings(args) if args.tune else None)
    settings = spec.settings()

    outcomes: list[Outcome] = []
    todo: list[BatchItem] = []
    for item in items:
        previous = completed(item, settings)
        if previous is not None:
            outcomes.append(previous)
        elif item.output.exists() and not args.overwrite:  # fails here rather than after a worker starts
            reason = f"{item.output}: exists, made with other settings or not by a batch; pass --overwrite " \
                     "to replace it"
            outcomes.append(Outcome(item, "failed", reason=reason))
        else:
            todo.append(item)
    done_before = sum(outcome.status == "skipped" for outcome in outcomes)
    if done_before:
        print(f"{done_before} of {len(items)} outputs already complete in {out_dir}: skipped")
    for outcome in outcomes:
        if outcome.status == "failed":
            print(f"failed: {outcome.item.input.name}: {outcome.reason}", file=sys.stderr)

    progress = BatchProgress(todo, outcomes)
    start = time.perf_counter()
    try:
        if not todo:
            pass
        elif args.ray:
            from stream.cluster import run_on_ray

            run_on_ray(spec, todo, args.ray, args.workers, progress.frames, progress.outcome)
        else:
            from stream.batch import local_devices, run_local

            run_local(spec, todo, local_devices(args.workers), progress.frames, progress.outcome)
    finally:
        progress.close()
        if outcomes:
            print(summary_table(outcomes, time.perf_counter() - start))
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0


class BatchProgress:
    """A progress bar over the frames of every video to do, with the done and failed counts; failures get
    one line each as they come. Outcomes are appended to `outcomes` (for the summary table). The bar starts
    with the first report, once the workers (and the cluster) are up and have loaded the networks."""

    def __init__(self, todo: list[BatchItem], outcomes: list[Outcome]) -> None:
        self._todo, self._outcomes = todo, outcomes
        self._bar: tqdm | None = None
        self._seen: dict[int, int] = {}         # item index -> frames shown

    def _started(self) -> tqdm:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=sum(item.frames for item in self._todo), unit="frame",
                             desc=f"{len(self._todo)} videos", dynamic_ncols=True)
        return self._bar

    def frames(self, index: int, count: int) -> None:
        self._seen[index] = self._seen.get(index, 0) + count
        self._started().update(count)

    def outcome(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        bar = self._started()
        # the total assumed each video's declared frame count: count what it really had (or, when it
        # stopped early, what was done), so that the bar ends full
        shown = self._seen.get(outcome.item.index, 0)
        actual = outcome.frames if outcome.status == "done" else shown
        bar.total += actual - outcome.item.frames
        bar.update(actual - shown)
        if outcome.status == "failed":
            bar.write(f"failed: {outcome.item.input.name}: {outcome.reason}", file=sys.stderr)
        done = sum(o.status == "done" for o in self._outcomes)
        failed = sum(o.status == "failed" for o in self._outcomes)
        bar.set_postfix_str(f"{done} done, {failed} failed")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
