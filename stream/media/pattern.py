"""TestPatternSource: deterministic synthetic frames (moving bars and a sweeping square) with timestamps.

For tests and benchmarks that need frames without a file or a camera; it contains no face, so the
pipeline must pass every frame through untouched.
"""
from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from stream.media.frames import TimedFrame

# SMPTE-like bar colours, RGB
_BARS = np.array(
    [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0], [0, 0, 192]],
    dtype=np.uint8,
)


class TestPatternSource:
    """`frames()` yields `count` frames of `width`x`height` at `fps`, time base 1/fps."""

    __test__ = False  # not a pytest class despite the name

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30, count: int = 90) -> None:
        self.width, self.height, self.fps, self.count = width, height, fps, count
        self.time_base = Fraction(1, fps)

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` [H,W,3] RGB: bars scrolling one pixel a frame, a white square sweeping across."""
        columns = (np.arange(self.width) + index) * len(_BARS) // max(self.width, 1) % len(_BARS)
        image = np.repeat(_BARS[columns][None], self.height, axis=0)
        side = max(self.height // 8, 2)
        x = index * 4 % max(self.width - side, 1)
        y = (self.height - side) // 2
        image[y:y + side, x:x + side] = 255
        return image

    def frames(self) -> Iterator[TimedFrame]:
        for index in range(self.count):
            yield TimedFrame(image=self.frame(index), pts=index, time_base=self.time_base)
