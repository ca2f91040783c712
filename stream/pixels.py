"""The one place for the pixel convention between frames and networks.

Frames and crops are uint8 RGB, [H, W, 3]. Networks take and give float32 images [N, 3, S, S] in [-1, 1],
so uint8 value v is (v / 127.5 - 1): 0 -> -1, 255 -> +1. A *change* (an edit's difference of two
network images) is carried in crop pixels as float32 [N, S, S, 3] in 0..255 units, never clipped or
rounded until it is added to a frame.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

Images = npt.NDArray[np.float32]       # [N, 3, S, S] in [-1, 1]
Pixels = npt.NDArray[np.float32]       # [N, S, S, 3] in 0..255 units (values or changes)

SCALE = 127.5  # one unit of a [-1, 1] image in uint8 levels

# ITU-R BT.601 luma weights: the brightness part of an RGB change
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_images(crops: Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8], size: int | None = None) -> Images:
    """uint8 RGB crops [N, S, S, 3] -> [N, 3, size, size] float32 in [-1, 1] (area-resized when sizes differ)."""
    if size is not None:
        crops = [c if c.shape[0] == size else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
                 for c in crops]
    batch = np.stack(crops).astype(np.float32) / SCALE - 1.0
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def to_pixels(images: Images, size: int | None = None) -> Pixels:
    """[N, 3, s, s] in [-1, 1] units -> [N, size, size, 3] float32 in 0..255 *units* (no offset: a change
    stays a change; add SCALE for absolute values). Bilinear resize when size differs."""
    pixels = np.asarray(images, np.float32).transpose(0, 2, 3, 1) * SCALE
    if size is None or pixels.shape[1] == size:
        return np.ascontiguousarray(pixels)
    return np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_LINEAR) for p in pixels])


def to_uint8(pixels: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Absolute pixel values (0..255 float) -> uint8, rounded to nearest and saturated."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def images_to_uint8(images: Images, size: int | None = None) -> npt.NDArray[np.uint8]:
    """[N, 3, s, s] in [-1, 1] -> uint8 RGB [N, size, size, 3]."""
    return to_uint8(to_pixels(images, size) + SCALE)


def luma_only(change: Pixels) -> Pixels:
    """An RGB change's brightness, the same on all three channels (no hue or saturation change)."""
    return np.repeat((change @ LUMA)[..., None], 3, axis=-1)
