"""Paste an edited face crop back into its frame: feathered mask, colour match, inverse warp.

Only the frame's bounding region of the warped mask is read and written, and every pixel where the
warped mask is 0 keeps its exact input bytes.

What goes back is a change, frame + mask * warp(change): the frame keeps its own full-resolution detail
and only what the edit changes reaches it, so a small model crop never blurs the face (and a zero change
reproduces the frame exactly). A renderer that replaces the face expresses that as the change
new - crop (stream/pipeline.py).
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.faces.align import invert_affine, transform_points
from stream.types import Affine2x3, Crop, Frame

# The face area of an FFHQ crop, as fractions of its side: measured from dlib landmarks mapped into
# their own FFHQ crops on the shared clips (jaw x 0.22-0.77, brows at y 0.37, chin at y 0.93 on average,
# 0.99 at most), with room above the brows for the forehead.
FACE_CENTRE = (0.5, 0.57)
FACE_HALF_AXES = (0.33, 0.41)


@functools.lru_cache(maxsize=8)
def _face_mask_cached(size: int, feather: float) -> npt.NDArray[np.float32]:
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    # normalised elliptical radius of each pixel centre (continuous coordinates: centre at i + 0.5)
    r = np.hypot(((u + 0.5) / size - FACE_CENTRE[0]) / FACE_HALF_AXES[0],
                 ((v + 0.5) / size - FACE_CENTRE[1]) / FACE_HALF_AXES[1])
    t = np.clip((1.0 - r) / feather, 0.0, 1.0)
    mask = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no visible edge in the ramp
    mask.setflags(write=False)
    return mask


def face_mask(size: int, feather: float = 0.2) -> npt.NDArray[np.float32]:
    """Feathered elliptical face mask [size, size] float32 in [0, 1] for an FFHQ crop.

    1 inside the face, falling smoothly to exactly 0 at the ellipse; `feather` is the width of the ramp
    as a fraction of the ellipse radius. The array is shared and read-only.
    """
    if not 0.0 < feather <= 1.0:
        raise UserError(f"mask feather {feather}: expected a fraction in (0, 1]")
    return _face_mask_cached(int(size), float(feather))


# Colour statistics are global per channel, so they are taken on a small copy of the crops.
_STATS_SIDE = 64


def _masked_stats(image: npt.NDArray[np.float32], weight: npt.NDArray[np.float32]
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    total = max(float(weight.sum()), 1e-6)
    w = weight[..., None].astype(np.float64)
    mean = (image * w).sum(axis=(0, 1)) / total
    std = np.sqrt(((image - mean) ** 2 * w).sum(axis=(0, 1)) / total)
    return mean, std


def colour_transfer(source: Crop, reference: Crop, mask: npt.NDArray[np.float32]
                    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-channel (gain, offset) so that source * gain + offset has reference's mask-weighted mean and std."""
    side = min(_STATS_SIDE, mask.shape[0])
    small = (lambda a: cv2.resize(a, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64))
    weight = small(mask)
    src_mean, src_std = _masked_stats(small(source), weight)
    ref_mean, ref_std = _masked_stats(small(reference), weight)
    gain = ref_std / np.maximum(src_std, 1e-3)
    return gain.astype(np.float32), (ref_mean - src_mean * gain).astype(np.float32)


def mask_bounds(mask: npt.NDArray[np.float32], affine: Affine2x3,
                frame_shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """Frame region (x0, y0, x1, y1), end-exclusive, that the mask's support covers after the warp back."""
    support = (mask > 0).astype(np.uint8)
    if not support.any():
        return None
    u0, v0, w, h = cv2.boundingRect(support)
    u1, v1 = u0 + w - 1, v0 + h - 1
    corners = np.array([[u0 - 1, v0 - 1], [u1 + 1, v0 - 1], [u0 - 1, v1 + 1], [u1 + 1, v1 + 1]],
                       dtype=np.float64)
    pts = transform_points(invert_affine(affine), corners)
    h, w = frame_shape[:2]
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def paste_change(frame: Frame, change: npt.NDArray[np.float32], affine: Affine2x3,
                 mask: npt.NDArray[np.float32]) -> Frame:
    """A copy of `frame` plus `change` (float32 [S, S, 3], crop space, 0..255 units) where `mask` is above 0.

    `affine` is the frame -> crop map the crop was made with. The change is warped back, weighted by the
    warped mask, and added to the frame in one rounding step; pixels where the warped mask is 0 are
    byte-identical to `frame`.
    """
    size = mask.shape[0]
    if change.shape[:2] != (size, size):
        raise UserError(f"change {change.shape} does not match the mask {mask.shape}: make the mask with "
                        "face_mask(crop size)")
    out = frame.copy()
    bounds = mask_bounds(mask, affine, frame.shape)
    if bounds is None:
        return out
    x0, y0, x1, y1 = bounds
    # crop -> region-of-interest map: the inverse affine shifted to the region's origin
    to_roi = invert_affine(affine)
    to_roi[:, 2] -= (x0, y0)
    dsize = (x1 - x0, y1 - y0)
    warped_mask = cv2.warpAffine(mask, to_roi, dsize, flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)[..., None]
    warped = cv2.warpAffine(np.ascontiguousarray(change, np.float32), to_roi, dsize, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    warped *= warped_mask
    # cv2.add with an 8-bit result rounds to nearest and saturates, in one pass; where the warped mask is 0
    # the change is exactly 0, so those pixels come back as their own bytes
    out[y0:y1, x0:x1] = cv2.add(frame[y0:y1, x0:x1].astype(np.float32), warped, dtype=cv2.CV_8U)
    return out
