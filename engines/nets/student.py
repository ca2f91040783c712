"""A distilled edit: a small image-to-image network that predicts the change an edit makes to a crop.

`ResidualStudent` learns `teacher(crop) - crop` (the generator-rendered edit, see DESIGN.md) and returns
`crop + delta`, so it runs at the crop's own resolution and passes through every detail it does not change.
Its last layer starts at zero: an untrained student is exactly the identity.

Shape of the net (a small U-Net that spends its compute at low resolution, so 256x256 runs in a few ms
on one CPU core): space-to-depth by 2, then `levels` stride-2 convs down to 1/2**(levels+1) of the
input, `depth` residual blocks there, and a decoder that convolves at the coarse resolution *before*
up-sampling (bilinear) and adds the encoder's skip. The delta leaves through a 1x1 conv and
depth-to-space, so it keeps full-resolution detail without a full-resolution convolution.
"""
from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn
from torch.nn import functional as F

from engines.nets.blocks import ResBlock, leaky


class ResidualStudent(nn.Module):
    """forward(img [N,3,H,W] in [-1,1]) -> img + delta [N,3,H,W]; fully convolutional.

    Channels: width // 2 at 1/2 resolution, width at 1/4, then doubling per level up to max_width.
    H and W that are not multiples of `stride` (16 by default) are padded (edge values) and cropped back,
    so any size works; multiples of `stride` avoid the extra pad. All arguments are keyword-only and
    JSON-serialisable (`self.config`).
    """

    def __init__(self, *, width: int = 32, depth: int = 2, levels: int = 3, max_width: int = 64) -> None:
        super().__init__()
        if levels < 1 or depth < 0 or width < 2:
            raise ValueError(f"need levels >= 1, depth >= 0, width >= 2; got {levels}, {depth}, {width}")
        self.config = {"width": width, "depth": depth, "levels": levels, "max_width": max_width}
        self.stride = 2 ** (levels + 1)
        widths = [max(width // 2, 1)] + [min(max_width, width * 2**k) for k in range(levels)]
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, widths[0], 3, 1, 1), leaky())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), leaky()) for c_in, c_out in pairwise(widths))
        self.body = nn.Sequential(*(ResBlock(widths[-1]) for _ in range(depth)))
        # up[k] takes level k+1 to level k's width at level k+1's (coarser) resolution.
        self.up = nn.ModuleList(nn.Conv2d(widths[k + 1], widths[k], 3, 1, 1) for k in range(levels))
        self.act = leaky()
        self.to_delta = nn.Sequential(nn.Conv2d(widths[0], 12, 1), nn.PixelShuffle(2))
        last = self.to_delta[0]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, img: Tensor) -> Tensor:
        return img + self.delta(img)

    def delta(self, img: Tensor) -> Tensor:
        """The predicted change, img [N,3,H,W] -> [N,3,H,W]."""
        height, width = img.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        x = F.pad(img, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else img
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = self.body(skips.pop())
        for k in reversed(range(len(self.up))):
            y = self.act(F.interpolate(self.up[k](y), scale_factor=2.0, mode="bilinear",
                                       align_corners=False) + skips[k])
        delta = self.to_delta(y)
        return delta[..., :height, :width] if pad_h or pad_w else delta
