"""Temporal smoothing of W+ codes per face track, so an edited video does not flicker.

An encoder inverts each frame on its own, so a face's code jitters from frame to frame, and with it the
edit's rendering. Three tools:
- `CodeSmoother` (live, causal, one per track, made by `make_code_smoother`): One Euro filters
  (stream/filters.py) on the inverted code. Smoothing w rather than w' = w + offset keeps both renderings
  of the residual paste-back crop + G(w') - G(w) consistent (the offset is the same on every frame).
- `smooth_offline` (files, where latency does not matter): a centred Gaussian over a window of frames,
  looking ahead as far as it looks back, so it smooths without lag.
- identity anchor (`IdentityAnchor` live, `anchor_offline` for files): holds the fine layers, which carry
  texture and identity detail rather than the edited attribute, near the track's running mean.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.edits.directions import layer_mask
from stream.filters import OneEuroFilter
from stream.types import WPlus

# One Euro defaults for W+ codes (values of order 1, moving at a few units per second when a face talks):
# 1 Hz cutoff when still, raised by beta as the code moves to limit the lag; bench/smoothing.py compares
# them with other settings on the shared clips (the Edits section of bench/RESULTS.md).
DEFAULT_MIN_CUTOFF = 1.0
DEFAULT_BETA = 0.3
DEFAULT_D_CUTOFF = 1.0


@dataclass(frozen=True)
class OneEuroParams:
    """Parameters of a One Euro filter: min_cutoff (Hz), beta (per code unit per second), d_cutoff (Hz)."""

    min_cutoff: float = DEFAULT_MIN_CUTOFF
    beta: float = DEFAULT_BETA
    d_cutoff: float = DEFAULT_D_CUTOFF

    def make(self) -> OneEuroFilter:
        return OneEuroFilter(self.min_cutoff, self.beta, self.d_cutoff)


class IdentityAnchor:
    """Pulls the `layers` (default "fine") of one track's code towards the track's running mean.

    weight: 0 leaves the code alone, 1 replaces those layers by the mean. horizon: the running mean is
    a cumulative mean over the first `horizon` frames, then an exponential one with that time constant,
    so it settles fast and still follows slow changes (lighting)."""

    def __init__(self, layers: str | Sequence[int] = "fine", weight: float = 0.5, horizon: int = 60) -> None:
        if not 0.0 <= weight <= 1.0 or horizon < 1:
            raise UserError(f"identity anchor weight={weight}, horizon={horizon}: need 0 <= weight <= 1, "
                            "horizon >= 1")
        self.layers = layers
        self.weight = weight
        self.horizon = horizon
        self._mean: npt.NDArray[np.float64] | None = None
        self._count = 0

    def __call__(self, code: WPlus) -> WPlus:
        """The anchored code [num_ws, D] of the track's next frame (updates the running mean)."""
        rows = layer_mask(self.layers, code.shape[0])
        current = np.asarray(code, dtype=np.float64)[rows]
        self._count += 1
        self._mean = current.copy() if self._mean is None else (
            self._mean + (current - self._mean) / min(self._count, self.horizon))
        out = np.array(code, dtype=np.float32, copy=True)
        out[rows] = (1.0 - self.weight) * current + self.weight * self._mean
        return out


class CodeSmoother:
    """Causal smoothing of one face track's code (live use): One Euro per element, then an optional
    identity anchor. Works on any array of fixed shape, so a second one can smooth the edit offset to
    ramp in a strength change. `params=None` skips the One Euro stage."""

    def __init__(self, params: OneEuroParams | None = OneEuroParams(), anchor: IdentityAnchor | None = None) -> None:
        self.params = params
        self.anchor = anchor
        self._filter = params.make() if params is not None else None

    def __call__(self, code: WPlus, t: float) -> WPlus:
        """The smoothed code for the track's frame at time t (seconds, increasing)."""
        out = np.asarray(code, dtype=np.float32)
        if self._filter is not None:
            out = self._filter(out, t).astype(np.float32)
        if self.anchor is not None:
            out = self.anchor(out)
        return out


def make_code_smoother(min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                       d_cutoff: float = DEFAULT_D_CUTOFF, anchor_weight: float = 0.0,
                       anchor_layers: str | Sequence[int] = "fine") -> CodeSmoother:
    """A new track's causal smoother with the project defaults (the pipeline calls it once per track)."""
    anchor = IdentityAnchor(anchor_layers, anchor_weight) if anchor_weight > 0 else None
    return CodeSmoother(OneEuroParams(min_cutoff, beta, d_cutoff), anchor)


def gaussian_weights(sigma: float, radius: int | None = None) -> npt.NDArray[np.float64]:
    """Centred Gaussian taps [2 r + 1] summing to 1 (r = ceil(3 sigma) unless given)."""
    if sigma <= 0:
        raise UserError(f"smoothing sigma {sigma} must be > 0 frames")
    r = int(np.ceil(3 * sigma)) if radius is None else radius
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return taps / taps.sum()


def smooth_offline(codes: npt.ArrayLike, sigma: float, radius: int | None = None) -> npt.NDArray[np.float32]:
    """Centred Gaussian smoothing of one track's codes [T, ...] over time, sigma in frames.

    No lag: frame t sees as many frames after it as before. At the clip's ends the window is cut and its
    taps renormalised, rather than padding, which would pull the ends towards a copy of themselves."""
    x = np.asarray(codes, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] == 0:
        raise UserError("smooth_offline needs codes [T, ...] with T >= 1")
    taps = gaussian_weights(sigma, radius)
    r = len(taps) // 2
    flat = x.reshape(x.shape[0], -1)
    out = np.empty_like(flat)
    for t in range(flat.shape[0]):
        lo, hi = max(0, t - r), min(flat.shape[0], t + r + 1)
        w = taps[lo - t + r: hi - t + r]
        out[t] = w @ flat[lo:hi] / w.sum()
    return out.reshape(x.shape).astype(np.float32)


def anchor_offline(codes: npt.ArrayLike, layers: str | Sequence[int] = "fine", weight: float = 0.5
                   ) -> npt.NDArray[np.float32]:
    """One track's codes [T, num_ws, D] with `layers` pulled towards the whole track's mean by `weight`."""
    x = np.array(codes, dtype=np.float32, copy=True)
    if x.ndim != 3:
        raise UserError(f"anchor_offline needs codes [T, num_ws, D], got {list(x.shape)}")
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"identity anchor weight {weight} must be in [0, 1]")
    rows = layer_mask(layers, x.shape[1])
    mean = x[:, rows].mean(axis=0, keepdims=True)
    x[:, rows] = (1.0 - weight) * x[:, rows] + weight * mean
    return x
