"""Reconstruction losses and metrics for the demo pack (images in [-1, 1]; psnr_uint8: uint8 crops)."""
from __future__ import annotations

import functools

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


def psnr_uint8(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    """Mean PSNR in dB over uint8 images [N, H, W, 3] (peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
