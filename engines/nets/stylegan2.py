"""StyleGAN2 generator with rosinality's state_dict layout: layers, then mapping, then synthesis.

Two forms of the same function:
- `Generator.synthesis` is the training-style form: per-sample modulated weights, grouped convolution.
- `Generator.export_safe()` returns a snapshot module whose convolutions all have constant weights:
  the input is scaled by the style, convolved with the fixed weight, and multiplied by demodulation
  coefficients (a matmul of the squared style with the precomputed squared weight norms). FIR
  up-sampling is a depthwise conv_transpose / conv with constant taps and noise is a constant buffer,
  so ONNX Runtime and TensorRT accept it, and it is the faster form on CPU.

Style space (StyleSpace, Wu et al. 2021; StyleCLIP's global directions): every modulated layer's
style s = modulation(w), one vector per layer. `ExportSafeSynthesis.styles(wplus)` computes them and
`from_styles(styles)` draws from them, so an edit can move single style channels; `StyleSpaceSynthesis`
is that as one module over all styles concatenated (for export).

The only special op, FIR filtering (`upfirdn2d`), has a reference twin picked per call (`impl`);
tests compare the two.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

SQRT2 = math.sqrt(2.0)
DEFAULT_BLUR = (1, 3, 3, 1)
FirImpl = Literal["ref", "conv"]


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's (and NVlabs config-f) channel count per resolution."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: ch for res, ch in table.items() if res <= size}


def small_generator_config(size: int = 64, width: int = 64, style_dim: int = 512, n_mlp: int = 2,
                           min_width: int = 16) -> dict:
    """Constructor kwargs of a narrow generator (tests, the demo pack): `width` channels up to 32 px,
    halving per octave above that, never below `min_width`."""
    if size < 8 or size & (size - 1):
        raise ValueError(f"generator size must be a power of two >= 8, got {size}")
    resolutions = [2**i for i in range(2, int(math.log2(size)) + 1)]
    channels = {res: max(min_width, min(width, width * 32 // res)) for res in resolutions}
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}


def make_kernel(taps: Sequence[float]) -> Tensor:
    """Separable FIR taps -> normalised 2-D kernel [K, K] (sum 1)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None] if k.ndim == 1 else k
    return k / k.sum()


# ----------------------------------------------------------------------------------------------- FIR op
def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, pad: tuple[int, int] = (0, 0),
              impl: FirImpl = "ref") -> Tensor:
    """Zero-insert by `up`, pad (pad0 before, pad1 after, both axes), convolve with `kernel` [K, K].

    A true convolution (taps flipped), as rosinality's and NVlabs' upfirdn2d. `impl="ref"` spells the
    definition out; `impl="conv"` is the same thing as one depthwise conv (up=1) or conv_transpose (up=2)."""
    if impl == "ref":
        return _upfirdn2d_ref(x, kernel, up, pad)
    return _upfirdn2d_conv(x, kernel, up, pad)


