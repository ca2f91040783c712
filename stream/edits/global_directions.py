"""StyleCLIP global directions (Patashnik et al. 2021): a text edit in the generator's style space.

1. Relevance, once per generator and CLIP (cached): for every style channel c of the convolution layers
   (ToRGB layers are left out, as StyleCLIP does), the styles of `samples` generated faces are moved to
   s_c - alpha*std_c and s_c + alpha*std_c; the CLIP image embeddings of the two renders are normalised,
   subtracted, the difference normalised, averaged over the faces and normalised again: delta_i[c], a
   unit vector [D] saying which way channel c moves the picture in CLIP's space.
2. Per text: delta_t, the unit difference of the target and neutral prompt embeddings (templates
   averaged); each channel's relevance r_c = delta_i[c] . delta_t; channels with |r_c| < beta are
   dropped; the rest, divided by the largest |r_c|, times std_c, is the style change per unit strength.
3. Into the directions file: every style is an affine map of one W+ entry (s = A w + b), so the change
   of the convolution styles that read W+ entry k is reached exactly by the minimum-norm dw_k solving
   A_conv dw_k = ds_k (A_conv is at most 512 rows for a 512-wide W). Through it the edit runs wherever
   W+ directions run (file, serve, camera, the engines). The ToRGB styles that share an entry move too:
   the direction's metadata records by how much (`rgb_style_change`, relative to the conv change).

Cost: 2 * samples renders and CLIP image encodings per channel (888 channels on the demo pack's
generator, 6048 at 1024 px), hence the cache and a small default sample count on the CPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.edits.directions import Direction

if TYPE_CHECKING:
    from torch import Tensor

    from engines import LoadedGenerator
    from engines.nets.clip import ClipModel

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 4      # faces per channel on the CPU (StyleCLIP used 100 on a GPU)
DEFAULT_ALPHA = 5.0      # channel moved by +-alpha standard deviations when measuring relevance
DEFAULT_BETA = 0.1       # channels with |relevance| below this are left alone
RELEVANCE_FORMAT = "faceedit-style-relevance/1"


@dataclass
class StyleRelevance:
    """delta_i [C, D] unit rows, one per convolution style channel; std [C] the channels' spread;
    `channels` (style layer index, channel) of each row; how it was measured (samples, alpha)."""

    delta_i: npt.NDArray[np.float32]
    std: npt.NDArray[np.float32]
    channels: npt.NDArray[np.int64]
    samples: int
    alpha: float


def conv_style_layers(synthesis: Any) -> list[tuple[int, int]]:
    """(style layer index, width) of the convolution (non-ToRGB) layers."""
    return [(i, int(layer.conv.weight_sq.shape[0])) for i, (layer, _, rgb) in enumerate(synthesis.style_layers())
            if not rgb]


def sample_styles(generator: LoadedGenerator, count: int, truncation: float = 0.7, seed: int = 0) -> list[Tensor]:
    """Styles [count, C_l] of every layer for `count` generated faces (truncated towards the average)."""
    import torch

    from stream.edits.text import sample_codes

    codes = torch.from_numpy(sample_codes(generator, count, truncation, seed))
    with torch.inference_mode():
        return generator.export_safe().styles(codes)


def compute_relevance(model: ClipModel, generator: LoadedGenerator, samples: int = DEFAULT_SAMPLES,
                      alpha: float = DEFAULT_ALPHA, *, seed: int = 0, std_samples: int = 1000, batch: int = 32,
                      progress: Callable[[int], None] | None = None) -> StyleRelevance:
    """Measure delta_i for every convolution style channel (step 1 of the module docstring).
    progress: called with the number of channels done."""
    import torch
    from torch.nn import functional as F

    if samples < 1:
        raise UserError(f"--relevance-samples {samples}: need at least one face")
    synthesis = generator.export_safe()
    std = torch.cat([s.std(dim=0) for s in sample_styles(generator, std_samples, seed=seed + 1)])
    base = sample_styles(generator, samples, seed=seed)  # per layer [K, C_l]
    widths = [s.shape[1] for s in base]
    offsets = np.cumsum([0, *widths])
    rows = [(layer, c) for layer, width in conv_style_layers(synthesis) for c in range(width)]
    delta = torch.zeros(len(rows), model.config["embed_dim"])
    per_batch = max(1, batch // (2 * samples))  # channels per render call
    with torch.inference_mode():
        for start in range(0, len(rows), per_batch):
            chunk = rows[start:start + per_batch]
            styles = [s.repeat(2 * len(chunk), 1) for s in base]  # [(channel, sign, face), C_l]
            for j, (layer, c) in enumerate(chunk):
                step = alpha * std[offsets[layer] + c]
                lo, hi = 2 * j * samples, (2 * j + 1) * samples
                styles[layer][lo:hi, c] -= step
                styles[layer][hi:hi + samples, c] += step
            images = synthesis.from_styles(styles)
            features = F.normalize(model.encode_image(model.preprocess_generated(images)), dim=-1)
            features = features.view(len(chunk), 2, samples, -1)
            change = F.normalize(features[:, 1] - features[:, 0], dim=-1).mean(dim=1)  # [chunk, D]
            delta[start:start + len(chunk)] = F.normalize(change, dim=-1)
            if progress is not None:
                progress(len(chunk))
    channels = np.array(rows, dtype=np.int64).reshape(-1, 2)
    stds = np.array([float(std[offsets[layer] + c]) for layer, c in rows], dtype=np.float32)
    return StyleRelevance(delta.numpy().astype(np.float32), stds, channels, samples, float(alpha))


def _cache_key(model: ClipModel, generator: LoadedGenerator, samples: int, alpha: float, seed: int) -> str:
    """Hash of everything the relevance depends on: both networks' weights and the measuring settings."""
    import torch

    digest = hashlib.sha256(json.dumps([samples, alpha, seed, model.config], sort_keys=True).encode())
    for module in (generator.module, model):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_relevance(model: ClipModel, generator: LoadedGenerator, cache: Path, samples: int = DEFAULT_SAMPLES,
                     alpha: float = DEFAULT_ALPHA, *, seed: int = 0,
                     progress: Callable[[int], None] | None = None) -> StyleRelevance:
    """compute_relevance, kept in `cache` (one safetensors per generator, CLIP and settings)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save

    from engines.atomic import atomic_write_bytes

    path = Path(cache) / f"style_relevance_{_cache_key(model, generator, samples, alpha, seed)}.safetensors"
    if path.is_file():
        try:
            data = load_file(str(path))
            log.info("style relevance from the cache: %s", path)
            return StyleRelevance(data["delta_i"], data["std"], data["channels"], samples, alpha)
        except (SafetensorError, OSError, KeyError) as err:
            log.warning("%s: unreadable cached relevance (%s); measuring again", path, err)
    relevance = compute_relevance(model, generator, samples, alpha, seed=seed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"delta_i": relevance.delta_i, "std": relevance.std, "channels": relevance.channels},
                                  metadata={"format": RELEVANCE_FORMAT, "samples": str(samples), "alpha": str(alpha)}))
    return relevance


def style_change(relevance: StyleRelevance, delta_t: npt.ArrayLike, beta: float = DEFAULT_BETA
                 ) -> npt.NDArray[np.float32]:
    """Per channel change for one unit of strength (step 2): relevance thresholded at beta, divided by
    its largest magnitude, times the channel's std. UserError when no channel passes beta."""
    t = np.asarray(delta_t, dtype=np.float64).reshape(-1)
    r = relevance.delta_i.astype(np.float64) @ (t / np.linalg.norm(t))
    kept = np.abs(r) >= beta
    if not kept.any():
        raise UserError(f"no style channel reaches relevance {beta} (the largest is {np.abs(r).max():.3f}); "
                        "lower --beta or reword the prompts")
    r[~kept] = 0.0
    return (r / np.abs(r).max() * relevance.std).astype(np.float32)


