"""FFHQ alignment: the recipe's geometry, the inverse, the 5-point template, frames of any shape."""
from __future__ import annotations

import numpy as np
import pytest

from engines.errors import UserError
from stream.faces.align import (
    FFHQ_TEMPLATE_5,
    ffhq_affine,
    ffhq_square,
    invert_affine,
    landmarks5_from_68,
    transform_points,
    warp_to_crop,
)
from tests.test_faces_detect import clip_frames


def synthetic_68(centre=(300.0, 200.0), eye_dist=60.0, angle=0.0) -> np.ndarray:
    """68 points with FFHQ's (eyes 36-47, mouth corners 48, 54) and the nose tip (30) placed, rest at the centre."""
    lm = np.tile(np.array(centre, dtype=np.float64), (68, 1))
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    offsets = {range(36, 42): (-eye_dist / 2, 0.0), range(42, 48): (eye_dist / 2, 0.0)}
    for idx, off in offsets.items():
        for i in idx:
            lm[i] = centre + rot @ np.array(off)
    lm[48] = centre + rot @ np.array([-eye_dist * 0.4, eye_dist * 1.1])
    lm[54] = centre + rot @ np.array([eye_dist * 0.4, eye_dist * 1.1])
    lm[30] = centre + rot @ np.array([0.0, eye_dist * 0.6])  # nose tip, about halfway down to the mouth
    return lm.astype(np.float32)


def test_square_follows_the_recipe():
    lm = synthetic_68(eye_dist=60.0)
    c, x, y = ffhq_square(lm)
    # upright face: eye-to-mouth 66 px, so the side is max(2*60, 1.8*66) = 120 px wide (x is a half side)
    assert np.allclose(x, [120.0, 0.0]) and np.allclose(y, [0.0, 120.0])
    assert np.allclose(c, [300.0, 200.0 + 66.0 * 0.1])


def test_affine_places_eyes_and_inverse_round_trips():
    lm = synthetic_68(angle=0.3)
    a = ffhq_affine(lm, 256)
    eyes = transform_points(a, [lm[36], lm[42]])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-4  # eye line horizontal in the crop
    assert np.allclose((eyes[0, 0] + eyes[1, 0] + 1) / 2 / 256, 0.5)  # centred, in continuous coordinates
    back = transform_points(invert_affine(a), eyes)
    assert np.allclose(back, [lm[36], lm[42]], atol=1e-4)


def test_five_point_template_matches_the_68_point_square_on_synthetic_faces():
    lm = synthetic_68(angle=-0.2)
    five = landmarks5_from_68(lm)
    a68, a5 = ffhq_affine(lm, 1), ffhq_affine(five, 1)
    corners = transform_points(invert_affine(a68), [[0, 0], [1, 1]])
    assert np.abs(transform_points(a5, corners) - transform_points(a68, corners)).max() < 0.06
    assert FFHQ_TEMPLATE_5.shape == (5, 2)


@pytest.mark.parametrize("shape", [(1280, 720, 3), (720, 1280, 3), (64, 64, 3)])
def test_warp_shapes_and_border_reflection(shape):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, size=shape, dtype=np.uint8)
    # a face half outside the top-left corner: reflection fills the crop, no black wedge
    lm = synthetic_68(centre=(5.0, 5.0), eye_dist=min(shape[:2]) / 8)
    crop = warp_to_crop(frame, ffhq_affine(lm, 128), 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    assert (crop.reshape(-1, 3).max(axis=1) > 0).mean() > 0.95


def test_bad_landmark_shape_is_a_user_error():
    with pytest.raises(UserError, match=r"\[68, 2\]"):
        ffhq_affine(np.zeros((10, 2), np.float32), 256)


@pytest.mark.slow
def test_five_point_template_reproduces_the_68_point_square_on_clips():
    from stream.faces.detect import DlibDetector

    detector = DlibDetector()
    errors = []
    for clip in ["d3", "d12", "s18", "d13"]:
        for frame in clip_frames(clip, every=25):
            for face in detector.detect(frame)[:1]:
                a68 = ffhq_affine(face.landmarks, 1)
                a5 = ffhq_affine(landmarks5_from_68(face.landmarks), 1)
                corners = transform_points(invert_affine(a68), [[0, 0], [0, 1], [1, 1], [1, 0]])
                errors.append(np.abs(transform_points(a5, corners) - [[0, 0], [0, 1], [1, 1], [1, 0]]).max())
    errors = np.array(errors)
    assert len(errors) > 20
    # corner error as a fraction of the crop side
    assert errors.mean() < 0.03 and errors.max() < 0.08, (errors.mean(), errors.max())