def _upfirdn2d_ref(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    n, c, h, w = x.shape
    if up > 1:
        stuffed = x.new_zeros(n, c, h * up, w * up)
        stuffed[:, :, ::up, ::up] = x
        x = stuffed
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    taps = kernel.flip([0, 1])[None, None].expand(c, 1, *kernel.shape)  # [C, 1, K, K]
    return F.conv2d(x, taps, groups=c)


def _upfirdn2d_conv(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    if up == 1 and pad[0] != pad[1]:
        raise ValueError(f"conv FIR needs symmetric padding, got {pad}")
    if up > 1 and pad[1] != pad[0] - up + 1:
        raise ValueError(f"conv_transpose FIR needs pad1 == pad0 - up + 1, got {pad}")
    return fir_conv(x, fir_weight(kernel, x.shape[1], up), up, pad[0])


def fir_weight(kernel: Tensor, channels: int, up: int) -> Tensor:
    """Constant depthwise weight [C, 1, K, K] for `fir_conv` (taps flipped for the plain conv)."""
    taps = kernel if up > 1 else kernel.flip([0, 1])
    return taps[None, None].repeat(channels, 1, 1, 1).contiguous()


def fir_conv(x: Tensor, weight: Tensor, up: int, pad0: int) -> Tensor:
    """upfirdn2d with a `fir_weight`: a depthwise conv (up=1), or for up>1 a depthwise conv_transpose,
    since zero-insertion + pad0 + flipped correlation equals conv_transpose with padding K-1-pad0."""
    if up == 1:
        return F.conv2d(x, weight, padding=pad0, groups=x.shape[1])
    return F.conv_transpose2d(x, weight, stride=up, padding=weight.shape[-1] - 1 - pad0, groups=x.shape[1])


def fused_leaky_relu(x: Tensor, bias: Tensor, clamp: float | None = None) -> Tensor:
    """leaky_relu(x + bias, 0.2) * sqrt(2), optionally clamped (NVlabs conv_clamp)."""
    out = F.leaky_relu(x + bias.view(1, -1, *([1] * (x.ndim - 2))), 0.2) * SQRT2
    return out if clamp is None else out.clamp(-clamp, clamp)


# ----------------------------------------------------------------------------------------------- layers
class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weight stored unscaled, scaled at run time)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)  # [O, I]
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    """FIR filter after a transposed convolution (kernel buffer includes the up-sampling gain)."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR up-sampling of the RGB skip image."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        self.factor = factor
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, training-style: one grouped conv with per-sample weights."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, blur_kernel: Sequence[float] = DEFAULT_BLUR) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))  # [1,O,I,k,k]
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        n, _, h, wd = x.shape
        style = self.modulation(w).view(n, 1, self.in_channels, 1, 1)
        weight = self.scale * self.weight * style  # [N, O, I, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum([2, 3, 4]) + 1e-8).view(n, self.out_channels, 1, 1, 1)
        x = x.reshape(1, n * self.in_channels, h, wd)
        k = self.kernel_size
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * self.in_channels, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            return self.blur(out.view(n, self.out_channels, *out.shape[2:]))
        out = F.conv2d(x, weight.reshape(n * self.out_channels, self.in_channels, k, k), padding=self.padding, groups=n)
        return out.view(n, self.out_channels, *out.shape[2:])


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int, clamp: float | None = None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias, self.clamp)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + constant noise + biased leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels, clamp=conv_clamp)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation), added to the up-sampled skip image."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, conv_clamp: float | None = None) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = conv_clamp

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias
        if self.clamp is not None:
            out = out.clamp(-self.clamp, self.clamp)
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


# -------------------------------------------------------------------------------------------- generator
class Generator(nn.Module):
    """StyleGAN2 generator; `state_dict()` keys and shapes equal rosinality's `Generator`.

    `channels` maps resolution -> channels (overrides `channel_multiplier`), `lr_mlp` is the mapping
    network's learning-rate multiplier (its weights are stored divided by it), `conv_clamp` clamps
    activations and RGB outputs as NVlabs' conv_clamp does (None: no clamp, as rosinality)."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channels: dict[int, int] | None = None, blur_kernel: Sequence[float] = DEFAULT_BLUR,
                 lr_mlp: float = 0.01, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.log_size = int(math.log2(size))
        if size < 4 or 2**self.log_size != size:
            raise ValueError(f"generator size must be a power of two, got {size}")
        chans = default_channels(size, channel_multiplier)
        chans.update({int(res): int(ch) for res, ch in (channels or {}).items()})
        self._config = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channels": chans,
                        "blur_kernel": list(blur_kernel), "lr_mlp": lr_mlp, "conv_clamp": conv_clamp}
        self.size, self.style_dim = size, style_dim

        # mapping: z [N, D] -> w [N, D]
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])

        # synthesis: 4x4 constant, then per octave an up-sampling conv, a conv and a ToRGB
        self.input = ConstantInput(chans[4])
        self.conv1 = StyledConv(chans[4], chans[4], style_dim, blur_kernel=blur_kernel, conv_clamp=conv_clamp)
        self.to_rgb1 = ToRGB(chans[4], style_dim, upsample=False, conv_clamp=conv_clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = chans[4]
        for i in range(3, self.log_size + 1):
            out_ch = chans[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, style_dim, upsample=True, blur_kernel=blur_kernel,
                                         conv_clamp=conv_clamp))
            self.convs.append(StyledConv(out_ch, out_ch, style_dim, blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            in_ch = out_ch
        self.noises = nn.Module()  # one constant noise image per StyledConv: [1, 1, res, res]
        for i in range((self.log_size - 2) * 2 + 1):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))

    @property
    def config(self) -> dict:
        """Constructor kwargs (JSON-friendly apart from int keys of `channels`)."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._config.items()}

    @property
    def num_ws(self) -> int:
        return self.log_size * 2 - 2

    @property
    def resolution(self) -> int:
        return self.size

    def noise(self, i: int) -> Tensor:
        return getattr(self.noises, f"noise_{i}")

    def mapping(self, z: Tensor) -> Tensor:
        """z [N, D] -> w [N, D]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int, seed: int = 0) -> Tensor:
        """Mean of `n` mapped random z: [1, D] (the truncation centre)."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=gen).to(self.input.input)
        return self.style(z).mean(0, keepdim=True)

    def synthesis(self, wplus: Tensor) -> Tensor:
        """W+ [N, num_ws, D] -> image [N, 3, H, W] (about [-1, 1]); noise is the constant buffers."""
        x = self.input(wplus.shape[0])
        x = self.conv1(x, wplus[:, 0], self.noise(0))
        skip = self.to_rgb1(x, wplus[:, 1])
        for i, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * i](x, wplus[:, 2 * i + 1], self.noise(2 * i + 1))
            x = self.convs[2 * i + 1](x, wplus[:, 2 * i + 2], self.noise(2 * i + 2))
            skip = to_rgb(x, wplus[:, 2 * i + 3], skip)
        return skip

    def export_safe(self) -> ExportSafeSynthesis:
        """A constant-weight snapshot of the synthesis network (see module docstring)."""
        return ExportSafeSynthesis(self)


# ------------------------------------------------------------------------------------ export-safe form
class _SafeModConv(nn.Module):
    """Modulated conv with a constant weight: conv(x * s) * d, d = rsqrt(s^2 @ sum_k W^2 + eps)."""

    def __init__(self, src: ModulatedConv2d) -> None:
        super().__init__()
        weight = (src.scale * src.weight[0]).detach().clone()  # [O, I, k, k]
        self.modulation = copy.deepcopy(src.modulation)
        self.demodulate, self.upsample, self.padding = src.demodulate, src.upsample, src.padding
        if src.upsample:
            self.register_buffer("weight", weight.transpose(0, 1).contiguous())  # [I, O, k, k]
            self.register_buffer("blur_weight", fir_weight(src.blur.kernel, src.out_channels, up=1))
            self.blur_pad = src.blur.pad[0]
        else:
            self.register_buffer("weight", weight.contiguous())
        self.register_buffer("weight_sq", weight.square().sum([2, 3]).t().contiguous())  # [I, O]

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """x [N, I, H, W] and the layer's style s = modulation(w) [N, I]."""
        x = x * s[:, :, None, None]
        if self.upsample:
            x = fir_conv(F.conv_transpose2d(x, self.weight, stride=2), self.blur_weight, 1, self.blur_pad)
        else:
            x = F.conv2d(x, self.weight, padding=self.padding)
        if self.demodulate:
            d = torch.rsqrt(s.square() @ self.weight_sq + 1e-8)[:, :, None, None]  # [N, O, 1, 1]
            x = x * d if x.requires_grad else x.mul_(d)
        return x


