"""The batch on a Ray cluster: the same BatchWorker as the local default (stream/batch.py), as Ray actors.

One actor per GPU (or `workers` actors of one CPU each on a CPU-only cluster) loads the networks once; the
driver hands each idle actor the next item, so Ray places the work and a slow video holds up no one else.
Workers write their outputs and markers to OUT_DIR themselves, through the file job's atomic writer, so
OUT_DIR, the inputs and the model files must be at the same paths on every node (shared storage).

`ray` is the optional extra `faceedit-stream[cluster]`, imported only here and only when asked for.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

from engines.errors import MissingDependency, UserError
from stream.batch import BatchItem, BatchSpec, BatchWorker, FramesCallback, Outcome, OutcomeCallback

log = logging.getLogger(__name__)
LOCAL = "local"         # --ray local: start a cluster on this machine for this batch
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.5            # how often the driver asks the actors how far their videos are
STOP_WAIT_S = 60.0      # how long Ctrl-C waits for the running jobs to delete their partial outputs
# Ray starts a local cluster on the machine's network address unless told this (a setting meant for
# laptops); a cluster private to one batch has no reason to listen beyond loopback
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class BatchActor:
    """A BatchWorker in a Ray actor. The actor is threaded, so `progress` and `stop` are answered while `run`
    works; `load` returns the reason the networks did not load (None when they did)."""

    def __init__(self) -> None:
        self._worker: BatchWorker | None = None
        self._progress = (-1, 0)     # (item index, frames written)

    def load(self, spec: BatchSpec) -> str | None:
        try:
            self._worker = BatchWorker(spec)
        except UserError as err:
            return str(err)
        return None

    def run(self, item: BatchItem) -> Outcome:
        assert self._worker is not None, "load() first"
        self._progress = (item.index, 0)

        def frame_done() -> None:
            self._progress = (item.index, self._progress[1] + 1)

        return self._worker.run(item, frame_done)

    def progress(self) -> tuple[int, int]:
        return self._progress

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()


def import_ray(address: str) -> ModuleType:
    """The ray module; MissingDependency naming the extra when it is not installed. For --ray local, Ray is
    first told to keep its cluster on loopback."""
    if address == LOCAL:
        os.environ.setdefault(LOOPBACK_ONLY, "0")  # read by ray when it is imported, and by its processes
    try:
        import ray
    except ImportError:
        raise MissingDependency("--ray needs the cluster extra: pip install 'faceedit-stream[cluster]' "
                                "(or run the batch without --ray, on this machine)") from None
    return ray


@contextmanager
def connected(address: str) -> Iterator[ModuleType]:
    """Ray, connected to the cluster at `address` ("local": a new one on this machine, "auto": the one
    `ray start` made here). A connection the caller already made (ray.init) is used as it is and kept."""
    ray = import_ray(address)
    if ray.is_initialized():
        yield ray
        return
    _check_reachable(address)
    try:
        ray.init(address=None if address == LOCAL else address, include_dashboard=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UserError(f"--ray {address}: no Ray cluster reachable there ({err}); start one with "
                        "`ray start --head`, or use --ray local") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A head's host:port that does not answer fails in seconds here rather than after Ray's minutes of
    retries. Other addresses ("auto", ray://) are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"--ray {address}: nothing answers there ({err.strerror or err}); give the head "
                        "node's address and port (ray start --head prints it), or use --ray local") from None


def run_on_ray(spec: BatchSpec, items: Sequence[BatchItem], address: str, workers: int | None,
               on_frames: FramesCallback, on_outcome: OutcomeCallback) -> None:
    """Edit `items` on the Ray cluster at `address` (see `connected`). Ctrl-C stops every running job at its
    next frame, waits for them to delete their partial outputs, and is raised again here."""
    with connected(address) as ray:
        actors = _start_actors(ray, spec, workers)
        try:
            _schedule(ray, actors, items, on_frames, on_outcome)
        finally:
            for actor in actors:
                ray.kill(actor)


def _start_actors(ray, spec: BatchSpec, workers: int | None) -> list:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    count = workers or gpus or 1
    if count > (gpus or cpus):
        raise UserError(f"--workers {count}: the cluster has {gpus} GPUs and {cpus} CPUs, room for "
                        f"{gpus or cpus} workers")
    per_actor = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    actor_class = ray.remote(BatchActor).options(max_concurrency=3, **per_actor)
    actors = [actor_class.remote() for _ in range(count)]
    log.info("ray: %d workers (%s each)", count, "one GPU" if gpus else "one CPU")
    try:
        errors = ray.get([actor.load.remote(spec) for actor in actors])
    except ray.exceptions.RayError as err:
        raise UserError(f"a worker could not start on the cluster ({_first_line(err)})") from None
    problem = next((error for error in errors if error), None)
    if problem:
        raise UserError(problem)
    return actors


def _schedule(ray, actors: list, items: Sequence[BatchItem], on_frames: FramesCallback,
              on_outcome: OutcomeCallback) -> None:
    """Give each idle actor the next item until all are done; report progress and outcomes as they come."""
    todo: deque[BatchItem] = deque(items)
    idle = list(actors)
    pending: dict = {}                  # ObjectRef of a run -> (actor, item)
    seen: dict[int, int] = {}           # item index -> frames reported

    def collect(refs: list) -> None:
        for ref in refs:
            actor, item = pending.pop(ref)
            try:
                outcome = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as err:   # the actor is gone: its node died, out of memory
                outcome = Outcome(item, "failed", reason=f"the worker died ({_first_line(err)})")
            except ray.exceptions.RayError as err:
                outcome = Outcome(item, "failed", reason=_first_line(err))
                idle.append(actor)
            on_outcome(outcome)

    def report_progress() -> None:
        busy = [actor for actor, _ in pending.values()]
        try:
            positions = ray.get([actor.progress.remote() for actor in busy], timeout=POLL_S)
        except ray.exceptions.RayError:     # a dead or slow actor: its outcome says what happened
            return
        for index, frames in positions:
            if index >= 0 and frames > seen.get(index, 0):
                on_frames(index, frames - seen.get(index, 0))
                seen[index] = frames

    try:
        while todo or pending:
            while idle and todo:
                actor, item = idle.pop(), todo.popleft()
                pending[actor.run.remote(item)] = (actor, item)
            if not pending:     # every actor died
                for item in todo:
                    on_outcome(Outcome(item, "failed", reason="no worker left on the cluster"))
                return
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S, fetch_local=False)
            collect(done)
            report_progress()
    except BaseException:
        # Ctrl-C or a callback's error: stop the running jobs so they delete their partial outputs
        for actor, _ in pending.values():
            actor.stop.remote()
        deadline = time.monotonic() + STOP_WAIT_S
        while pending and time.monotonic() < deadline:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            try:
                collect(done)
            except Exception:  # the batch is ending anyway
                log.debug("while stopping", exc_info=True)
        raise


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
