"""Image -> W+ encoders: e4e / pSp on an IR-SE-50 backbone, and a light encoder for the demo pack.

Every encoder maps `img [N, 3, S, S]` in [-1, 1] to `codes [N, num_ws, style_dim]` *before* the
generator's `latent_avg` is added (the loader adds it, see engines.load_encoder).

- `Encoder4Editing` (e4e, Tov et al. 2021) and `GradualStyleEncoder` (pSp, Richardson et al. 2021) share
  the IR-SE-50 backbone and the feature pyramid; their state_dict keys equal the public checkpoints'
  `encoder.*` entries with the prefix stripped. pSp predicts every style from its pyramid level; e4e
  predicts one code w0 from the coarsest level and adds a per-style offset (all offsets active, as at
  e4e's inference stage).
- ReStyle (Alaluf et al. 2021): `BackboneEncoder` (ReStyle-pSp) and `ProgressiveBackboneEncoder`
  (ReStyle-e4e) read the target image and the previous reconstruction (6 channels) and predict every
  style from the backbone's last map; their output is a residual on the previous codes (engines.restyle).
- `DemoEncoder` is a small CNN with the same idea (coarse / middle / fine styles read from different
  pyramid levels) sized for a CPU: a few ms at 64-96 px.

All of them export to ONNX with static shapes: no data-dependent Python control flow in forward.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engines.errors import CheckpointError
from engines.nets.blocks import ResBlock, leaky
from engines.nets.stylegan2 import EqualLinear

# Residual units per stage of the IR backbones (ArcFace's IR-50/100/152); stage widths 64, 128, 256, 512.
_IR_STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
_IR_STAGE_WIDTHS = (64, 128, 256, 512)
# pSp/e4e split of the styles: [0, 3) from the 16x16 level, [3, 7) from 32x32, the rest from 64x64.
_COARSE_END, _MIDDLE_END = 3, 7


def num_ws_for(resolution: int) -> int:
    """Number of W+ styles of a StyleGAN2 generator at `resolution` (18 at 1024)."""
    return 2 * int(math.log2(resolution)) - 2


def upsample_add(x: Tensor, y: Tensor) -> Tensor:
    """FPN merge as pSp does it: bilinear (align_corners=True) resize of x to y's size, plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


# ------------------------------------------------------------------------------------------ IR-SE parts
class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(mean_hw(x))))) with bias-free 1x1 convs."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))


