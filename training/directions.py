"""Edit directions for the demo pack: mean differences of encoded codes, contrasted within each clip.

DESIGN.md's probes found that a mean difference over all crops encodes who is in the clip and how it is
lit. Here each training clip contributes its own contrast between its highest- and lowest-scoring
frames (CONTRASTS: which fractions; same person, same light), and the per-clip differences are averaged
(stream.edits.directions.discover_mean_difference with groups). The mask is put where the vector's norm
lies (layers_from_norm), and the direction is localised: its first-order effect on the image's colours
outside the edit's face part (mouth or eyes) is projected out (localise), which removes the colour and
light casts the probes saw while keeping ~90 % of its norm. The vector is the whole within-clip difference between the two groups (vector
strength 1); `default_strength` is the vector strength a user's 1.0 maps to (stream.pipeline multiplies).
"""
from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from engines.nets.encoders import DemoEncoder
from engines.nets.stylegan2 import Generator
from engines.nets.synthesis import synthesize
from stream.edits.attributes import ATTRIBUTE_NAMES, attribute_matrix
from stream.edits.directions import Direction, discover_mean_difference, layers_from_norm
from stream.regions import LANDMARKS_68
from stream.types import Landmarks68
from training.data import Split

log = logging.getLogger(__name__)

EDIT_NAMES: tuple[str, ...] = ("mouth_open", "smile", "eyes_open")
# Which frames of a clip are contrasted, as (lowest, highest) fractions by score. Eyes are open in most
# frames of a talking head and the spread between its top and bottom thirds is landmark noise (an eye
# aspect ratio gap of ~0.03); blinks and squints live in the lowest tenth, so they are contrasted with
# the open half.
CONTRASTS: dict[str, tuple[float, float]] = {"mouth_open": (0.3, 0.3), "smile": (0.3, 0.3), "eyes_open": (0.1, 0.5)}
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
                    low: float = 0.3, high: float = 0.3) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Per clip, the lowest `low` and the highest `high` fraction of its candidate frames by score (2 at least).

    Returns (sample indices, labels: True for the high group, group ids: the clip)."""
    idx, labels, groups = [], [], []
    for clip in np.unique(clip_id[candidates]):
        members = candidates[clip_id[candidates] == clip]
        k_low, k_high = max(2, int(len(members) * low)), max(2, int(len(members) * high))
        if k_low + k_high > len(members):
            continue
        order = members[np.argsort(scores[members], kind="stable")]
        idx += [order[:k_low], order[-k_high:]]
        labels += [np.zeros(k_low, bool), np.ones(k_high, bool)]
        groups += [np.full(k_low + k_high, clip)]
    return np.concatenate(idx), np.concatenate(labels), np.concatenate(groups)


# eyes_open contrasts a clip's blinks (eye aspect ratio below BLINK_RATIO x the clip's median, as the data
# README counts them) with open-eyed frames of the same clip matched on the other expressions and the head
# pose: with the plain lowest-tenth contrast, the low-eyed frames of the nine first clips were mostly smiles
# (a smile narrows the eyes) and the direction learned a smile.
BLINK_RATIO = 0.75
BLINK_MATCHES = 3  # open frames matched to each blink frame
_MATCHED_ON = ("smile", "mouth_open", "yaw", "pitch")


def blink_groups(scores: dict[str, npt.NDArray[np.float64]], clip_id: npt.NDArray[np.int64],
                 candidates: npt.NDArray[np.int64], ratio: float = BLINK_RATIO, matches: int = BLINK_MATCHES
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Per clip with two blink frames or more: its blink frames (low) and, for each, the `matches` open-eyed
    frames (at or above the clip's median) nearest in the other expressions and pose (high; a frame may be
    matched more than once). Same return as contrast_groups."""
    idx, labels, groups = [], [], []
    eyes = scores["eyes_open"]
    for clip in np.unique(clip_id[candidates]):
        members = candidates[clip_id[candidates] == clip]
        median = np.median(eyes[members])
        low, open_ = members[eyes[members] < ratio * median], members[eyes[members] >= median]
        if len(low) < 2 or len(open_) < matches:
            continue
        other = np.stack([scores[name][members] for name in _MATCHED_ON], 1)
        scale = other.std(0) + 1e-9  # each confound in units of its spread within the clip
        features = {int(i): row / scale for i, row in zip(members, other)}
        high = np.concatenate([open_[np.argsort([np.linalg.norm(features[int(j)] - features[int(i)]) for j in open_],
                                                kind="stable")[:matches]] for i in low])
        idx += [low, high]
        labels += [np.zeros(len(low), bool), np.ones(len(high), bool)]
        groups += [np.full(len(low) + len(high), clip)]
    if not idx:
        raise ValueError("no clip has two blink frames; eyes_open cannot be contrasted")
    return np.concatenate(idx), np.concatenate(labels), np.concatenate(groups)


# The face region each edit should change (stream/regions.py outlines it from the landmarks)
EDIT_REGIONS = {"mouth_open": "mouth", "smile": "mouth", "eyes_open": "eyes"}


