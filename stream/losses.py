"""Reconstruction losses of images in [-1, 1], weighted to the face by its landmarks.

Shared by the pack's training (training/pack.py) and the run-time refinement of codes and generators
per video (stream/tuning.py), so both optimise the same thing: L1 + (1 - SSIM), with per-pixel weights
that emphasise the face, and more its mouth and eyes.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F


@functools.cache
def _gaussian_window(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, K, K]


def ssim_map(a: Tensor, b: Tensor, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM [N, C, H, W] of images in [-1, 1] (Gaussian window, reflect padding)."""
    a, b = (a + 1) * 0.5, (b + 1) * 0.5
    c = a.shape[1]
    w = _gaussian_window(window, sigma).to(a).expand(c, 1, window, window)
    pad = window // 2

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.square()
    var_b = blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))


def reconstruction_loss(pred: Tensor, target: Tensor, weight: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Weighted L1 + (1 - SSIM); `weight` [N, 1, H, W] has mean ~1 and emphasises the face's mouth and eyes."""
    l1 = ((pred - target).abs() * weight).mean()
    dssim = ((1 - ssim_map(pred, target)) * weight).mean()
    return l1 + dssim, {"l1": float(l1.detach()), "dssim": float(dssim.detach())}


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB per image [N] for images in [-1, 1] (peak-to-peak 2)."""
    mse = (pred.clamp(-1, 1) - target).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def _hull_mask(points: npt.NDArray[np.float32], scale: float, size: int, grow: int) -> npt.NDArray[np.float32]:
    mask = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(np.round(points * scale).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    if grow:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return mask.astype(np.float32)


def loss_weights(landmarks: npt.NDArray[np.float32], crop_size: int, size: int, eye_weight: float = 3.0) -> Tensor:
    """Per-pixel loss weights [N, 1, size, size] from 68 landmarks [N, 68, 2] in pixels of crops of side
    `crop_size`: 1 everywhere, +1 on the face, +3 on the mouth, +eye_weight on the eyes (an eye covers ~2 %
    of the crop, and a blink moves a few of its pixels); normalised to mean 1."""
    scale = size / crop_size
    grow = max(1, size // 32)
    maps = []
    for lm in landmarks:
        face = _hull_mask(lm[:27], scale, size, 0)
        mouth = _hull_mask(lm[48:60], scale, size, grow)
        eyes = np.maximum(_hull_mask(lm[36:42], scale, size, grow), _hull_mask(lm[42:48], scale, size, grow))
        w = cv2.GaussianBlur(1.0 + face + 3.0 * mouth + eye_weight * eyes, (0, 0), size / 64)
        maps.append(w / w.mean())
    return torch.from_numpy(np.stack(maps))[:, None]