class BottleneckIR(nn.Module):
    """ArcFace IR unit: BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN [-> SE], plus a shortcut.

    The shortcut is a strided 1x1 max-pool (plain subsampling) when the width is unchanged, else a strided
    1x1 conv + BN; module indices inside `res_layer` / `shortcut_layer` follow the public checkpoints.
    """

    def __init__(self, in_channels: int, depth: int, stride: int, squeeze_excite: bool) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if squeeze_excite:
            layers.append(SqueezeExcite(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """One style from one pyramid level: log2(spatial) stride-2 convs down to 1x1, then an EqualLinear."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1),
                       nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).flatten(1))  # [N, C, 1, 1] -> [N, C]


def _input_layer(input_nc: int) -> nn.Sequential:
    """3x3 conv (no bias) to 64 channels, BatchNorm, PReLU: the stem of every IR encoder here."""
    return nn.Sequential(nn.Conv2d(input_nc, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))


def _ir_body(num_layers: int, mode: str) -> tuple[nn.Sequential, tuple[int, ...]]:
    """The IR(-SE) units (each stage starts with stride 2: 256 px in, 16x16x512 out) and the index of
    each stage's last unit."""
    if num_layers not in _IR_STAGE_UNITS:
        raise ValueError(f"num_layers must be one of {sorted(_IR_STAGE_UNITS)}, got {num_layers}")
    if mode not in ("ir", "ir_se"):
        raise ValueError(f"mode must be 'ir' or 'ir_se', got {mode!r}")
    units: list[nn.Module] = []
    taps: list[int] = []
    in_channels = 64
    for width, count in zip(_IR_STAGE_WIDTHS, _IR_STAGE_UNITS[num_layers]):
        for i in range(count):
            units.append(BottleneckIR(in_channels, width, 2 if i == 0 else 1, mode == "ir_se"))
            in_channels = width
        taps.append(len(units) - 1)
    return nn.Sequential(*units), tuple(taps)


class _IRPyramidEncoder(nn.Module):
    """IR(-SE) backbone + the 3-level feature pyramid + one GradualStyleBlock per style (pSp and e4e).

    Keys: `input_layer.*`, `body.<i>.*`, `styles.<i>.*`, `latlayer1.*`, `latlayer2.*`.
    The pyramid taps the ends of the 128-, 256- and 512-wide stages (body indices 6, 20, 23 for 50 layers).
    """

    input_size = 256

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", stylegan_size: int = 1024,
                 input_nc: int = 3) -> None:
        super().__init__()
        self.num_ws = num_ws_for(stylegan_size)
        self.style_dim = 512
        self.input_layer = _input_layer(input_nc)
        self.body, taps = _ir_body(num_layers, mode)
        self._taps = taps[1:]  # ends of the 128 (64x64), 256 (32x32), 512 (16x16) stages
        self.styles = nn.ModuleList(
            GradualStyleBlock(512, 512, 16 if i < _COARSE_END else 32 if i < _MIDDLE_END else 64)
            for i in range(self.num_ws))
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def pyramid(self, img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """img [N,3,256,256] -> coarse [N,512,16,16], middle [N,512,32,32], fine [N,512,64,64]."""
        x = self.input_layer(img)
        tapped: list[Tensor] = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._taps:
                tapped.append(x)
        c1, c2, c3 = tapped
        middle = upsample_add(c3, self.latlayer1(c2))
        fine = upsample_add(middle, self.latlayer2(c1))
        return c3, middle, fine

    def _level(self, i: int, levels: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return levels[0] if i < _COARSE_END else levels[1] if i < _MIDDLE_END else levels[2]


class GradualStyleEncoder(_IRPyramidEncoder):
    """pSp encoder: style i = styles[i](pyramid level of i). forward: img [N,3,256,256] -> [N,num_ws,512]."""

    def forward(self, img: Tensor) -> Tensor:
        levels = self.pyramid(img)
        return torch.stack([style(self._level(i, levels)) for i, style in enumerate(self.styles)], dim=1)


class Encoder4Editing(_IRPyramidEncoder):
    """e4e encoder: w0 = styles[0](coarse), style i = w0 + styles[i](level of i) for i >= 1.

    forward: img [N,3,256,256] -> [N,num_ws,512]. Equals e4e at ProgressiveStage.Inference (every delta on).
    """

    def forward(self, img: Tensor) -> Tensor:
        levels = self.pyramid(img)
        w0 = self.styles[0](levels[0])  # [N, 512]
        codes = [w0] + [w0 + self.styles[i](self._level(i, levels)) for i in range(1, self.num_ws)]
        return torch.stack(codes, dim=1)


class BackboneEncoder(nn.Module):
    """ReStyle-pSp's encoder: IR-SE-50 on [image, previous output] (6 channels by default), every style
    from the final 16x16 map. forward: x [N, input_nc, 256, 256] -> codes [N, num_ws, 512], the residual
    ReStyle adds to the previous iteration's codes (engines.restyle)."""

    input_size = 256

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", stylegan_size: int = 1024,
                 input_nc: int = 6) -> None:
        super().__init__()
        self.num_ws, self.style_dim, self.input_nc = num_ws_for(stylegan_size), 512, input_nc
        self.input_layer = _input_layer(input_nc)
        self.body, _ = _ir_body(num_layers, mode)
        self.styles = nn.ModuleList(GradualStyleBlock(512, 512, 16) for _ in range(self.num_ws))

    def heads(self, x: Tensor) -> list[Tensor]:
        features = self.body(self.input_layer(x))  # [N, 512, 16, 16]
        return [style(features) for style in self.styles]

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack(self.heads(x), dim=1)


class ProgressiveBackboneEncoder(BackboneEncoder):
    """ReStyle-e4e's encoder: head 0 gives w0 for every style, head i >= 1 adds its delta (upstream's
    `Inference` stage, all deltas on, which a checkpoint does not record). Same keys as BackboneEncoder."""

    def forward(self, x: Tensor) -> Tensor:
        w0, *deltas = self.heads(x)
        return torch.stack([w0] + [w0 + delta for delta in deltas], dim=1)


_E4E_ENCODERS: dict[str, type[nn.Module]] = {
    "Encoder4Editing": Encoder4Editing,
    "GradualStyleEncoder": GradualStyleEncoder,
    "BackboneEncoder": BackboneEncoder,
    "ProgressiveBackboneEncoder": ProgressiveBackboneEncoder,
}
RESTYLE_ENCODER_TYPES = ("BackboneEncoder", "ProgressiveBackboneEncoder")
# ReStyle's ResNet-34 encoders are for other domains (cars, churches...), not faces
_UNSUPPORTED_RESTYLE = ("ResNetBackboneEncoder", "ResNetProgressiveBackboneEncoder")


def e4e_encoder_config(opts: Mapping[str, Any], source: str = "checkpoint") -> tuple[str, dict[str, Any]]:
    """(encoder class name, constructor kwargs) that an e4e / pSp checkpoint's `opts` describe.

    All of them build IR-SE-50. Reads `encoder_type`, the generator size from `stylegan_size` (e4e) or
    `output_size` (pSp, ReStyle), default 1024, and `input_nc` (default 3; 6 for ReStyle). `source` names the file in the
    CheckpointError raised for an encoder type this project lacks or a malformed value.
    """
    encoder_type = str(opts.get("encoder_type"))
    if encoder_type in _UNSUPPORTED_RESTYLE:
        raise CheckpointError(
            f"{source}: ReStyle's {encoder_type} (a ResNet-34 backbone for non-face domains) is not supported; "
            "use a ReStyle face checkpoint (BackboneEncoder or ProgressiveBackboneEncoder, IR-SE-50)")
    if encoder_type not in _E4E_ENCODERS:
        raise CheckpointError(
            f"{source}: e4e/pSp encoder_type {opts.get('encoder_type')!r} is not supported; "
            f"use a checkpoint with one of {sorted(_E4E_ENCODERS)}")
    try:
        size = int(opts.get("stylegan_size") or opts.get("output_size") or 1024)
        input_nc = int(opts.get("input_nc") or (6 if encoder_type in RESTYLE_ENCODER_TYPES else 3))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: malformed e4e/pSp opts ({err}); expected integer sizes") from None
    return encoder_type, {"num_layers": 50, "mode": "ir_se", "stylegan_size": size, "input_nc": input_nc}


def build_e4e_encoder(opts: Mapping[str, Any], source: str = "checkpoint") -> nn.Module:
    """The encoder an e4e / pSp checkpoint's `opts` describe (see `e4e_encoder_config`). Load the
    checkpoint's `encoder.*` weights with that prefix stripped."""
    encoder_type, kwargs = e4e_encoder_config(opts, source)
    return _E4E_ENCODERS[encoder_type](**kwargs)


# ------------------------------------------------------------------------------------------ demo encoder
class _LevelHead(nn.Module):
    """Styles from one pyramid level: stride-2 convs down to the coarsest grid, flatten, one Linear.

    Flattening the small grid (rather than pooling it) keeps where things are in the face.
    """

    def __init__(self, channels: int, head_channels: int, downsamples: int, grid: int, count: int,
                 style_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(downsamples):
            out = head_channels if i == downsamples - 1 else channels
            layers += [nn.Conv2d(channels, out, 3, 2, 1), leaky()]
        if not downsamples:
            layers += [nn.Conv2d(channels, head_channels, 3, 1, 1), leaky()]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(head_channels * grid * grid, count * style_dim)
        self.count, self.style_dim = count, style_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).flatten(1)).view(-1, self.count, self.style_dim)


class DemoEncoder(nn.Module):
    """A light pSp-style encoder for the demo pack: img [N,3,size,size] -> codes [N,num_ws,style_dim].

    Backbone: a stride-2 stem, then one residual block per resolution, halving until the grid is
    `size / 2**k` with k = floor(log2(size / 4)) (4x4 at 64 and 128 px, 6x6 at 96 px). Its last three
    stages form a feature pyramid (1x1 laterals to `head_width`, top-down bilinear merge as pSp), and
    styles [0, coarse_end) are read from the coarsest level, [coarse_end, middle_end) from the middle
    one and the rest from the finest, as pSp splits 18 styles 3 / 4 / 11.

    Channels at resolution r are width * 32 / r (rounded to 8, within [16, max_width]), so every stage
    costs about the same. All arguments are keyword-only and JSON-serialisable (`self.config`).
    """

    def __init__(self, *, size: int = 64, num_ws: int = 10, style_dim: int = 512, width: int = 32,
                 max_width: int = 128, head_width: int = 64, head_channels: int = 32,
                 coarse_end: int = _COARSE_END, middle_end: int = _MIDDLE_END) -> None:
        super().__init__()
        downsamples = int(math.log2(size / 4)) if size >= 32 else 0
        if downsamples < 3 or size % 2**downsamples:
            raise ValueError(f"DemoEncoder size must be >= 32 and divisible by 2**floor(log2(size/4)), "
                             f"got {size}")
        if not 0 < coarse_end < middle_end < num_ws:
            raise ValueError(f"need 0 < coarse_end < middle_end < num_ws, got {coarse_end}, {middle_end}, "
                             f"{num_ws}")
        self.config = {"size": size, "num_ws": num_ws, "style_dim": style_dim, "width": width,
                       "max_width": max_width, "head_width": head_width, "head_channels": head_channels,
                       "coarse_end": coarse_end, "middle_end": middle_end}
        self.input_size, self.num_ws, self.style_dim = size, num_ws, style_dim
        grid = size // 2**downsamples

        def channels(resolution: int) -> int:
            return int(min(max_width, max(16, 8 * round(width * 32 / resolution / 8))))

        resolutions = [size // 2**k for k in range(1, downsamples + 1)]  # size/2 ... grid
        widths = [channels(r) for r in resolutions]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1), leaky())
        stages: list[nn.Module] = [ResBlock(widths[0])]
        for c_in, c_out in pairwise(widths):
            stages.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), leaky(), ResBlock(c_out)))
        self.stages = nn.ModuleList(stages)
        # Pyramid levels, coarse -> fine: the last three stages.
        self.laterals = nn.ModuleList(nn.Conv2d(widths[-1 - k], head_width, 1) for k in range(3))
        counts = (coarse_end, middle_end - coarse_end, num_ws - middle_end)
        self.heads = nn.ModuleList(
            _LevelHead(head_width, head_channels, k, grid, counts[k], style_dim) for k in range(3))

    def forward(self, img: Tensor) -> Tensor:
        x = self.stem(img)
        features: list[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        coarse = self.laterals[0](features[-1])
        middle = upsample_add(coarse, self.laterals[1](features[-2]))
        fine = upsample_add(middle, self.laterals[2](features[-3]))
        levels = (coarse, middle, fine)
        return torch.cat([head(level) for head, level in zip(self.heads, levels)], dim=1)