class _SafeStyledConv(nn.Module):
    def __init__(self, src: StyledConv, noise: Tensor) -> None:
        super().__init__()
        self.conv = _SafeModConv(src.conv)
        self.register_buffer("noise", (src.noise.weight * noise).detach().clone())  # [1, 1, H, W]
        self.register_buffer("bias", src.activate.bias.detach().clone().view(1, -1, 1, 1))
        self.clamp = src.activate.clamp

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        x = self.conv(x, s)
        if x.requires_grad:  # out of place keeps the tensors autograd saved
            x = F.leaky_relu(x + self.noise + self.bias, 0.2) * SQRT2
            return x if self.clamp is None else x.clamp(-self.clamp, self.clamp)
        # in place on this layer's fresh output: no new large tensors at high resolution (CPU speed)
        x = F.leaky_relu(x.add_(self.noise).add_(self.bias), 0.2, inplace=True).mul_(SQRT2)
        return x if self.clamp is None else x.clamp_(-self.clamp, self.clamp)


class _SafeToRGB(nn.Module):
    def __init__(self, src: ToRGB) -> None:
        super().__init__()
        self.conv = _SafeModConv(src.conv)
        self.register_buffer("bias", src.bias.detach().clone())
        self.clamp = src.clamp
        if hasattr(src, "upsample"):
            self.register_buffer("up_weight", fir_weight(src.upsample.kernel, 3, up=src.upsample.factor))
            self.up_factor, self.up_pad0 = src.upsample.factor, src.upsample.pad[0]

    def forward(self, x: Tensor, s: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, s) + self.bias
        if self.clamp is not None:
            out = out.clamp(-self.clamp, self.clamp)
        if skip is None:
            return out
        return out + fir_conv(skip, self.up_weight, self.up_factor, self.up_pad0)


