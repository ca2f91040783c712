"""Direction discovery on a generator: sample faces, score them from dlib landmarks, contrast the extremes.

z -> mapping (with truncation) -> W+ -> synthesis -> image -> dlib face and 68 landmarks -> the five
landmark scores. The faces scoring in the top `fraction` of an attribute are "with", the bottom `fraction`
"without" (the middle is ambiguous and left out), and the direction is their mean code difference. With a
control attribute (say yaw) the samples are first split into quantile bins of it and the contrast is taken
within each bin, so the direction does not also turn the head when smiling faces happen to look sideways.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.edits.attributes import ATTRIBUTE_NAMES, landmark_attributes
from stream.edits.directions import Direction, discover_mean_difference, layer_mask, layers_from_norm
from stream.pixels import images_to_uint8

log = logging.getLogger(__name__)

# dlib's HOG detector misses faces under ~80 px: small generators' images are enlarged to this first
DETECT_SIZE = 256


@dataclass
class AttributeSamples:
    """Generated faces: their codes [N, num_ws, D] and landmark scores [N, 5] (ATTRIBUTE_NAMES order);
    only samples where dlib found a face are kept."""

    codes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float64]
    tried: int


def _to_uint8(images: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8."""
    return images_to_uint8(images)


def sample_generator(generator: Any, count: int, truncation: float = 0.7, batch: int = 8, seed: int = 0,
                     detector: Any = None, progress: Callable[[int], None] | None = None) -> AttributeSamples:
    """Draw `count` faces from a generator (`mapping(z)`, `synthesis(wplus)`, `num_ws`, `style_dim`, e.g.
    engines.LoadedGenerator) and score each. progress: called with each batch's size."""
    import cv2

    if detector is None:
        from stream.faces.detect import DlibDetector

        detector = DlibDetector()
    rng = np.random.default_rng(seed)
    centre = _truncation_centre(generator, rng) if truncation != 1.0 else None
    codes, scores = [], []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        z = rng.standard_normal((n, generator.style_dim)).astype(np.float32)
        w = np.asarray(generator.mapping(z), dtype=np.float32)
        if centre is not None:
            w = centre + truncation * (w - centre)
        wplus = np.repeat(w[:, None], generator.num_ws, axis=1)
        images = _to_uint8(np.asarray(generator.synthesis(wplus), dtype=np.float32))
        for code, image in zip(wplus, images):
            if image.shape[0] < DETECT_SIZE:
                image = cv2.resize(image, (DETECT_SIZE, DETECT_SIZE), interpolation=cv2.INTER_CUBIC)
            faces = detector.detect(image)
            if faces:
                s = landmark_attributes(faces[0].landmarks)
                codes.append(code)
                scores.append([s[name] for name in ATTRIBUTE_NAMES])
        if progress is not None:
            progress(n)
    if not codes:
        raise UserError(f"dlib found no face in any of {count} generated images: the generator does not make "
                        "recognisable faces (untrained, or not a face model)")
    log.info("faces found in %d of %d samples", len(codes), count)
    return AttributeSamples(np.stack(codes), np.array(scores, dtype=np.float64), count)


def _truncation_centre(generator: Any, rng: np.random.Generator, count: int = 2048) -> npt.NDArray[np.float32]:
    """The generator's latent_avg [D], or the mean of `count` mapped z when its checkpoint has none."""
    avg = getattr(generator, "latent_avg", None)
    if avg is not None:
        return np.asarray(avg.detach().cpu().numpy() if hasattr(avg, "detach") else avg,
                          dtype=np.float32).reshape(-1, generator.style_dim).mean(0)
    z = rng.standard_normal((count, generator.style_dim)).astype(np.float32)
    return np.asarray(generator.mapping(z), dtype=np.float32).mean(0)


def quantile_bins(values: npt.ArrayLike, bins: int) -> npt.NDArray[np.int64]:
    """Bin index 0..bins-1 of each value by the values' own quantiles (equal-count bins)."""
    v = np.asarray(values, dtype=np.float64)
    if bins < 1:
        raise UserError(f"bins {bins} must be >= 1")
    edges = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, v, side="right").astype(np.int64)


def contrast_extremes(values: npt.ArrayLike, fraction: float, groups: npt.ArrayLike | None = None
                      ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(labels, keep): the top `fraction` of values are labelled True, the bottom `fraction` False, the rest
    not kept; per group when `groups` is given, so every group contributes both sides."""
    if not 0.0 < fraction <= 0.5:
        raise UserError(f"fraction {fraction} must be in (0, 0.5]")
    v = np.asarray(values, dtype=np.float64)
    g = np.zeros(len(v), np.int64) if groups is None else np.asarray(groups)
    labels = np.zeros(len(v), bool)
    keep = np.zeros(len(v), bool)
    for group in np.unique(g):
        member = np.flatnonzero(g == group)
        order = member[np.argsort(v[member], kind="stable")]
        k = max(1, int(np.rint(fraction * len(order)))) if len(order) >= 2 else 0
        if k == 0:
            continue
        labels[order[-k:]] = True
        keep[order[:k]] = keep[order[-k:]] = True
    return labels, keep


def discover_direction(samples: AttributeSamples, attribute: str, fraction: float = 0.3,
                       control: Sequence[str] = (), bins: int = 3, layers: str | Sequence[int] = "auto",
                       name: str | None = None) -> Direction:
    """The mean-difference direction of `attribute` over scored samples, contrasted within quantile bins
    of each `control` attribute; layers "auto" puts the mask where the direction's norm lies."""
    if attribute not in ATTRIBUTE_NAMES:
        raise UserError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTE_NAMES)}")
    unknown = [c for c in control if c not in ATTRIBUTE_NAMES or c == attribute]
    if unknown:
        raise UserError(f"control attribute {unknown[0]!r} must be one of {', '.join(ATTRIBUTE_NAMES)}, "
                        f"other than {attribute!r}")
    groups = np.zeros(len(samples.codes), np.int64)
    for c in control:
        groups = groups * bins + quantile_bins(samples.scores[:, ATTRIBUTE_NAMES.index(c)], bins)
    values = samples.scores[:, ATTRIBUTE_NAMES.index(attribute)]
    labels, keep = contrast_extremes(values, fraction, groups)
    vector = discover_mean_difference(samples.codes[keep], labels[keep], groups[keep] if control else None)
    num_ws = vector.shape[0]
    chosen = layers_from_norm(vector, 0.8) if layers == "auto" else layer_mask(layers, num_ws)
    contrast = f"top vs bottom {fraction:.0%} of {attribute}"
    if control:
        contrast += f" within {bins}-quantile bins of {', '.join(control)}"
    return Direction(name or attribute, vector, chosen, 1.0,
                     f"mean difference over {len(samples.codes)} generated faces: {contrast}",
                     {"attribute": attribute, "samples": len(samples.codes), "control": list(control)})
