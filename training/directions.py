"""Edit directions for the demo pack: mean differences of encoded codes, contrasted within each clip.

DESIGN.md's probes found that a mean difference over all crops encodes who is in the clip and how it is
lit. Here each training clip contributes its own contrast between its `frac` highest- and lowest-scoring
frames (equal counts, same person, same light), and the per-clip differences are averaged
(stream.edits.directions.discover_mean_difference with groups). The mask is put where the vector's norm
lies (layers_from_norm). The vector is the whole within-clip difference between the two groups (vector
strength 1); `default_strength` is the vector strength a user's 1.0 maps to (stream.pipeline multiplies).
"""
from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from engines.nets.encoders import DemoEncoder
from stream.edits.attributes import ATTRIBUTE_NAMES, attribute_matrix
from stream.edits.directions import Direction, discover_mean_difference, layers_from_norm
from stream.types import Landmarks68
from training.data import Split

log = logging.getLogger(__name__)

EDIT_NAMES: tuple[str, ...] = ("mouth_open", "smile", "eyes_open")
_DESCRIPTIONS = {
    "mouth_open": "opens the mouth (inner-lip gap), found within each training clip",
    "smile": "widens the mouth and lifts its corners (landmark smile score), found within each training clip",
    "eyes_open": "opens the eyes (eye aspect ratio), found within each training clip",
}


@torch.no_grad()
def encode_all(encoder: DemoEncoder, images: torch.Tensor, batch: int = 64) -> npt.NDArray[np.float32]:
    """W+ codes [N, num_ws, D] of images [N, 3, S, S] in [-1, 1]."""
    encoder.eval()
    return torch.cat([encoder(images[i:i + batch]) for i in range(0, len(images), batch)]).numpy()


def attribute_scores(landmarks: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float64]]:
    """Landmark attribute scores per face: name -> [N] (stream.edits.attributes)."""
    table = attribute_matrix(landmarks)
    return {name: table[:, k] for k, name in enumerate(ATTRIBUTE_NAMES)}


def contrast_groups(scores: npt.NDArray[np.float64], clip_id: npt.NDArray[np.int64], candidates: npt.NDArray[np.int64],
                    frac: float = 0.3) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Per clip, the lowest and highest `frac` of its candidate frames by score (equal counts).

    Returns (sample indices, labels: True for the high group, group ids: the clip)."""
    idx, labels, groups = [], [], []
    for clip in np.unique(clip_id[candidates]):
        members = candidates[clip_id[candidates] == clip]
        k = int(len(members) * frac)
        if k < 2:
            continue
        order = members[np.argsort(scores[members], kind="stable")]
        idx += [order[:k], order[-k:]]
        labels += [np.zeros(k, bool), np.ones(k, bool)]
        groups += [np.full(2 * k, clip)]
    return np.concatenate(idx), np.concatenate(labels), np.concatenate(groups)


def discover_directions(codes: npt.NDArray[np.float32], landmarks: npt.NDArray[np.float32] | Landmarks68,
                        split: Split, names: tuple[str, ...] = EDIT_NAMES, frac: float = 0.3,
                        norm_fraction: float = 0.8, default_strength: float = 1.0) -> list[Direction]:
    """One Direction per attribute from the training frames' codes [N, num_ws, D] and landmarks [N, 68, 2]."""
    scores = attribute_scores(landmarks)
    out = []
    for name in names:
        idx, labels, groups = contrast_groups(scores[name], split.clip_id, split.train, frac)
        vector = discover_mean_difference(codes[idx], labels, groups)
        layers = layers_from_norm(vector, norm_fraction)
        gap = float(np.mean([scores[name][idx[(groups == g) & labels]].mean()
                             - scores[name][idx[(groups == g) & ~labels]].mean() for g in np.unique(groups)]))
        energy = (vector.astype(np.float64) ** 2).sum(1)
        log.info("%s: layers %s hold %.0f%% of the norm; per-layer norm %s", name, layers,
                 100 * energy[layers].sum() / energy.sum(), np.round(np.sqrt(energy), 2).tolist())
        out.append(Direction(name, vector, layers, default_strength, _DESCRIPTIONS.get(name, ""),
                             {"method": "within-clip mean difference", "frac": frac, "clips": len(np.unique(groups)),
                              "samples": int(len(idx)), "score_gap": round(gap, 4),
                              "layer_norm": [round(float(v), 4) for v in np.sqrt(energy)]}))
    return out