class ExportSafeSynthesis(nn.Module):
    """forward(wplus [N, num_ws, D]) -> image [N, 3, H, W]; every conv weight is a constant buffer."""

    def __init__(self, g: Generator) -> None:
        super().__init__()
        self.num_ws, self.resolution = g.num_ws, g.resolution
        self.register_buffer("const", g.input.input.detach().clone())  # [1, C, 4, 4]
        self.conv1 = _SafeStyledConv(g.conv1, g.noise(0))
        self.to_rgb1 = _SafeToRGB(g.to_rgb1)
        self.convs = nn.ModuleList(_SafeStyledConv(conv, g.noise(i + 1)) for i, conv in enumerate(g.convs))
        self.to_rgbs = nn.ModuleList(_SafeToRGB(to_rgb) for to_rgb in g.to_rgbs)
        self.requires_grad_(False)
        self.eval()

    def forward(self, wplus: Tensor) -> Tensor:
        return self.from_styles(self.styles(wplus))

    def style_layers(self) -> list[tuple[nn.Module, int, bool]]:
        """(layer, the W+ entry it reads, whether it is a ToRGB) for every modulated layer, in the
        order of `styles`: conv1, to_rgb1, then per resolution two convs and a ToRGB."""
        layers: list[tuple[nn.Module, int, bool]] = [(self.conv1, 0, False), (self.to_rgb1, 1, True)]
        for i, to_rgb in enumerate(self.to_rgbs):
            layers += [(self.convs[2 * i], 2 * i + 1, False), (self.convs[2 * i + 1], 2 * i + 2, False),
                       (to_rgb, 2 * i + 3, True)]
        return layers

    def styles(self, wplus: Tensor) -> list[Tensor]:
        """W+ [N, num_ws, D] -> each modulated layer's style [N, C_in] (`style_layers` order)."""
        return [layer.conv.modulation(wplus[:, index]) for layer, index, _ in self.style_layers()]

    def from_styles(self, styles: Sequence[Tensor]) -> Tensor:
        """Each modulated layer's style (`style_layers` order) -> image [N, 3, H, W]."""
        x = self.conv1(self.const.expand(styles[0].shape[0], -1, -1, -1), styles[0])
        skip = self.to_rgb1(x, styles[1])
        for i, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * i](x, styles[3 * i + 2])
            x = self.convs[2 * i + 1](x, styles[3 * i + 3])
            skip = to_rgb(x, styles[3 * i + 4], skip)
        return skip


class StyleSpaceSynthesis(nn.Module):
    """forward(styles [N, S]) -> image: every layer's style concatenated in `style_layers` order
    (S = 9088 at 1024 px), for an engine that draws style-space edits."""

    def __init__(self, synthesis: ExportSafeSynthesis) -> None:
        super().__init__()
        self.synthesis = synthesis
        self.widths = [int(layer.conv.weight_sq.shape[0]) for layer, _, _ in synthesis.style_layers()]

    def forward(self, styles: Tensor) -> Tensor:
        return self.synthesis.from_styles(list(styles.split(self.widths, dim=1)))
