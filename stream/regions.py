"""The face region an edit is meant to change, as a soft mask in crop space that follows the landmarks.

An edit's change is multiplied by its region's mask before it is pasted back, so whatever a weak
generator draws elsewhere (cheeks, chin, forehead) never reaches the frame. Masks are drawn per face and
per frame from that face's landmarks mapped into its crop (68 dlib points, or the 5 points of a 5-point
detector), grown by a margin and feathered, both in units of the inter-ocular distance so that they scale
with the face. "face" is the whole face (no confinement beyond the paste-back's own face mask).

The mouth region reaches a little below the lower lip, which an opening mouth moves down. It used to reach
half an inter-ocular distance down, over the chin; once the edit's motion moved the person's own pixels
(stream/motion.py), that band only added change on the chin: with a tuned generator on two unseen people
(sp04, lx01; bench/local_edits.py's clips) collateral went 3.85 / 3.67 (0.45) -> 3.18 / 2.80 (0.25) ->
2.31 / 2.18 (0.1), while the inner-lip gap still opened by +0.095 / +0.058 of the eye distance.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

import cv2
import numpy as np
import numpy.typing as npt

from engines.errors import UserError

Region = Literal["mouth", "eyes", "brows", "face"]
REGIONS: tuple[str, ...] = get_args(Region)

# Landmark indices (dlib's 68-point scheme) that outline each part
LANDMARKS_68: dict[str, slice] = {"mouth": slice(48, 68), "eyes": slice(36, 48), "brows": slice(17, 27)}

# Margins and feather widths as fractions of the inter-ocular distance
_MARGIN = {"mouth": 0.22, "eyes": 0.16, "brows": 0.18}
_FEATHER = 0.18
_MOUTH_DROP = 0.1  # how far below the lower lip the mouth region reaches (module docstring)

Mask = npt.NDArray[np.float32]  # [S, S] in [0, 1]


def check_region(region: str, what: str) -> Region:
    if region not in REGIONS:
        raise UserError(f"{what}: unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    return region  # type: ignore[return-value]


def _eye_centres(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if len(points) == 68:
        return np.stack([points[36:42].mean(0), points[42:48].mean(0)])
    return points[:2]


def _outline(region: str, points: npt.NDArray[np.float64], iod: float) -> list[npt.NDArray[np.float64]]:
    """Point sets whose (grown) convex hulls make up the region."""
    if len(points) == 68:
        part = points[LANDMARKS_68[region]]
        if region == "mouth":
            return [np.concatenate([part, part[7:10] + (0.0, _MOUTH_DROP * iod)])]  # 55-57: the lower lip
        if region == "eyes":
            return [points[36:42], points[42:48]]
        return [points[17:22], points[22:27]]
    # 5 points: eyes, nose tip, mouth corners
    eyes, corners = points[:2], points[3:5]
    if region == "mouth":
        down = np.array([0.0, 1.0]) * iod
        return [np.concatenate([corners, corners - 0.25 * down, corners + (0.25 + _MOUTH_DROP) * down])]
    if region == "eyes":
        return [eye + np.array([[-0.15, 0.0], [0.15, 0.0]]) * iod for eye in eyes]
    return [eye + np.array([[-0.25, -0.3], [0.25, -0.3], [0.0, -0.2]]) * iod for eye in eyes]


def region_mask(region: str, landmarks: npt.NDArray[np.floating], size: int) -> Mask:
    """Soft mask [size, size] of `region` for a face whose landmarks ([68, 2] or [5, 2]) are in crop pixels.

    1 inside the grown outline, falling smoothly to exactly 0 within a feather width outside it."""
    check_region(region, "region mask")
    if region == "face":
        return np.ones((size, size), np.float32)
    points = np.asarray(landmarks, np.float64)
    if points.shape not in ((68, 2), (5, 2)):
        raise UserError(f"region mask: landmarks must be [68, 2] or [5, 2], got {list(points.shape)}")
    eyes = _eye_centres(points)
    iod = max(float(np.linalg.norm(eyes[1] - eyes[0])), 1.0)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    offsets = np.stack([np.cos(angles), np.sin(angles)], axis=1) * _MARGIN[region] * iod  # [12, 2]
    hard = np.zeros((size, size), np.float32)
    for part in _outline(region, points, iod):
        grown = (part[:, None, :] + offsets[None]).reshape(-1, 2)
        hull = cv2.convexHull(np.round(grown * 4).astype(np.int32))
        cv2.fillConvexPoly(hard, hull, 1.0, lineType=cv2.LINE_AA, shift=2)
    sigma = _FEATHER * iod / 2
    k = 2 * int(np.ceil(2 * sigma)) + 1  # the kernel ends at 2 sigma: beyond it the mask is exactly 0
    return cv2.GaussianBlur(hard, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)


def union_mask(regions: Iterable[str], landmarks: npt.NDArray[np.floating], size: int) -> Mask:
    """The largest of the regions' masks at each pixel ("face" anywhere among them: all ones)."""
    regions = set(regions)
    if not regions or "face" in regions:
        return np.ones((size, size), np.float32)
    return np.maximum.reduce([region_mask(r, landmarks, size) for r in sorted(regions)])


def concentration(change_energy: npt.NDArray[np.floating], landmarks: npt.NDArray[np.floating],
                  region: str) -> float:
    """Share of a change's energy map [S, S] (e.g. squared pixel change summed over colour) inside the
    region's mask, for faces with these landmarks (crop pixels)."""
    mask = region_mask(region, landmarks, change_energy.shape[0])
    total = float(change_energy.sum())
    return float((change_energy * mask).sum()) / total if total > 0 else 0.0


def infer_region(change_energy: npt.NDArray[np.floating], landmarks: npt.NDArray[np.floating],
                 share: float = 0.5) -> Region:
    """The smallest part ("eyes", "brows", "mouth") that holds at least `share` of a change's energy, else
    "face": for published directions that do not say which region they change."""
    best = [(r, concentration(change_energy, landmarks, r)) for r in ("eyes", "brows", "mouth")]
    inside = [r for r, s in best if s >= share]
    return inside[0] if inside else "face"  # type: ignore[return-value]
