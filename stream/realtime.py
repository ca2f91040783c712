"""Live runner: frames are processed on a worker thread, the newest frame wins, latency stays bounded.

A live source (webcam, WebRTC track) produces frames at its own rate whether or not the model keeps up.
Queuing them would make latency grow without bound, so every hand-off here is a one-item mailbox
(`LatestSlot`): a new frame replaces the one still waiting, which is counted as dropped. The processor
runs on one `LiveWorker` thread (it is not thread-safe and holds per-stream state such as face tracks);
control changes (edits, before/after) are recorded by any thread and applied by the worker just before
the next frame, so they take effect on the next processed frame. Frames keep their pts: what goes out
carries the timestamp of what came in.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from stream.media.frames import TimedFrame
from stream.session import GateStats
from stream.types import Frame, StageTimes

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")
Item = TypeVar("Item")

Edits = list[tuple[str, float]]

# Windows for the live readout: recent enough to react within a second, long enough to be steady.
_LATENCY_WINDOW = 120
_FPS_WINDOW_S = 2.0
_STAGE_SMOOTHING = 0.2


class FrameProcessor(Protocol):
    """What the live runner drives; `stream.session.EditSession` is one."""

    times: StageTimes

    def process(self, frame: Frame, t: float | None = None) -> Frame:
        """The edited frame; `t` is its time in seconds (for temporal filters)."""
        ...

    def set_edits(self, edits: Edits) -> None: ...


class LatestSlot(Generic[Item]):
    """A one-item mailbox between threads: `put` replaces a waiting item (counted in `dropped`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Item | None = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Item) -> None:
        with self._cond:
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Item | None:
        """The waiting item, or None when closed (or after `timeout` seconds with nothing new)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class LiveStats:
    """A snapshot for the live readout. Latency is arrival at `submit` to hand-off of the result."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    fps: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    edits: Edits = field(default_factory=list)
    bypass: bool = False
    # the confidence gate on the last face (stream/session.py): how well the generator drew it (dB) and
    # the share of the edit it got; None where nothing was measured (student path, no face yet)
    fidelity_db: float | None = None
    gate_weight: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "fps": round(self.fps, 2),
            "latency_p50_ms": round(self.latency_p50_ms, 1),
            "latency_p95_ms": round(self.latency_p95_ms, 1),
            "stage_ms": {k: round(v, 2) for k, v in self.stage_ms.items()},
            "edits": [[name, strength] for name, strength in self.edits],
            "bypass": self.bypass,
            "fidelity_db": None if self.fidelity_db is None else round(self.fidelity_db, 1),
            "gate_weight": None if self.gate_weight is None else round(self.gate_weight, 2),
        }


@dataclass
class _Job(Generic[In]):
    payload: In
    arrived: float  # time.perf_counter() at submit


class LiveWorker(Generic[In, Out]):
    """Runs `processor` on its own thread over the newest submitted frame.

    `to_frame` turns what is submitted into a TimedFrame and `from_frame` turns the result into what
    `deliver` receives; both run on the worker thread, so format conversions stay off the caller's thread
    (for WebRTC: off the event loop). `deliver(out, latency_s)` is called on the worker thread.
    """

    def __init__(
        self,
        processor: FrameProcessor,
        deliver: Callable[[Out, float], None],
        to_frame: Callable[[In], TimedFrame],
        from_frame: Callable[[TimedFrame, In], Out],
        name: str = "live-worker",
    ) -> None:
        self._processor = processor
        self._deliver = deliver
        self._to_frame = to_frame
        self._from_frame = from_frame
        self._inbox: LatestSlot[_Job[In]] = LatestSlot()
        self._lock = threading.Lock()
        self._pending_edits: Edits | None = None
        self._edits: Edits = []
        self._bypass = False
        self._frames_in = 0
        self._frames_out = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._delivered_at: deque[float] = deque()
        self._stage_ms: dict[str, float] = {}
        self._last_totals: dict[str, float] = {}
        self._last_counts: dict[str, int] = {}
        self._gate: tuple[float | None, float | None] = (None, None)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- called from any thread -------------------------------------------------------------------
    def submit(self, payload: In) -> None:
        """Hand over a frame without waiting; a frame still waiting for the worker is dropped."""
        with self._lock:
            self._frames_in += 1
        self._inbox.put(_Job(payload, time.perf_counter()))

    def set_edits(self, edits: Edits) -> None:
        """Edits for the next processed frame (applied on the worker thread)."""
        with self._lock:
            self._pending_edits = list(edits)

    def set_bypass(self, bypass: bool) -> None:
        """True: frames pass through unprocessed (the 'before' view), with the same latency path."""
        with self._lock:
            self._bypass = bypass

    def stats(self) -> LiveStats:
        now = time.perf_counter()
        with self._lock:
            while self._delivered_at and now - self._delivered_at[0] > _FPS_WINDOW_S:
                self._delivered_at.popleft()
            recent = list(self._delivered_at)
            latencies = np.array(self._latencies, dtype=np.float64) * 1000.0
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            return LiveStats(
                frames_in=self._frames_in,
                frames_out=self._frames_out,
                dropped=self._inbox.dropped,
                fps=fps,
                latency_p50_ms=float(np.percentile(latencies, 50)) if latencies.size else 0.0,
                latency_p95_ms=float(np.percentile(latencies, 95)) if latencies.size else 0.0,
                stage_ms=dict(self._stage_ms),
                edits=list(self._pending_edits if self._pending_edits is not None else self._edits),
                bypass=self._bypass,
                fidelity_db=self._gate[0],
                gate_weight=self._gate[1],
            )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def settled(self) -> bool:
        """Every submitted frame has been delivered or dropped (nothing waiting, nothing in progress)."""
        with self._lock:
            return self._frames_in == self._frames_out + self._inbox.dropped

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the frame in progress; blocks up to `timeout` seconds for the thread to end."""
        self._inbox.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.1f s", self._thread.name, timeout)

    # --- worker thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            try:
                self._step(job)
            except Exception as err:  # a failing frame must not kill the stream silently
                self.error = err
                log.exception("live processing failed; stopping this stream")
                self._inbox.close()
                return

    def _step(self, job: _Job[In]) -> None:
        with self._lock:
            pending, self._pending_edits = self._pending_edits, None
            bypass = self._bypass
        if pending is not None:
            self._processor.set_edits(pending)
            with self._lock:
                self._edits = pending
        timed = self._to_frame(job.payload)
        if not bypass:
            timed = TimedFrame(self._processor.process(timed.image, timed.seconds), timed.pts, timed.time_base)
        out = self._from_frame(timed, job.payload)
        done = time.perf_counter()
        latency = done - job.arrived
        self._deliver(out, latency)
        with self._lock:
            self._frames_out += 1
            self._latencies.append(latency)
            self._delivered_at.append(done)
            if not bypass:
                self._update_stage_ms()
                self._update_gate()

    def _update_gate(self) -> None:
        """The edit session's confidence gate on its last face, for the readout (other processors have none)."""
        gate = getattr(self._processor, "gate", None)
        if isinstance(gate, GateStats) and gate.fidelity is not None:
            self._gate = (gate.fidelity, gate.weight)

    def _update_stage_ms(self) -> None:
        """Per-frame stage times from the processor's running totals, smoothed for display."""
        times = self._processor.times
        for stage, total in times.totals_ms.items():
            count = times.counts.get(stage, 0)
            done = count - self._last_counts.get(stage, 0)
            if done <= 0:
                continue
            ms = (total - self._last_totals.get(stage, 0.0)) / done
            previous = self._stage_ms.get(stage)
            self._stage_ms[stage] = ms if previous is None else previous + _STAGE_SMOOTHING * (ms - previous)
            self._last_totals[stage], self._last_counts[stage] = total, count


