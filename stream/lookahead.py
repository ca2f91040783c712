"""Look-ahead (centred) smoothing of each face's code for the file job: a delay line of `radius` frames.

A file has no latency budget, so a face's code can be smoothed over the frames after it as well as those
before it, a centred Gaussian (stream/edits/smoothing.py's `gaussian_weights`, the taps `smooth_offline`
uses) that follows the face without the lag of the live causal filter. Frames go in one at a time and are
tracked, aligned and encoded on arrival; each comes out, edited and in order, once the codes of the
`radius` frames after it are known (or at `flush`, when the video ends). At most 2 * radius + 1 frames'
codes and radius + 1 frames' pixels are held, however long the video.

A track's window holds only the frames where that track has a face: a face that enters or leaves (or is
not the largest for a while, with --faces largest) is smoothed over its own frames, the taps renormalised
over them, as smooth_offline does at the ends of a clip.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from engines.errors import UserError
from stream.config import DEFAULT_SMOOTHING_SIGMA
from stream.edits.smoothing import gaussian_weights
from stream.pipeline import timed
from stream.session import EditSession, LocatedFaces
from stream.types import Frame, WPlus

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    item: T                                    # the caller's frame record, handed back with the result
    image: Frame | None                        # None once the frame has gone out
    located: LocatedFaces | None               # None: the frame goes out untouched
    codes: dict[int, WPlus] = field(default_factory=dict)  # track id -> raw code [num_ws, D]


class LookaheadEditor(Generic[T]):
    """Runs `session` (on the generator path) with centred code smoothing, `radius` frames late.

    `push(item, image, located)` returns the (item, edited frame) pairs that became ready, oldest first;
    `flush()` returns the rest at the end of the video. Every pushed frame comes out exactly once, in order.
    sigma: the Gaussian's width in frames; radius: how far it looks each way (default ceil(3 sigma)).
    Each frame is rendered with the edits it was located with.
    """

    def __init__(self, session: EditSession, sigma: float = DEFAULT_SMOOTHING_SIGMA,
                 radius: int | None = None) -> None:
        if session.state.path != "gan":
            raise UserError("centred smoothing applies to codes: it needs the generator path (--model gan)")
        self.session = session
        self.taps = gaussian_weights(sigma, radius)   # [2 r + 1]
        self.radius = len(self.taps) // 2
        self._window: deque[_Entry[T]] = deque()
        self._next = 0   # index in _window of the oldest frame not yet out; those before it are look-back

    def push(self, item: T, image: Frame, located: LocatedFaces | None) -> list[tuple[T, Frame]]:
        """Take the next frame, `located` by `self.session.locate(image, t)`; return the frames now ready."""
        entry = _Entry(item, image, located if located is not None and located.faces else None)
        if entry.located is not None:
            entry.codes = dict(zip(entry.located.track_ids, self.session.encode(entry.located)))
        self._window.append(entry)
        return self._drain(final=False)

    def flush(self) -> list[tuple[T, Frame]]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[tuple[T, Frame]]:
        ready = []
        while self._next < len(self._window) and (final or len(self._window) - 1 - self._next >= self.radius):
            ready.append(self._emit(self._next))
            self._next += 1
            while self._next > self.radius:  # older frames are out of every later frame's window
                self._window.popleft()
                self._next -= 1
        return ready

    def _smoothed_codes(self, index: int, track_ids: list[int]) -> WPlus:
        """Codes [N, num_ws, D] of window entry `index`'s faces, each a Gaussian mean over its own track."""
        out = []
        for track in track_ids:
            total, weight = 0.0, 0.0
            for offset, tap in enumerate(self.taps):
                j = index + offset - self.radius
                if 0 <= j < len(self._window) and track in self._window[j].codes:
                    total = total + tap * self._window[j].codes[track].astype(np.float64)
                    weight += tap
            out.append(total / weight)
        return np.stack(out).astype(np.float32)

    def _emit(self, index: int) -> tuple[T, Frame]:
        entry = self._window[index]
        image, located = entry.image, entry.located
        assert image is not None
        entry.image, entry.located = None, None   # keep only the codes for the look-back
        if located is None:
            return entry.item, image
        with timed(self.session.times, "smooth"):
            codes = self._smoothed_codes(index, located.track_ids)
        return entry.item, self.session.composite(image, located, self.session.render(located, codes))
