"""stream/motion.py: the motion a generator draws moves the person's own pixels."""
from __future__ import annotations

import cv2
import numpy as np

from stream.motion import edit_flow, warp

SIZE = 128


def blurred_face(bar_row: int, texture_seed: int | None = None) -> np.ndarray:
    """A grey 'face' with a dark horizontal 'mouth' bar at `bar_row`; with a seed, fine texture on top
    (the detail a person's crop has and a generator's rendering lacks)."""
    image = np.full((SIZE, SIZE, 3), 170.0, np.float32)
    cv2.ellipse(image, (SIZE // 2, bar_row), (24, 5), 0, 0, 360, (60.0, 40.0, 40.0), -1)
    image = cv2.GaussianBlur(image, (0, 0), 2.0)
    if texture_seed is not None:
        image += np.random.default_rng(texture_seed).normal(0, 6, image.shape).astype(np.float32)
    return image


def row_of_darkest(image: np.ndarray) -> int:
    return int(np.argmin(image[:, SIZE // 2 - 10:SIZE // 2 + 10].mean(axis=(1, 2))))


def test_flow_follows_the_generators_motion() -> None:
    before, after = blurred_face(80), blurred_face(86)  # the generator moves the mouth 6 px down
    flow = edit_flow(before, after)
    assert -7.5 < flow[86, SIZE // 2, 1] < -3.0  # after(p) is fetched from higher up in before
    assert abs(flow[86, SIZE // 2, 0]) < 1.0
    assert abs(flow[10, 10]).max() < 1.0  # nothing moved far from the mouth


def test_the_persons_own_pixels_travel_with_the_motion() -> None:
    """The crop's mouth (with its own texture) moves where the generator's did; its texture comes along."""
    before, after = blurred_face(80), blurred_face(86)
    crop = blurred_face(80, texture_seed=1)
    moved = warp(crop, edit_flow(before, after))
    assert row_of_darkest(crop) in range(78, 83)
    assert row_of_darkest(moved) in range(83, 89)
    # detail is carried, not painted over: the moved crop is far closer to the crop shifted by 6 px than the
    # generator's own, texture-free rendering is
    shifted = np.roll(crop, 6, axis=0)
    mouth = (slice(78, 94), slice(48, 80))  # where the flow is the full 6 px
    assert np.abs(moved[mouth] - shifted[mouth]).mean() < 0.6 * np.abs(after[mouth] - shifted[mouth]).mean()


def test_no_motion_leaves_the_image_exactly() -> None:
    crop = blurred_face(80, texture_seed=2)
    np.testing.assert_array_equal(warp(crop, np.zeros((SIZE, SIZE, 2), np.float32)), crop)
