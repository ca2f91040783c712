"""Decoding and encoding in their own threads, beside the face stages, through bounded queues.

PyAV releases the GIL while FFmpeg decodes, converts pixels and encodes, so on a small CPU a file job
overlaps its decode and its x264 encode with the tracker and the networks instead of adding them up.
Queues are bounded (a few frames), so memory stays flat whichever side is slower. An error in a thread
(a damaged input, a full disk) is raised again in the caller's thread at its next call.

- `BackgroundIterator(items, name)`: a thread runs any iterable, a bounded queue ahead of its consumer;
  `demuxed(source, times)` is the one that decodes: `TimedFrame`s and, in demux order, audio `av.Packet`s.
- `BackgroundWriter(sink)`: `write(image, pts)` and `write_audio(packet)` queue for the one thread that
  muxes (a container is not thread-safe); `finish()` drains and joins, `stop()` abandons the rest.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import av
import numpy as np

from stream.media.frames import TimedFrame
from stream.media.sink import FileSink
from stream.media.source import FileSource
from stream.types import Frame, StageTimes

T = TypeVar("T")

QUEUE_ITEMS = 8   # frames (and small audio packets) waiting between threads
_POLL_S = 0.1     # how often a blocked thread looks whether it was stopped


class _End:
    """Marks the end of a queue's items."""


class _Stopped(Exception):
    """Raised inside a worker thread when its owner stopped it."""


class _Worker:
    """A thread feeding or draining a bounded queue, stoppable while blocked, its error kept for the owner."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_ITEMS)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except _Stopped:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the owner's thread, which raises it
            self.error = err

    def put(self, item: object) -> float:
        """Queue `item`, waiting while the queue is full; returns the seconds spent waiting."""
        start = time.perf_counter()
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self.queue.put(item, timeout=_POLL_S)
                return time.perf_counter() - start
            except queue.Full:
                continue

    def get(self) -> object:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def join(self) -> None:
        self._thread.join()


class BackgroundIterator(Generic[T]):
    """Runs `items` (any iterable, e.g. a generator of decoded frames) in a thread, `QUEUE_ITEMS` ahead of
    the consumer; iterate it once. Chaining two gives a two-stage pipeline (decode, then track)."""

    def __init__(self, items: Iterable[T], name: str) -> None:
        self._items = items
        self._worker = _Worker(name, self._produce)
        self._worker.start()

    def _produce(self) -> None:
        for item in self._items:
            self._worker.put(item)
        self._worker.put(_End)

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._worker.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._worker.alive and self._worker.queue.empty():
                    if self._worker.error is not None:
                        raise self._worker.error
                    return
                continue
            if item is _End:
                return
            yield item  # type: ignore[misc]

    def stop(self) -> None:
        """Stop the thread (it may be waiting for room) and wait for it; what is queued is dropped."""
        self._worker.stop()


def demuxed(source: FileSource, times: StageTimes) -> Iterator[TimedFrame | av.Packet]:
    """`source`'s video frames and, in demux order, its audio packets (to copy); `times["decode"]` gets
    the ms each frame took to decode and convert to RGB."""
    audio: list[av.Packet] = []
    frames = source.frames(on_audio=audio.append)
    while True:
        start = time.perf_counter()
        frame = next(frames, None)
        if frame is not None:
            times.add("decode", (time.perf_counter() - start) * 1000.0)
        yield from audio
        audio.clear()
        if frame is None:
            return
        yield frame


class BackgroundWriter:
    """Encodes and muxes into `sink` in a thread. `times["write"]` gets the ms per video frame (side-by-side
    joining, colour conversion, encode, mux)."""

    def __init__(self, sink: FileSink, times: StageTimes) -> None:
        self._sink = sink
        self._times = times
        self._worker = _Worker("write", self._write)
        self._worker.start()

    def _write(self) -> None:
        while True:
            item = self._worker.get()
            if item is _End:
                return
            if isinstance(item, av.Packet):
                self._sink.write_audio(item)
                continue
            image, pts, before = item  # type: ignore[misc]
            start = time.perf_counter()
            if before is not None:
                image = np.concatenate([before, image], axis=1)
            self._sink.write(image, pts)
            self._times.add("write", (time.perf_counter() - start) * 1000.0)

    def _put(self, item: object) -> None:
        if self._worker.error is not None:
            raise self._worker.error
        if not self._worker.alive:
            raise RuntimeError("the writer thread has ended")
        self._worker.put(item)

    def write(self, image: Frame, pts: int, before: Frame | None = None) -> None:
        """Queue a frame; with `before`, the frame written is before | image, side by side."""
        self._put((image, pts, before))

    def write_audio(self, packet: av.Packet) -> None:
        self._put(packet)

    def finish(self) -> None:
        """Wait until everything queued is written; raise what went wrong in the thread, if anything."""
        self._put(_End)
        self._worker.join()
        if self._worker.error is not None:
            raise self._worker.error

    def stop(self) -> None:
        """Abandon what is queued (the job failed or was interrupted)."""
        self._worker.stop()