def keep_timed(frame: TimedFrame) -> TimedFrame:
    return frame


def result_only(frame: TimedFrame, _source: TimedFrame) -> TimedFrame:
    return frame


# A sink takes each output frame; returning False ends the run (a preview window was closed).
LiveSink = Callable[[TimedFrame], bool]


class CaptureThread:
    """Reads a live source on its own thread and submits every frame, so a slow consumer never stalls
    the camera (and the camera's driver queue never fills with stale frames)."""

    def __init__(self, source: Iterable[TimedFrame], worker: LiveWorker[TimedFrame, TimedFrame]) -> None:
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source, worker), name="capture", daemon=True)
        self._thread.start()

    def _run(self, source: Iterable[TimedFrame], worker: LiveWorker[TimedFrame, TimedFrame]) -> None:
        try:
            for frame in source:
                if self._stop.is_set():
                    return
                worker.submit(frame)
        except Exception as err:  # noqa: BLE001 - re-raised by run_live on the caller's thread
            self.error = err
        finally:
            self.finished.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def run_live(
    source: Iterable[TimedFrame],
    processor: FrameProcessor,
    sinks: Sequence[LiveSink],
    edits: Sequence[tuple[str, float]] = (),
    max_frames: int | None = None,
    on_frame: Callable[[LiveStats], None] | None = None,
) -> LiveStats:
    """source -> capture thread -> worker thread (newest frame wins) -> `sinks` on the calling thread.

    The calling thread owns the sinks because GUI previews must run there. Ends when the source ends,
    after `max_frames` outputs, or when a sink returns False; errors of the other threads re-raise here.
    `on_frame(stats)` runs after each delivered frame (progress display).
    """
    outbox: LatestSlot[TimedFrame] = LatestSlot()
    worker: LiveWorker[TimedFrame, TimedFrame] = LiveWorker(
        processor, lambda frame, _latency: outbox.put(frame), keep_timed, result_only, name="camera-worker"
    )
    worker.set_edits(list(edits))
    capture = CaptureThread(source, worker)
    delivered = 0
    try:
        while max_frames is None or delivered < max_frames:
            frame = outbox.get(timeout=0.5)
            if frame is None:
                # ended: the worker failed, or the source ended and every frame it gave is out or dropped
                ended = not worker.alive or (capture.finished.is_set() and worker.settled)
                frame = outbox.get(timeout=0) if ended else None  # one delivered between the wait and the check
                if frame is None:
                    if ended:
                        break
                    continue
            results = [sink(frame) for sink in sinks]  # every sink gets the frame, even if one asks to stop
            if not all(results):
                break
            delivered += 1
            if on_frame is not None:
                on_frame(worker.stats())
    finally:
        capture.stop()
        worker.close()
    if capture.error is not None:
        raise capture.error
    if worker.error is not None:
        raise worker.error
    return worker.stats()
