"""Metrics of the demo pack on uint8 crops. The losses and psnr of [-1, 1] images are stream/losses.py's
(the run-time tuning optimises the same ones)."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt


def psnr_uint8(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    """Mean PSNR in dB over uint8 images [N, H, W, 3] (peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