def part_box(landmarks: npt.NDArray[np.float32], edit: str, crop_size: int, margin: float = 0.06) -> tuple[float, ...]:
    """Box (x0, y0, x1, y1), fractions of the crop, around the edit's face part over all given faces."""
    pts = landmarks[:, LANDMARKS_68[EDIT_REGIONS[edit]]].reshape(-1, 2) / crop_size
    lo, hi = np.percentile(pts, 2, axis=0) - margin, np.percentile(pts, 98, axis=0) + margin
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def outside_jacobian(generator: Generator, codes: npt.NDArray[np.float32], box: tuple[float, ...],
                     pool: int) -> npt.NDArray[np.float64]:
    """Mean Jacobian [K, num_ws * D] of the image's colours averaged over the cells of a pool x pool grid
    that lie outside `box`, with respect to the code, over codes [B, num_ws, D]."""
    w = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32)).requires_grad_()
    cells = F.adaptive_avg_pool2d(synthesize(generator, w), pool).sum(0)  # [3, pool, pool]
    edges = np.arange(pool + 1) / pool
    rows = []
    for i in range(pool):
        for j in range(pool):
            inside = edges[j] < box[2] and edges[j + 1] > box[0] and edges[i] < box[3] and edges[i + 1] > box[1]
            if not inside:
                rows += [torch.autograd.grad(cells[c, i, j], w, retain_graph=True)[0].sum(0).flatten() / len(codes)
                         for c in range(3)]
    return torch.stack(rows).double().numpy()


def localise(vector: npt.NDArray[np.float32], layers: list[int], jacobian: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The vector with its masked rows moved off (to first order) every change outside the edit's part.

    A mean difference of codes also carries whatever else differs between the two groups: colour, light,
    head pose (the probes' colour casts). An expression changes the mouth or the eyes, so the component of
    the direction that changes the image's colours away from that part is projected out."""
    rows, dim = vector.shape
    mask = np.zeros((rows, dim), bool)
    mask[layers] = True
    basis, _ = np.linalg.qr(jacobian[:, mask.reshape(-1)].T)  # [masked, K] orthonormal
    part = vector[layers].reshape(-1).astype(np.float64)
    out = vector.copy()
    out[layers] = (part - basis @ (basis.T @ part)).reshape(len(layers), dim).astype(np.float32)
    return out


def discover_directions(codes: npt.NDArray[np.float32], landmarks: npt.NDArray[np.float32] | Landmarks68,
                        split: Split, names: tuple[str, ...] = EDIT_NAMES,
                        contrasts: dict[str, tuple[float, float]] | None = None,
                        norm_fraction: float = 0.8, default_strength: float = 1.0,
                        generator: Generator | None = None, crop_size: int = 256, pool: int = 8,
                        blinks: bool = True) -> list[Direction]:
    """One Direction per attribute from the training frames' codes [N, num_ws, D] and landmarks [N, 68, 2].

    With `generator`, each direction is localised to its face part (localise; pool 0: not). eyes_open
    contrasts blinks with matched open frames (blink_groups; blinks=False: CONTRASTS like the others)."""
    scores = attribute_scores(landmarks)
    sample = codes[split.train[:: max(1, len(split.train) // 16)]]
    jacobians: dict[tuple[float, ...], npt.NDArray[np.float64]] = {}
    out = []
    for name in names:
        low, high = (contrasts or CONTRASTS).get(name, (0.3, 0.3))
        found = None
        if name == "eyes_open" and blinks:
            try:
                found = blink_groups(scores, split.clip_id, split.train)
                contrast: list[float] | str = (f"blinks (< {BLINK_RATIO} x clip median) vs {BLINK_MATCHES} "
                                               "matched open frames each")
            except ValueError:
                log.warning("eyes_open: no training clip has two blink frames; contrasting its lowest tenth instead")
        if found is None:
            found = contrast_groups(scores[name], split.clip_id, split.train, low, high)
            contrast = [low, high]
        idx, labels, groups = found
        vector = discover_mean_difference(codes[idx], labels, groups)
        layers = layers_from_norm(vector, norm_fraction)
        box = part_box(landmarks[split.train], name, crop_size)
        if generator is not None and pool:
            if box not in jacobians:
                jacobians[box] = outside_jacobian(generator, sample, box, pool)
            before = float(np.linalg.norm(vector[layers]))
            vector = localise(vector, layers, jacobians[box])
            log.info("%s: localising to %s kept %.0f%% of the masked norm", name, np.round(box, 2).tolist(),
                     100 * np.linalg.norm(vector[layers]) / before)
        gap = float(np.mean([scores[name][idx[(groups == g) & labels]].mean()
                             - scores[name][idx[(groups == g) & ~labels]].mean() for g in np.unique(groups)]))
        energy = (vector.astype(np.float64) ** 2).sum(1)
        log.info("%s: layers %s hold %.0f%% of the norm; per-layer norm %s", name, layers,
                 100 * energy[layers].sum() / energy.sum(), np.round(np.sqrt(energy), 2).tolist())
        out.append(Direction(name, vector, layers, default_strength, _DESCRIPTIONS.get(name, ""),
                             {"method": "within-clip mean difference", "region": EDIT_REGIONS[name], "contrast": contrast, "clips": len(np.unique(groups)),
                              "samples": len(idx), "score_gap": round(gap, 4), "localised_pool": pool if generator is not None else 0, "part_box": [round(v, 3) for v in box],
                              "layer_norm": [round(float(v), 4) for v in np.sqrt(energy)]}))
    return out
