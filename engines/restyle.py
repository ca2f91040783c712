"""ReStyle (Alaluf et al. 2021): inversion as a few encoder steps, each correcting the last.

The rule, as upstream runs it at inference (reference README, "Iteration rule"):
1. The average image: `latent_avg` decoded as W+ with constant noise, pooled to 256x256, not clamped.
2. Step k = 0..n-1: the encoder reads [target, previous] (6 channels; previous is the average image at
   k = 0, else the last pooled reconstruction) and predicts a residual; codes_k = residual + latent_avg
   at k = 0 (whatever `start_from_latent_avg` says), else residual + codes_{k-1}. The reconstruction
   of codes_k, pooled to 256 (an exact 4x4 mean at 1024 px), raw (no clamp), feeds step k + 1.

Each step costs one encoder and one generator pass; the last step's reconstruction is computed only when
asked for, so an inversion of n steps runs the generator n - 1 times (plus the average image, once).
`RestyleInversion` is all of it as one module: image -> final codes, for the pipeline's encoder engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engines import LoadedEncoder, LoadedGenerator
from engines.errors import UserError
from engines.nets.stylegan2 import ExportSafeSynthesis, Generator

if TYPE_CHECKING:
    from engines.checkpoints import Checkpoint

# The pipeline's default number of steps live (serve, camera): one step needs no generator pass at all
# (the average image is computed once), each further one an encoder and a 1024 px generator pass.
LIVE_ITERATIONS = 1


def pool_to(images: Tensor, size: int) -> Tensor:
    """Area-average `images` down to size x size (upstream's adaptive average pool; exact mean of
    k x k blocks when the side is a multiple of `size`, nothing when it is already `size`)."""
    side = images.shape[-1]
    if side == size:
        return images
    if side % size == 0:
        return F.avg_pool2d(images, side // size)
    return F.adaptive_avg_pool2d(images, size)


def _synthesis(generator: LoadedGenerator | Generator | ExportSafeSynthesis) -> ExportSafeSynthesis:
    if isinstance(generator, LoadedGenerator):
        return generator.export_safe()  # type: ignore[return-value]
    if isinstance(generator, Generator):
        return generator.eval().export_safe()
    if isinstance(generator, ExportSafeSynthesis):
        return generator
    raise TypeError(f"generator must be a LoadedGenerator, Generator or ExportSafeSynthesis, "
                    f"not {type(generator).__name__}")


class RestyleEncoder(LoadedEncoder):
    """A ReStyle encoder from a checkpoint. `encode(x [N, 6, 256, 256])` -> the raw residual codes
    [N, num_ws, 512] (nothing added); `latent_avg` is [num_ws, 512]; `iterations` the file's
    `n_iters_per_batch` (upstream's default number of steps); `decoder` the file's StyleGAN2, the one the
    encoder was trained against."""

    def __init__(self, module: nn.Module, latent_avg: Tensor, architecture: str, checkpoint: Checkpoint | None,
                 decoder: Generator | None, iterations: int) -> None:
        num_ws, dim = module.num_ws, module.style_dim
        latent_avg = latent_avg.float().reshape(-1, dim)
        if latent_avg.shape[0] not in (1, num_ws):
            raise UserError(f"{checkpoint.path if checkpoint else 'ReStyle'}: latent_avg has "
                            f"{latent_avg.shape[0]} rows; expected 1 or {num_ws}")
        super().__init__(module, latent_avg.expand(num_ws, dim).clone(), module.input_size, architecture, checkpoint)
        self.input_nc = int(module.input_nc)
        self.decoder = decoder
        self.iterations = iterations
        self._average: tuple[ExportSafeSynthesis, Tensor] | None = None

    @property
    def num_ws(self) -> int:
        return int(self.module.num_ws)

    def encode(self, image: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """x [N, 6, S, S] ([target, previous], both in [-1, 1]) -> residual codes [N, num_ws, 512]."""
        to_numpy = isinstance(image, np.ndarray)
        x = torch.from_numpy(image).float() if to_numpy else image.float()
        size = self.input_size
        if x.ndim != 4 or x.shape[1:] != (self.input_nc, size, size):
            raise ValueError(f"ReStyle input must be [N, {self.input_nc}, {size}, {size}] (target image, then "
                             f"the previous output), got {list(x.shape)}")
        with torch.inference_mode():
            codes = self.module(x)
        return codes.numpy() if to_numpy else codes

    def generator(self) -> LoadedGenerator:
        """The file's own decoder as a LoadedGenerator (UserError when the file has none)."""
        if self.decoder is None:
            raise UserError(f"{self.checkpoint.path if self.checkpoint else 'ReStyle'}: no decoder in this "
                            "file; pass the StyleGAN2 generator it was trained with")
        return LoadedGenerator(self.decoder, self.latent_avg, self.checkpoint)

    def average_image(self, generator: LoadedGenerator | Generator | ExportSafeSynthesis) -> Tensor:
        """latent_avg decoded with constant noise and pooled to the input size [1, 3, S, S] (kept for
        the last generator asked about)."""
        synthesis = _synthesis(generator)
        if self._average is None or self._average[0] is not synthesis:
            if synthesis.num_ws != self.num_ws:
                raise UserError(f"the ReStyle encoder predicts {self.num_ws} styles but the generator takes "
                                f"{synthesis.num_ws}; use the generator it was trained with (its own decoder: "
                                "give the ReStyle file as --generator too)")
            with torch.inference_mode():
                image = pool_to(synthesis(self.latent_avg[None]), self.input_size)
            self._average = (synthesis, image)
        return self._average[1]

    def inversion(self, generator: LoadedGenerator | Generator | ExportSafeSynthesis, iterations: int | None = None
                  ) -> RestyleInversion:
        """The whole inversion as one module, image [N, 3, S, S] -> final codes (latent_avg included)."""
        n = self.iterations if iterations is None else iterations
        return RestyleInversion(self.module, _synthesis(generator), self.latent_avg, self.average_image(generator), n)


class RestyleInversion(nn.Module):
    """forward(image [N, 3, S, S] in [-1, 1]) -> codes [N, num_ws, 512] after `iterations` ReStyle steps,
    latent_avg included. Static shapes and a fixed number of steps, so it exports to ONNX unrolled."""

    def __init__(self, encoder: nn.Module, synthesis: ExportSafeSynthesis, latent_avg: Tensor, average_image: Tensor,
                 iterations: int) -> None:
        super().__init__()
        if iterations < 1:
            raise UserError(f"ReStyle iterations must be at least 1, got {iterations}")
        self.encoder, self.synthesis, self.iterations = encoder, synthesis, iterations
        self.input_size = int(encoder.input_size)
        self.register_buffer("latent_avg", latent_avg.detach().clone()[None])  # [1, num_ws, D]
        self.register_buffer("average_image", average_image.detach().clone())  # [1, 3, S, S]
        self.eval().requires_grad_(False)

    def steps(self, image: Tensor, iterations: int, keep_images: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """Codes after each step (and, with keep_images, each step's full-size reconstruction)."""
        image = pool_to(image, self.input_size) if image.shape[-1] % self.input_size == 0 else F.interpolate(
            image, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        previous = self.average_image.expand(image.shape[0], -1, -1, -1)
        codes = self.latent_avg
        all_codes: list[Tensor] = []
        images: list[Tensor] = []
        for k in range(iterations):
            codes = self.encoder(torch.cat([image, previous], dim=1)) + codes
            all_codes.append(codes)
            if keep_images or k < iterations - 1:
                full = self.synthesis(codes)
                previous = pool_to(full, self.input_size)
                if keep_images:
                    images.append(full)
        return all_codes, images

    def forward(self, image: Tensor) -> Tensor:
        return self.steps(image, self.iterations)[0][-1]


def restyle_iterations(encoder: RestyleEncoder, generator: LoadedGenerator | Generator | ExportSafeSynthesis,
                       image: Tensor | np.ndarray, n: int | None = None, *, return_images: bool = False) -> Any:
    """ReStyle's inversion of `image` [N, 3, H, W] in [-1, 1] (resized to the encoder's 256 when it is not):
    the codes after each of `n` steps, [n, N, num_ws, 512] (n: the file's n_iters_per_batch when None).
    With return_images, also each step's reconstruction [n, N, 3, R, R]."""
    if not isinstance(encoder, RestyleEncoder):
        raise UserError("restyle_iterations needs a ReStyle encoder (engines.load_encoder of a ReStyle "
                        f"checkpoint), got {type(encoder).__name__}")
    n = encoder.iterations if n is None else int(n)
    x = torch.from_numpy(image).float() if isinstance(image, np.ndarray) else image.float()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"image must be [N, 3, H, W] in [-1, 1], got {list(x.shape)}")
    with torch.inference_mode():
        codes, images = encoder.inversion(generator, n).steps(x, n, keep_images=return_images)
    return (torch.stack(codes), torch.stack(images)) if return_images else torch.stack(codes)


def pipeline_encoder(encoder: LoadedEncoder, generator: LoadedGenerator, iterations: int | None
                     ) -> tuple[nn.Module, int, Tensor | None]:
    """(module for the pipeline's encoder engine: image [1, 3, S, S] -> codes, its input size, latent_avg
    the pipeline adds to the codes or None). A ReStyle encoder becomes its whole inversion of
    `iterations` steps (None: the file's n_iters_per_batch), iterating with `generator`."""
    if not isinstance(encoder, RestyleEncoder):
        return encoder.module, encoder.input_size, encoder.latent_avg
    inversion = encoder.inversion(generator, iterations)
    return inversion, inversion.input_size, None
