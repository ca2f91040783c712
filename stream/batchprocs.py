"""Local batch workers as processes: one per device, each loading the networks once (stream/batch.py).

The parent hands items out through a queue and hears back through another: ("start", worker, index),
("frames", index, n), ("outcome", outcome), ("error", message) when a worker cannot load, ("exit", worker).
Workers ignore SIGINT: on Ctrl-C the parent sets `stop`, each running job stops at its next frame and
deletes its partial output, and the parent waits for them before it raises KeyboardInterrupt again.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
from collections.abc import Sequence

from engines.errors import UserError
from stream.batch import BatchItem, BatchSpec, BatchWorker, FramesCallback, Outcome, OutcomeCallback, Stopped

log = logging.getLogger(__name__)
STOP_WAIT_S = 60.0      # how long Ctrl-C waits for the running jobs to delete their partial outputs


def _serve(worker_id: int, spec: BatchSpec, device: str | None, tasks, events, stop) -> None:
    """A worker process: load once, then take items until the queue says None or `stop` is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before anything imports torch: this GPU alone
    try:
        worker = BatchWorker(spec)
    except UserError as err:
        events.put(("error", str(err)))
        return
    except Exception as err:  # noqa: BLE001  (the parent reports it in one line; this process has no log)
        events.put(("error", f"a worker could not load the networks ({type(err).__name__}: {err})"))
        return

    while not stop.is_set():
        item = tasks.get()
        if item is None or stop.is_set():
            break

        def frame_done(index: int = item.index) -> None:
            if stop.is_set():
                raise Stopped
            events.put(("frames", index, 1))

        events.put(("start", worker_id, item.index))
        events.put(("outcome", worker.run(item, frame_done)))
    events.put(("exit", worker_id))


def run_in_processes(spec: BatchSpec, items: Sequence[BatchItem], devices: Sequence[str | None],
                     on_frames: FramesCallback, on_outcome: OutcomeCallback) -> None:
    """Edit `items` on one process per entry of `devices` (a CUDA device id, or None for the CPU)."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked CUDA or thread state
    tasks, events, stop = context.Queue(), context.Queue(), context.Event()
    for item in items:
        tasks.put(item)
    for _ in devices:
        tasks.put(None)
    processes = [context.Process(target=_serve, args=(i, spec, device, tasks, events, stop), daemon=True,
                                 name=f"batch-worker-{i}") for i, device in enumerate(devices)]
    for process in processes:
        process.start()
    running: dict[int, int] = {}        # worker id -> index of the item it is editing
    reported: set[int] = set()
    by_index = {item.index: item for item in items}
    live = set(range(len(processes)))

    def handle(event: tuple) -> None:
        kind = event[0]
        if kind == "frames":
            on_frames(event[1], event[2])
        elif kind == "start":
            running[event[1]] = event[2]
        elif kind == "outcome":
            outcome: Outcome = event[1]
            reported.add(outcome.item.index)
            running.pop(next((w for w, i in running.items() if i == outcome.item.index), -1), None)
            on_outcome(outcome)
        elif kind == "exit":
            live.discard(event[1])
        elif kind == "error":
            raise UserError(event[1])

    def reap() -> None:
        """A worker that died without saying so (killed, out of memory): its item failed."""
        for worker_id in list(live):
            if not processes[worker_id].is_alive():
                live.discard(worker_id)
                index = running.pop(worker_id, None)
                if index is not None and index not in reported:
                    reported.add(index)
                    code = processes[worker_id].exitcode
                    on_outcome(Outcome(by_index[index], "failed",
                                       reason=f"the worker process died (exit code {code})"))

    try:
        while live:
            try:
                handle(events.get(timeout=1.0))
            except queue.Empty:
                reap()
        for item in items:
            if item.index not in reported:   # every worker died before taking it
                on_outcome(Outcome(item, "failed", reason="no worker was left to take it (see above)"))
    except BaseException:
        # Ctrl-C, a worker that cannot load, or a callback's error: stop the others cleanly first
        stop.set()
        _drain(events, processes, handle)
        raise
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


def _drain(events, processes, handle) -> None:
    """Report what the stopping workers still send until they have all exited (at most STOP_WAIT_S)."""
    import time

    deadline = time.monotonic() + STOP_WAIT_S
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        try:
            event = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if event[0] in ("outcome", "frames"):
            try:
                handle(event)
            except Exception:  # the batch is ending anyway; log and keep draining
                log.debug("while stopping", exc_info=True)
