"""FFHQ alignment as one affine warp: the oriented square of NVlabs' ffhq-dataset `align_images`.

FFHQ (and e4e / pSp after it) crops the square built from the eye centres and mouth corners of the
68 iBUG landmarks, then shrinks, pads and transforms it with PIL in several steps. Here that square
maps straight to the output size with one `cv2.warpAffine`, and the inverse comes with it for paste-back.
Coordinates follow OpenCV: pixel centres at integers. The crop's pixel (0, 0) covers the quad's corner
region, as in FFHQ's `transform(QUAD, quad + 0.5)`.
"""
from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.types import Affine2x3, Crop, Frame, Landmarks5, Landmarks68

# Border handling for the parts of the square outside the frame. FFHQ pads with reflection (then blurs
# the padding); reflection keeps faces near the border looking natural to an encoder.
BORDER_MODE = cv2.BORDER_REFLECT

# The 5 points (insightface order: left eye, right eye, nose tip, left and right mouth corner, "left"
# meaning smaller x in the image) in the FFHQ crop, as fractions of the crop side. Fitted by
# bench/faces.py --fit-template: on every 5th frame of the 9 clips in shared/data/faces, dlib's 68
# landmarks were mapped into their own FFHQ crop, the 5 points taken from them (eye centres = mean of
# each eye's 6 points, nose tip = point 30, mouth corners = points 48 and 54) and averaged (n=426 faces; per-point std 0.002-0.025, the nose most).
# A similarity fit of a face's 5 points to this template reproduces the 68-point square to within a
# few percent of the crop side (tests/test_faces_align.py measures it).
FFHQ_TEMPLATE_5 = np.array([
    [0.3789, 0.4738],
    [0.6214, 0.4721],
    [0.5046, 0.6088],
    [0.3996, 0.7428],
    [0.5973, 0.7434],
], dtype=np.float64)


def ffhq_square(landmarks: Landmarks68) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                                 npt.NDArray[np.float64]]:
    """Centre c and half-side vectors x (rightwards), y (downwards) of FFHQ's square, frame pixels."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # the recipe verbatim: the x axis leans between the eye line and the normal to the eye-mouth line
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y


def _affine_from_square(c: npt.NDArray[np.float64], x: npt.NDArray[np.float64], y: npt.NDArray[np.float64],
                        size: int) -> Affine2x3:
    # crop pixel (u, v) -> frame point c + x*(2(u+0.5)/S - 1) + y*(2(v+0.5)/S - 1); invert that map
    crop_to_frame = np.empty((2, 3), dtype=np.float64)
    crop_to_frame[:, 0] = 2.0 * x / size
    crop_to_frame[:, 1] = 2.0 * y / size
    crop_to_frame[:, 2] = c + (x + y) * (1.0 / size - 1.0)
    return invert_affine(crop_to_frame)


def landmarks5_from_68(landmarks: Landmarks68) -> Landmarks5:
    """The 5 insightface-order points derived from 68 (eye centres, nose tip, mouth corners)."""
    lm = np.asarray(landmarks, dtype=np.float32)
    return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[30], lm[48], lm[54]]).astype(np.float32)


def similarity_fit(src: npt.NDArray[np.floating], dst: npt.NDArray[np.floating]) -> Affine2x3:
    """Least-squares similarity (rotation, uniform scale, translation) taking src points to dst (Umeyama)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_c.var(axis=0).sum()
    affine = np.empty((2, 3), dtype=np.float64)
    affine[:, :2] = scale * rot
    affine[:, 2] = dst_mean - affine[:, :2] @ src_mean
    return affine


def ffhq_affine(landmarks: Landmarks68 | Landmarks5, size: int) -> Affine2x3:
    """Affine [2, 3] taking frame pixels to the FFHQ crop of side `size` (68 points: exact recipe;
    5 points: similarity fit to FFHQ_TEMPLATE_5)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        return _affine_from_square(*ffhq_square(lm), size)
    if lm.shape == (5, 2):
        # template fractions are of the crop side in FFHQ's continuous coordinates (pixel i spans [i, i+1])
        return similarity_fit(lm, FFHQ_TEMPLATE_5 * size - 0.5)
    raise UserError(f"landmarks of shape {lm.shape}: expected [68, 2] (dlib) or [5, 2] (insightface)")


def invert_affine(affine: Affine2x3) -> Affine2x3:
    """The inverse map of a [2, 3] affine (crop -> frame for an FFHQ affine)."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def transform_points(affine: Affine2x3, points: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Apply a [2, 3] affine to points [N, 2]."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ affine[:, :2].T + affine[:, 2]


def warp_to_crop(frame: Frame, affine: Affine2x3, size: int, border: int = BORDER_MODE) -> Crop:
    """The aligned crop [size, size, 3]: bilinear, one warp, borders per `border` (reflect by default)."""
    return cv2.warpAffine(frame, np.asarray(affine, dtype=np.float64), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=border)
