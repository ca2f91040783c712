"""CLIP (Radford et al. 2021) with a ViT image tower, in open_clip's state_dict layout.

`ClipModel.state_dict()` has exactly open_clip's keys for its ViT CLIP models (`visual.*`,
`transformer.*`, `token_embedding.weight`, `positional_embedding`, `ln_final.*`, `text_projection`,
`logit_scale`), so open_clip and OpenAI weights load strictly; engines/clip_checkpoints.py maps the
other formats onto it.

Both towers are stacks of the same pre-norm block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`, LayerNorm
eps 1e-5, multi-head attention (heads 64 wide in nearly every model) with q, k and v packed in one `in_proj_weight` [3W, W] (torch's
MultiheadAttention layout). The MLP activation is the one thing the weights cannot tell: OpenAI's
weights need QuickGELU (`x * sigmoid(1.702 x)`), most later open_clip weights exact GELU.

- Image: a stride-`patch` conv cuts the picture into patches, read in row-major order; a class token is
  prepended, positions are added, `ln_pre`, the blocks, `ln_post` on the class token, times `visual.proj`.
- Text: token embeddings plus positions, the blocks with a causal mask, `ln_final`, then the row at the
  first end token (the largest id), times `text_projection`.

Features come out unnormalised; `logit_scale` is stored as a log.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

Activation = Literal["quickgelu", "gelu"]
ACTIVATIONS: tuple[Activation, ...] = ("quickgelu", "gelu")
HEAD_WIDTH = 64  # nearly every OpenAI and open_clip ViT uses 64-wide heads; the weights do not record it
# OpenAI's image normalisation (open_clip's OPENAI_DATASET_MEAN / _STD), RGB
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: Activation) -> nn.Module:
    if name == "quickgelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()  # exact (erf) GELU, not the tanh approximation
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class Attention(nn.Module):
    """Multi-head self-attention with MultiheadAttention's parameter names (batch first)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        n, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [N, heads, L, head width]
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, activation: Activation) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_width)), ("gelu", _activation(activation)),
            ("c_proj", nn.Linear(mlp_width, width))]))

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, activation: Activation) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads, mlp_width, activation) for _ in range(layers))

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x


class VisionTransformer(nn.Module):
    """images [N, 3, S, S] (normalised) -> image features [N, embed_dim]."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_width: int,
                 embed_dim: int, activation: Activation) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        grid = image_size // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-5)
        self.transformer = Transformer(width, layers, heads, mlp_width, activation)
        self.ln_post = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # [N, grid*grid, W], row-major patches
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class ClipModel(nn.Module):
    """CLIP with a ViT image tower. All arguments are keyword-only and JSON-friendly (`self.config`);
    heads default to 64-wide ones.

    `tokenize(texts) -> LongTensor [N, context_length]`, `encode_text(tokens) -> [N, embed_dim]`,
    `encode_image(images) -> [N, embed_dim]` (images at `image_size`, normalised with `mean` / `std`:
    `preprocess` does that from uint8 RGB)."""

    def __init__(self, *, embed_dim: int = 512, image_size: int = 224, patch_size: int = 32,
                 vision_width: int = 768, vision_layers: int = 12, vision_mlp_width: int = 3072,
                 vision_heads: int | None = None, context_length: int = 77, vocab_size: int = 49408,
                 text_width: int = 512, text_layers: int = 12, text_mlp_width: int = 2048,
                 text_heads: int | None = None, activation: Activation = "quickgelu",
                 mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD) -> None:
        super().__init__()
        vision_heads = vision_heads or vision_width // HEAD_WIDTH
        text_heads = text_heads or text_width // HEAD_WIDTH
        self.config = {"embed_dim": embed_dim, "image_size": image_size, "patch_size": patch_size,
                       "vision_width": vision_width, "vision_layers": vision_layers,
                       "vision_mlp_width": vision_mlp_width, "vision_heads": vision_heads,
                       "context_length": context_length, "vocab_size": vocab_size, "text_width": text_width,
                       "text_layers": text_layers, "text_mlp_width": text_mlp_width, "text_heads": text_heads,
                       "activation": activation,
                       "mean": list(mean), "std": list(std)}
        self.visual = VisionTransformer(image_size, patch_size, vision_width, vision_layers, vision_heads,
                                        vision_mlp_width, embed_dim, activation)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, text_width))
        self.transformer = Transformer(text_width, text_layers, text_heads, text_mlp_width, activation)
        self.ln_final = nn.LayerNorm(text_width, eps=1e-5)
        self.text_projection = nn.Parameter(text_width ** -0.5 * torch.randn(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._tokenizer = None  # built on first use (reads the 1.3 MB merges file)

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Texts -> token ids [N, context_length] (open_clip's tokenizer)."""
        if self._tokenizer is None:
            from engines.nets.clip_tokenizer import ClipTokenizer

            self._tokenizer = ClipTokenizer(context_length=self.context_length)
        return self._tokenizer(texts)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """tokens [N, context_length] -> text features [N, embed_dim] (not normalised)."""
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, causal=True))
        end = tokens.argmax(dim=-1)  # the first end token: it has the largest id
        return x[torch.arange(x.shape[0], device=x.device), end] @ self.text_projection

    def encode_image(self, images: Tensor) -> Tensor:
        """images [N, 3, image_size, image_size], normalised -> image features [N, embed_dim]."""
        return self.visual(images)

    def preprocess(self, images_u8: Tensor | np.ndarray) -> Tensor:
        """uint8 RGB, [N, 3, H, W] or [N, H, W, 3] (a tensor or a numpy array; one [H, W, 3] image too) ->
        the network's input: the shorter side resized to `image_size` (bicubic, antialiased), the centre
        cropped square, scaled to [0, 1] and normalised."""
        x = torch.as_tensor(images_u8)
        if x.ndim == 3:
            x = x[None]
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        x = x.float() / 255.0
        h, w = x.shape[-2:]
        size = self.image_size
        if (h, w) != (size, size):
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top:top + size, left:left + size]
        return (x - self.mean) / self.std

    def preprocess_generated(self, images: Tensor) -> Tensor:
        """Generator output [N, 3, H, W] in about [-1, 1] -> the network's input, differentiably
        (no uint8 rounding): clamped, the centre square resized to `image_size`, normalised."""
        x = ((images + 1) / 2).clamp(0, 1)
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        if side != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", align_corners=False,
                              antialias=side > self.image_size)
        return (x - self.mean) / self.std

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(tokens)
