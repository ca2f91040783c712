"""Networks and the engines that run them.

Public loaders: `load_generator(path) -> LoadedGenerator`, `load_encoder(path) -> LoadedEncoder`, for
rosinality .pt, NVlabs .pkl, e4e/pSp/ReStyle .pt and the project's .safetensors (engines/checkpoints.py;
ReStyle's iterations in engines/restyle.py);
`load_clip(path, activation=None) -> ClipModel` for open_clip, transformers and OpenAI CLIP weights
(engines/clip_checkpoints.py).
torch is imported on first use, so `import engines` (and engines.errors) stays light.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from engines.errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from engines.checkpoints import Checkpoint
    from engines.nets.clip import Activation, ClipModel
    from engines.nets.stylegan2 import ExportSafeSynthesis, Generator
    from engines.restyle import RestyleEncoder

__all__ = ["LoadedEncoder", "LoadedGenerator", "load_clip", "load_encoder", "load_generator", "restyle_iterations"]


def _as_tensor(x: Tensor | np.ndarray) -> tuple[Tensor, bool]:
    import torch

    if isinstance(x, torch.Tensor):
        return x.float(), False
    return torch.from_numpy(x).float(), True


class LoadedGenerator:
    """A StyleGAN2 generator from a checkpoint: `mapping(z) -> w`, `synthesis(wplus) -> image`.

    Inputs are torch tensors or numpy arrays; outputs come back as the same kind. Synthesis runs the
    export-safe form (constant weights, faster on CPU); `module` is the trainable Generator."""

    def __init__(self, module: Generator, latent_avg: Tensor | None, checkpoint: Checkpoint | None = None) -> None:
        self.module = module.eval()
        self.config: dict[str, Any] = module.config
        # [D]: e4e stores one row per W+ entry, all equal; keep the mean row
        self.latent_avg = None if latent_avg is None else latent_avg.reshape(-1, module.style_dim).mean(0)
        self.checkpoint = checkpoint
        self._synthesis: ExportSafeSynthesis = module.export_safe()

    @property
    def num_ws(self) -> int:
        return self.module.num_ws

    @property
    def resolution(self) -> int:
        return self.module.resolution

    @property
    def style_dim(self) -> int:
        return self.module.style_dim

    def mapping(self, z: Tensor | np.ndarray, truncation_psi: float = 1.0) -> Tensor | np.ndarray:
        """z [N, D] -> w [N, D]; truncation pulls w towards latent_avg (psi 1: none)."""
        import torch

        z_t, to_numpy = _as_tensor(z)
        with torch.inference_mode():
            w = self.module.mapping(z_t)
            if truncation_psi != 1.0:
                if self.latent_avg is None:
                    raise CheckpointError("truncation needs latent_avg, which this checkpoint does not have")
                w = self.latent_avg + truncation_psi * (w - self.latent_avg)
        return w.numpy() if to_numpy else w

    def synthesis(self, wplus: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """W+ [N, num_ws, D] -> image [N, 3, H, W], about [-1, 1] for trained weights (not clamped)."""
        import torch

        w_t, to_numpy = _as_tensor(wplus)
        if w_t.ndim != 3 or w_t.shape[1:] != (self.num_ws, self.style_dim):
            raise ValueError(f"wplus must be [N, {self.num_ws}, {self.style_dim}], got {list(w_t.shape)}")
        with torch.inference_mode():
            img = self._synthesis(w_t)
        return img.numpy() if to_numpy else img

    def export_safe(self) -> nn.Module:
        """The constant-weight synthesis module (for ONNX / TensorRT export)."""
        return self._synthesis


class LoadedEncoder:
    """An image -> W+ encoder from a checkpoint: `encode(image [N,3,S,S] in [-1,1]) -> wplus`."""

    def __init__(self, module: nn.Module, latent_avg: Tensor | None, input_size: int, architecture: str,
                 checkpoint: Checkpoint | None = None) -> None:
        self.module = module.eval()
        self.latent_avg = latent_avg
        self.input_size = input_size
        self.input_nc = 3  # image channels `module` reads (ReStyle's: 6)
        self.architecture = architecture
        self.checkpoint = checkpoint

    def encode(self, image: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """codes from the network plus latent_avg (broadcast over W+ entries) when the file has one."""
        import torch

        x, to_numpy = _as_tensor(image)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image must be [N, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}")
        with torch.inference_mode():
            codes = self.module(x)
            if self.latent_avg is not None:
                codes = codes + self.latent_avg.reshape(1, -1, codes.shape[-1])
        return codes.numpy() if to_numpy else codes


def load_generator(path: str | os.PathLike) -> LoadedGenerator:
    """The StyleGAN2 generator of a checkpoint (for e4e/pSp files, their decoder)."""
    from engines.checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.architecture == "stylegan2-generator":
        return LoadedGenerator(ckpt.module, ckpt.latent_avg, ckpt)  # type: ignore[arg-type]
    if ckpt.decoder is not None:
        return LoadedGenerator(ckpt.decoder, ckpt.latent_avg, ckpt)
    raise CheckpointError(f"{path}: holds a {ckpt.architecture} network, not a StyleGAN2 generator")


def load_encoder(path: str | os.PathLike) -> LoadedEncoder:
    """The encoder of an e4e/pSp checkpoint or a project encoder safetensors (demo-encoder). A ReStyle
    pSp / e4e checkpoint gives an engines.restyle.RestyleEncoder: `encode` takes the 6-channel input
    and returns the raw residual codes; `restyle_iterations` runs the whole inversion."""
    from engines.checkpoints import ENCODER_ARCHITECTURES, RESTYLE_ARCHITECTURES, load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.architecture not in ENCODER_ARCHITECTURES:
        raise CheckpointError(f"{path}: holds a {ckpt.architecture} network, not an encoder")
    if ckpt.architecture in RESTYLE_ARCHITECTURES:
        from engines.restyle import RestyleEncoder

        if ckpt.latent_avg is None:
            raise CheckpointError(f"{path}: a ReStyle checkpoint without 'latent_avg'; its first step starts "
                                  "from it, so the file is incomplete")
        return RestyleEncoder(ckpt.module, ckpt.latent_avg, ckpt.architecture, ckpt, ckpt.decoder,
                              int(ckpt.config.get("restyle_iterations", 5)))
    use_avg = ckpt.config.get("start_from_latent_avg", True)
    input_size = int(getattr(ckpt.module, "input_size", 256))
    return LoadedEncoder(ckpt.module, ckpt.latent_avg if use_avg else None, input_size, ckpt.architecture, ckpt)


def load_clip(path: str | os.PathLike, activation: Activation | None = None) -> ClipModel:
    """A CLIP model (ViT image tower) from open_clip, transformers or OpenAI weights; see
    engines/clip_checkpoints.py. `activation` ("quickgelu" / "gelu") when the file does not say."""
    from engines.clip_checkpoints import load_clip as _load_clip

    return _load_clip(path, activation)


def restyle_iterations(encoder: RestyleEncoder, generator: LoadedGenerator | nn.Module,
                       image: Tensor | np.ndarray, n: int | None = None, **kwargs: Any) -> Any:
    """ReStyle's inversion: codes after each of `n` steps, Tensor [n, N, num_ws, 512]; see engines/restyle.py."""
    from engines.restyle import restyle_iterations as _restyle_iterations

    return _restyle_iterations(encoder, generator, image, n, **kwargs)
