"""Directions from text: CLIP in place of the attribute classifier of the mean-difference discovery.

A prompt's embedding is the mean of its unit text embeddings over a few templates ("a photo of {}.",
...), renormalised: the usual CLIP prompt ensembling. A rendered face scores
`cos(image, target) - cos(image, neutral)`: how much more it looks like the target text than like the
neutral one, so what both texts share (a face, a photo) cancels. The codes (generator samples, and/or
W+ codes of inverted real faces) are split by that score: the top `fraction` against the bottom
`fraction` (within groups when given, e.g. one group per clip or identity), the direction is the
difference of the two groups' mean codes, and its mask is the layers holding most of its norm.

What is verified here and what is not: the computation (templates, scores, grouping, mask) runs on
networks with real shapes and random weights; whether a prompt finds the attribute depends on real
CLIP and generator weights, which this machine does not have (README, "Text edits").
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.edits.directions import Direction, discover_mean_difference, layer_mask, layers_from_norm

if TYPE_CHECKING:
    from torch import Tensor

    from engines.nets.clip import ClipModel

log = logging.getLogger(__name__)

# A short face-oriented subset of the usual CLIP prompt templates; "{}" is the user's text.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}", "a photo of {}.", "a close-up photo of {}.", "a cropped photo of {}.", "a portrait of {}.",
    "a good photo of {}.", "a bright photo of {}.", "a photo of the face of {}.",
)


def direction_name(text: str) -> str:
    """An edit name from a prompt: 'a smiling face' -> 'smiling_face' (leading articles dropped)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    while len(words) > 1 and words[0] in ("a", "an", "the"):
        words = words[1:]
    name = "_".join(words)[:40].strip("_")
    if not name:
        raise UserError(f"prompt {text!r}: give words to name the direction (or --name)")
    return name if name[0].isalpha() else f"text_{name}"


def text_embedding(model: ClipModel, text: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
    """The unit embedding [D] of `text`: its unit embeddings over `templates`, averaged, renormalised."""
    import torch
    from torch.nn import functional as F

    if not text.strip():
        raise UserError("an empty prompt; describe the target (and the neutral) face in words")
    prompts = [template.format(text) for template in templates]
    with torch.inference_mode():
        features = F.normalize(model.encode_text(model.tokenize(prompts)), dim=-1)
    return F.normalize(features.mean(0), dim=0)


def clip_scores(model: ClipModel, render: Callable[[npt.NDArray[np.float32]], Any], codes: npt.ArrayLike,
                target: str, neutral: str, *, templates: Sequence[str] = DEFAULT_TEMPLATES, batch: int = 8,
                progress: Callable[[int], None] | None = None) -> npt.NDArray[np.float64]:
    """cos(image, target) - cos(image, neutral) for each code [N, num_ws, D], rendered by `render`
    (W+ -> images [N, 3, H, W] in [-1, 1], e.g. LoadedGenerator.synthesis)."""
    import torch
    from torch.nn import functional as F

    difference = text_embedding(model, target, templates) - text_embedding(model, neutral, templates)
    codes = np.asarray(codes, dtype=np.float32)
    scores = []
    for start in range(0, len(codes), batch):
        images = torch.as_tensor(np.asarray(render(codes[start:start + batch]), dtype=np.float32))
        with torch.inference_mode():
            features = F.normalize(model.encode_image(model.preprocess_generated(images)), dim=-1)
        scores.append((features @ difference).double().numpy())
        if progress is not None:
            progress(len(images))
    return np.concatenate(scores) if scores else np.zeros(0)


def split_by_score(scores: npt.ArrayLike, fraction: float, groups: npt.ArrayLike | None = None
                   ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(labels, keep): the top `fraction` of scores (within each group) True, the bottom `fraction` False,
    the middle left out."""
    from stream.edits.discover import contrast_extremes

    return contrast_extremes(scores, fraction, groups)


def text_direction(codes: npt.ArrayLike, scores: npt.ArrayLike, target: str, neutral: str, *,
                   fraction: float = 0.3, groups: npt.ArrayLike | None = None, layers: str | Sequence[int] = "auto",
                   name: str | None = None, source: str = "codes") -> Direction:
    """Mean code of the top-scoring faces minus that of the bottom-scoring ones, masked to its layers."""
    codes = np.asarray(codes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    if codes.ndim != 3 or len(codes) != len(scores):
        raise UserError(f"{len(scores)} scores for codes of shape {list(codes.shape)}; expected [N, num_ws, D]")
    if len(codes) < 4:
        raise UserError(f"{len(codes)} faces: a text direction needs at least 4 to contrast (use --samples)")
    labels, keep = split_by_score(scores, fraction, groups)
    vector = discover_mean_difference(codes[keep], labels[keep], None if groups is None else np.asarray(groups)[keep])
    chosen = layers_from_norm(vector, 0.8) if layers == "auto" else layer_mask(layers, vector.shape[0])
    spread = float(scores[labels & keep].mean() - scores[~labels & keep].mean())
    return Direction(
        name or direction_name(target), vector, chosen, 1.0,
        f"CLIP mean difference: {target!r} vs {neutral!r}, top vs bottom {fraction:.0%} of {len(codes)} {source}",
        {"method": "clip-mean-difference", "target": target, "neutral": neutral, "fraction": fraction,
         "faces": len(codes), "score_spread": spread, "grouped": groups is not None})


def sample_codes(generator: Any, count: int, truncation: float = 0.7, seed: int = 0) -> npt.NDArray[np.float32]:
    """`count` W+ codes [N, num_ws, D] of a generator's samples (mapping, truncation towards its average)."""
    from stream.edits.discover import _truncation_centre

    if count < 1:
        raise UserError(f"--samples {count}: need at least one sample")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((count, generator.style_dim)).astype(np.float32)
    w = np.asarray(generator.mapping(z), dtype=np.float32)
    if truncation != 1.0:
        centre = _truncation_centre(generator, rng)
        w = centre + truncation * (w - centre)
    return np.repeat(w[:, None], generator.num_ws, axis=1)
