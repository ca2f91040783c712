"""How steady a tracker keeps the aligned crop: the measure that tests assert and bench/faces.py prints."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream.faces.align import ffhq_affine, transform_points
from stream.faces.detect import FaceDetector
from stream.faces.track import FaceTracker
from stream.types import Frame


def crop_jitter_and_lag(detector: FaceDetector, frames: Sequence[Frame], fps: float = 30.0) -> tuple[float, float, float]:
    """(jitter raw, jitter smoothed, lag in frames) of the first face tracked through `frames`.

    Jitter is the mean frame-to-frame movement of the 68 landmarks inside their own aligned crop (a fraction
    of the crop side), so head motion, which moves the crop too, does not count. Lag is the time shift
    (0-3 frames, in 0.05 steps) that best lines the smoothed landmark centroid up with the raw one.
    """
    tracks = {}
    for smoothing in (False, True):
        tracker = FaceTracker(detector, smoothing=smoothing, fps=fps)
        tracks[smoothing] = np.array([tracker.update(f)[0].landmarks for f in frames], dtype=np.float64)
    jitter = {}
    for smoothing, lms in tracks.items():
        in_crop = np.array([transform_points(ffhq_affine(lm, 1), lm) for lm in lms])
        jitter[smoothing] = float(np.linalg.norm(np.diff(in_crop, axis=0), axis=-1).mean())
    raw, smooth = tracks[False].mean(axis=1), tracks[True].mean(axis=1)
    t = np.arange(len(raw), dtype=np.float64)
    shifts = np.arange(0.0, 3.01, 0.05)
    # the first 10 frames are the filters settling in
    errors = [np.linalg.norm(smooth[10:] - np.stack([np.interp(t - k, t, raw[:, j]) for j in (0, 1)], 1)[10:],
                             axis=1).mean() for k in shifts]
    return jitter[False], jitter[True], float(shifts[int(np.argmin(errors))])
