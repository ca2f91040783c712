"""LPIPS (Zhang et al. 2018), VGG16 variant: the perceptual distance PTI tunes with, from files the user has.

Nothing is downloaded: the user points to two files, the ones the `lpips` package itself uses:
- the VGG16 backbone, torchvision's ImageNet state dict (`vgg16-397923af.pth`; keys `features.N.weight/bias`);
- LPIPS' linear heads (`lpips/weights/v0.1/vgg.pth`; keys `linK.model.1.weight`, [1, C, 1, 1]).
Both are read with `torch.load(weights_only=True)`, which runs no code from the file. The network is
defined here (no torchvision): VGG16's conv stack up to relu5_3, features taken after relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3, each unit-normalised over channels, their squared differences weighed by
the linear heads, averaged over space and summed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from engines.errors import CheckpointError

# VGG16's `features`: conv widths, "M" for a max-pool; LPIPS taps the ReLU that ends each of the 5 stages
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS' input scaling (its ScalingLayer): images in [-1, 1] are shifted and scaled channel-wise
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            channels = int(item)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """distance(a, b) -> [N] for images [N, 3, H, W] in [-1, 1]; 0 for identical images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(_SCALE)[None, :, None, None])
        # the index in `features` after which each stage's ReLU output is taken
        relus = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]
        self._taps = {relus[k] for k in (1, 3, 6, 9, 12)}

    def _stages(self, x: Tensor) -> list[Tensor]:
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._taps:
                out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        fa = self._stages((a - self.shift) / self.scale)
        fb = self._stages((b - self.shift) / self.scale)
        return sum(lin((x - y).square()).mean((1, 2, 3)) for lin, x, y in zip(self.lins, fa, fb))


def _state(path: Path, what: str) -> dict[str, Tensor]:
    from engines.checkpoints import load_torch_file  # weights only; a file that asks for code is refused

    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not the {what}'s state dict")
    return state


def load_lpips(linear: str | Path, backbone: str | Path) -> LPIPS:
    """LPIPS-VGG from LPIPS' linear heads file and torchvision's VGG16 state dict (module docstring)."""
    model = LPIPS()
    heads, vgg = _state(Path(linear), "LPIPS linear heads (vgg.pth)"), _state(Path(backbone), "VGG16 backbone")
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    wanted = {f"features.{i}.{p}": f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    wanted.update({f"lin{k}.model.1.weight": f"lins.{k}.weight" for k in range(len(_TAP_CHANNELS))})
    given = {**vgg, **heads}
    missing = [key for key in wanted if key not in given]
    if missing:
        source = linear if missing[0].startswith("lin") else backbone
        raise CheckpointError(f"{source}: no {missing[0]!r}; expected LPIPS' vgg.pth heads and torchvision's "
                              "vgg16 state dict")
    own = model.state_dict()
    for key, name in wanted.items():
        if tuple(given[key].shape) != tuple(own[name].shape):
            raise CheckpointError(f"{key}: shape {tuple(given[key].shape)}, LPIPS-VGG needs {tuple(own[name].shape)}")
        own[name] = given[key].float()
    model.load_state_dict(own)
    return model.eval().requires_grad_(False)