def style_change_to_wplus(generator: LoadedGenerator, relevance: StyleRelevance, change: npt.ArrayLike
                          ) -> tuple[npt.NDArray[np.float32], float]:
    """(dw [num_ws, D] moving every convolution style by `change` exactly, the ToRGB styles' resulting
    change relative to the convolution styles' one), step 3 of the module docstring."""
    synthesis = generator.export_safe()
    layers = synthesis.style_layers()
    change = np.asarray(change, dtype=np.float64)
    wanted: dict[int, np.ndarray] = {}
    for (layer, c), value in zip(relevance.channels, change):
        width = int(layers[layer][0].conv.weight_sq.shape[0])
        wanted.setdefault(int(layer), np.zeros(width))[c] = value
    dw = np.zeros((generator.num_ws, generator.style_dim))
    rgb_change = 0.0
    for index, (layer, entry, rgb) in enumerate(layers):
        if rgb or index not in wanted or not wanted[index].any():
            continue
        mod = layer.conv.modulation
        a = (mod.weight * mod.scale).detach().double().numpy()  # ds = A dw
        dw[entry] += np.linalg.pinv(a) @ wanted[index]
    for layer, entry, rgb in layers:
        if rgb:
            mod = layer.conv.modulation
            rgb_change += float(np.sum(((mod.weight * mod.scale).detach().double().numpy() @ dw[entry]) ** 2))
    total = float(np.sum(change ** 2))
    return dw.astype(np.float32), float(np.sqrt(rgb_change / total)) if total else 0.0


def global_direction(model: ClipModel, generator: LoadedGenerator, relevance: StyleRelevance, target: str,
                     neutral: str, *, beta: float = DEFAULT_BETA, strength: float = 3.0,
                     name: str | None = None) -> Direction:
    """The StyleCLIP global direction for `target` vs `neutral` as a W+ Direction (strength 1 is
    `strength` in StyleCLIP's alpha: that many standard deviations on the most relevant channel)."""
    from stream.edits.text import direction_name, text_embedding

    delta_t = (text_embedding(model, target) - text_embedding(model, neutral)).numpy()
    change = style_change(relevance, delta_t, beta)
    dw, rgb = style_change_to_wplus(generator, relevance, change)
    channels = int(np.count_nonzero(change))
    entries = [k for k in range(dw.shape[0]) if np.any(dw[k])]  # the W+ entries of the moved styles
    return Direction(
        name or direction_name(target), dw, entries, strength,
        f"StyleCLIP global direction: {target!r} vs {neutral!r}, {channels} style channels at beta {beta}",
        {"method": "styleclip-global", "target": target, "neutral": neutral, "beta": beta, "channels": channels,
         "relevance_samples": relevance.samples, "relevance_alpha": relevance.alpha, "rgb_style_change": rgb})
