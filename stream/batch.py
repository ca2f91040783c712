"""The batch job: many videos, each edited by the file job into OUT_DIR/<name>.mp4, on this machine's workers.

- Plan: inputs (files, folders, text files listing paths) become BatchItems with one output name each;
  two inputs with the same stem get names that differ by a hash of their path, never one file for both.
- Complete: the file job renames OUT into place only when it has finished; after that, the worker writes a
  marker beside it (`.<name>.mp4.done`, atomically) naming the input (path, size, time), the job's settings
  and the output's size. An item whose output and marker agree with this batch is skipped, so an
  interrupted batch resumes where it stopped. An output without such a marker (other settings, a file of
  the user's, a crash between the two renames) is never replaced without --overwrite.
- Workers: a BatchWorker builds the networks once (stream/session.py's EditNetworks) and hands them to the
  file job of one item after another. Locally there is one worker per GPU (or `workers` on the CPU), in
  this process when there is one, else in processes of their own (stream/batchprocs.py); stream/cluster.py
  runs the same workers as Ray actors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from engines.atomic import atomic_write_bytes
from engines.errors import UserError
from stream.config import FileJobConfig, TuningSettings

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv"})
LIST_SUFFIXES = frozenset({".txt", ".list", ".lst"})
Status = Literal["done", "skipped", "failed", "interrupted"]
RESUME_HINT = "stopped before the end; run the batch again to resume"


@dataclass(frozen=True)
class BatchSpec:
    """What every item of a batch shares: the file job (its input and output are replaced per item) and,
    when asked for, pivotal tuning of the generator to each video before it is edited."""

    job: FileJobConfig
    tuning: TuningSettings | None = None

    def settings(self) -> str:
        """A digest of everything that shapes an output except which input and output it is: an output made
        with other edits, models, tuning or encoder settings is not this batch's output."""
        fields = {"job": dataclasses.asdict(replace(self.job, overwrite=False)),
                  "tuning": None if self.tuning is None else dataclasses.asdict(self.tuning)}
        del fields["job"]["input"], fields["job"]["output"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BatchItem:
    """One input and the output it becomes; `index` is its place in the batch (progress, summary order)."""

    index: int
    input: Path
    output: Path
    frames: int = 0     # declared frame count (0: unknown); only sizes the progress bar

    @property
    def marker(self) -> Path:
        return marker_path(self.output)


@dataclass(frozen=True)
class Outcome:
    """What became of one item. `reason`: one line, for failed and interrupted items."""

    item: BatchItem
    status: Status
    frames: int = 0
    seconds: float = 0.0
    reason: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class Stopped(Exception):
    """Raised in a running file job when its worker is asked to stop; the job deletes its partial output."""


# -- inputs and output names -------------------------------------------------------------------------------

def collect_inputs(paths: Sequence[Path]) -> list[Path]:
    """Video paths, in order, each once: a folder gives its video files (by suffix, not recursing), a .txt /
    .list file gives one path a line (relative to the list's folder; blank lines and # comments skipped).
    Other paths are taken as videos as they are: one that does not exist fails as its own item."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not videos:
                kinds = ", ".join(sorted(VIDEO_SUFFIXES))
                raise UserError(f"{path}: no video files in this folder ({kinds})")
            found += videos
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            found += _listed(path)
        else:
            found.append(path)
    unique = list(dict.fromkeys(p.absolute() for p in found))
    if not unique:
        raise UserError("no inputs: give video files, folders of videos or a .txt file listing them")
    return unique


def _listed(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{list_file}: cannot read this list of inputs ({err}); give a UTF-8 text file"
                        ) from None
    entries = [line.strip() for line in lines]
    return [list_file.parent / entry for entry in entries if entry and not entry.startswith("#")]


def output_names(inputs: Sequence[Path]) -> list[str]:
    """`<stem>.mp4` for each input; stems that collide (ignoring case, for case-blind file systems) get
    `<stem>-<8 hex of the input's path>.mp4`, which depends on that path alone: a resumed batch finds it."""
    counts: dict[str, int] = {}
    for path in inputs:
        counts[path.stem.casefold()] = counts.get(path.stem.casefold(), 0) + 1
    names = []
    for path in inputs:
        if counts[path.stem.casefold()] == 1:
            names.append(f"{path.stem}.mp4")
        else:
            digest = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:8]
            names.append(f"{path.stem}-{digest}.mp4")
    return names


def plan(inputs: Sequence[Path], out_dir: Path) -> list[BatchItem]:
    """One BatchItem per input, its output in `out_dir` (which must exist); the frame counts are probed."""
    out_dir = out_dir.absolute()
    if not out_dir.is_dir():
        raise UserError(f"-o {out_dir}: not a folder; create it or choose another")
    return [BatchItem(index, path, out_dir / name, _declared_frames(path))
            for index, (path, name) in enumerate(zip(inputs, output_names(inputs)))]


def _declared_frames(path: Path) -> int:
    """The header's frame count, 0 when unknown or unreadable (the worker then reports what is wrong)."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].frames if container.streams.video else 0
    except (av.error.FFmpegError, OSError, ValueError):
        return 0


# -- completion markers -------------------------------------------------------------------------------------

def marker_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.done")


def _input_identity(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.absolute()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_marker(item: BatchItem, settings: str, frames: int, seconds: float) -> None:
    record = {"input": _input_identity(item.input), "settings": settings,
              "output_size": item.output.stat().st_size, "frames": frames, "seconds": seconds}
    atomic_write_bytes(item.marker, json.dumps(record, indent=1).encode())


def completed(item: BatchItem, settings: str) -> Outcome | None:
    """The skipped Outcome when `item.output` is this batch's finished output (from its marker), else None."""
    try:
        record = json.loads(item.marker.read_text(encoding="utf-8"))
        matches = (record["input"] == _input_identity(item.input) and record["settings"] == settings
                   and record["output_size"] == item.output.stat().st_size)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not matches:
        return None
    return Outcome(item, "skipped", int(record["frames"]), float(record["seconds"]))


# -- the worker ----------------------------------------------------------------------------------------------

class BatchWorker:
    """Loads the networks once, then edits one item after another with them (run_file_job's `networks`).

    With tuning, each video is edited by a generator tuned to it (stream/tuning.py, cached by content), so
    its networks are its own; the tuning runs here, on the worker that edits the video."""

    def __init__(self, spec: BatchSpec) -> None:
        from stream.filejob import ENGINE_THREADS, default_edits
        from stream.session import EditNetworks

        self.spec = spec
        self.settings = spec.settings()
        self._stop = threading.Event()
        self._networks = None
        if spec.tuning is None:
            networks = EditNetworks(spec.job.model, ENGINE_THREADS)
            edits = networks.check_edits(default_edits(spec.job, networks))
            networks.renderer(networks.path_for(edits))  # loaded now: a broken pack fails before any video
            self._networks = networks

    def stop(self) -> None:
        """Ask the running job (from another thread) to stop at its next frame; its output is not written."""
        self._stop.set()

    def run(self, item: BatchItem, on_frame: Callable[[], None] | None = None) -> Outcome:
        """Edit `item` (the file job's guarantees), then mark it complete. A bad input is a failed Outcome
        with the file job's one-line reason; a stop request an interrupted one."""
        from stream.filejob import run_file_job

        def frame_done(_frame: object) -> None:
            if self._stop.is_set():
                raise Stopped
            if on_frame is not None:
                on_frame()

        try:
            config = replace(self.spec.job, input=item.input, output=item.output)
            if self.spec.tuning is not None:
                config = self._tuned(config)
            result = run_file_job(config, on_frame=frame_done, networks=self._networks)
            write_marker(item, self.settings, result.frames, result.seconds)
        except Stopped:
            return Outcome(item, "interrupted", reason=RESUME_HINT)
        except UserError as err:
            return Outcome(item, "failed", reason=str(err))
        except Exception as err:  # one input must not end the batch; the traceback goes to the debug log
            log.debug("%s failed", item.input, exc_info=True)
            return Outcome(item, "failed", reason=f"{type(err).__name__}: {err} (run `file` on it with -v)")
        return Outcome(item, "done", result.frames, result.seconds)

    def _tuned(self, config: FileJobConfig) -> FileJobConfig:
        from stream.tuning import tune_for_video

        tuned = tune_for_video(config.input, config.model, config.face, self.spec.tuning)
        return replace(config, model=replace(config.model, tuned_generator=tuned.path))


# -- running a batch on this machine ------------------------------------------------------------------------

FramesCallback = Callable[[int, int], None]     # (item index, frames just written)
OutcomeCallback = Callable[[Outcome], None]


def local_devices(workers: int | None) -> list[str | None]:
    """One entry per local worker: the CUDA device it sees alone, or None (CPU). One worker per GPU by
    default; on a CPU-only machine `workers` (default 1)."""
    gpus = _cuda_devices()
    count = workers or len(gpus) or 1
    return [gpus[i % len(gpus)] if gpus else None for i in range(count)]


def _cuda_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        count = torch.cuda.device_count()
    except (ImportError, RuntimeError):  # a broken CUDA install counts as no GPU
        return []
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def run_local(spec: BatchSpec, items: Sequence[BatchItem], devices: Sequence[str | None],
              on_frames: FramesCallback, on_outcome: OutcomeCallback) -> None:
    """Edit `items` on local workers (one per entry of `devices`). A single CPU worker runs in this process;
    otherwise each worker is a process of its own that loads the networks once. Ctrl-C stops every job at its
    next frame (no partial output is left) and is raised again here."""
    if len(devices) == 1 and devices[0] is None:
        worker = BatchWorker(spec)
        for item in items:
            try:
                outcome = worker.run(item, lambda index=item.index: on_frames(index, 1))
            except KeyboardInterrupt:  # the job deleted its partial output on the way out
                on_outcome(Outcome(item, "interrupted", reason=RESUME_HINT))
                raise
            on_outcome(outcome)
        return
    from stream.batchprocs import run_in_processes

    run_in_processes(spec, items, devices, on_frames, on_outcome)


# -- the summary --------------------------------------------------------------------------------------------

def summary_table(outcomes: Sequence[Outcome], wall_seconds: float) -> str:
    """One row per item (input, status, frames, fps, output or reason), then the totals."""
    rows = sorted(outcomes, key=lambda o: o.item.index)
    width = max([len(o.item.input.name) for o in rows] + [5])
    lines = [f"{'input':<{width}} {'status':<11} {'frames':>6} {'fps':>6}  output / reason"]
    for o in rows:
        fps = f"{o.fps:6.1f}" if o.status == "done" else f"{'-':>6}"
        detail = o.reason or str(o.item.output)
        lines.append(f"{o.item.input.name:<{width}} {o.status:<11} {o.frames:>6d} {fps}  {detail}")
    counts = {status: sum(o.status == status for o in rows) for status in ("done", "skipped", "failed",
                                                                          "interrupted")}
    edited = sum(o.frames for o in rows if o.status == "done")
    rate = edited / wall_seconds if wall_seconds > 0 else 0.0
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items() if n or status != "interrupted")
                 + f"; {edited} frames edited in {wall_seconds:.1f} s ({rate:.1f} fps over the batch)")
    return "\n".join(lines)
