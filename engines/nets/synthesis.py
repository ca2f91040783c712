"""A faster trainable form of `Generator.synthesis`: modulation applied to activations.

Same maths as the grouped-convolution form (and as `ExportSafeSynthesis`), but differentiable with
respect to the generator's own parameters: the input is scaled by the style, convolved with the shared
weight, and multiplied by demodulation coefficients. On a 2-core CPU one shared-weight convolution over
the batch is about twice as fast as N per-sample weights in a grouped convolution (DESIGN.md, probe 3).
Training (training/pack.py) and per-video tuning (stream/tuning.py) both train through it.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from engines.nets.stylegan2 import Generator, ModulatedConv2d, StyledConv, ToRGB


def _modconv(m: ModulatedConv2d, x: Tensor, w: Tensor) -> Tensor:
    s = m.modulation(w)  # [N, I]
    weight = m.scale * m.weight[0]  # [O, I, k, k]
    x = x * s[:, :, None, None]
    if m.upsample:
        x = m.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
    else:
        x = F.conv2d(x, weight, padding=m.padding)
    if m.demodulate:
        weight_sq = weight.square().sum([2, 3]).t()  # [I, O]
        x = x * torch.rsqrt(s.square() @ weight_sq + 1e-8)[:, :, None, None]
    return x


def _styled(layer: StyledConv, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
    return layer.activate(layer.noise(_modconv(layer.conv, x, w), noise))


def _to_rgb(layer: ToRGB, x: Tensor, w: Tensor, skip: Tensor | None) -> Tensor:
    out = _modconv(layer.conv, x, w) + layer.bias
    if layer.clamp is not None:
        out = out.clamp(-layer.clamp, layer.clamp)
    return out if skip is None else out + layer.upsample(skip)


def synthesize(g: Generator, wplus: Tensor) -> Tensor:
    """W+ [N, num_ws, D] -> image [N, 3, H, W]; equals `g.synthesis(wplus)` up to float rounding."""
    x = g.input(wplus.shape[0])
    x = _styled(g.conv1, x, wplus[:, 0], g.noise(0))
    skip = _to_rgb(g.to_rgb1, x, wplus[:, 1], None)
    for i, to_rgb in enumerate(g.to_rgbs):
        x = _styled(g.convs[2 * i], x, wplus[:, 2 * i + 1], g.noise(2 * i + 1))
        x = _styled(g.convs[2 * i + 1], x, wplus[:, 2 * i + 2], g.noise(2 * i + 2))
        skip = _to_rgb(to_rgb, x, wplus[:, 2 * i + 3], skip)
    return skip
