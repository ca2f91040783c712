"""The One Euro filter (Casiez, Roussel, Vogel, CHI 2012): the one place for its maths.

An adaptive low-pass filter for noisy real-time signals: its cutoff rises with the signal's speed, so a
still signal is smoothed hard (little jitter) while a fast one is followed closely (little lag).
Used per face track on landmarks (faces/track.py) and per track on latent codes (edits/smoothing.py).
"""
from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from engines.errors import UserError


def smoothing_factor(cutoff: float | npt.NDArray[np.float64], dt: float) -> float | npt.NDArray[np.float64]:
    """Exponential smoothing factor alpha of a first-order low-pass at `cutoff` Hz for a step of dt s."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter over numpy arrays of any (fixed) shape, each element filtered independently.

    min_cutoff (Hz): cutoff when still, lower = less jitter; beta (1 / signal unit): how fast the cutoff
    rises with speed, higher = less lag; d_cutoff (Hz): cutoff of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise UserError(f"One Euro parameters min_cutoff={min_cutoff}, beta={beta}, d_cutoff={d_cutoff}: "
                            "cutoffs must be > 0 and beta >= 0")
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next sample passes through unchanged."""
        self._x: npt.NDArray[np.float64] | None = None
        self._dx: npt.NDArray[np.float64] | None = None
        self._t: float | None = None

    def __call__(self, x: npt.ArrayLike, t: float) -> npt.NDArray[np.float64]:
        """Filter sample `x` taken at time `t` (seconds, increasing); returns the filtered array (float64)."""
        value = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or self._dx is None:
            self._x, self._dx, self._t = value.copy(), np.zeros_like(value), t
            return value.copy()
        if value.shape != self._x.shape:
            raise UserError(f"One Euro filter got shape {value.shape} after {self._x.shape}: "
                            "use one filter per signal (reset() it when the signal changes)")
        dt = t - self._t
        if dt <= 0:
            # a repeated or out-of-order timestamp carries no new time information: hold the last output
            return self._x.copy()
        dx = (value - self._x) / dt
        self._dx = self._dx + smoothing_factor(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + smoothing_factor(cutoff, dt) * (value - self._x)
        self._t = t
        return self._x.copy()
