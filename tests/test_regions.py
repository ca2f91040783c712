"""Region masks from landmarks: where they are 1, where they are exactly 0, and region inference."""
from __future__ import annotations

import numpy as np
import pytest

from engines.errors import UserError
from stream.faces.align import FFHQ_TEMPLATE_5
from stream.regions import infer_region, region_mask, union_mask

SIZE = 256


def ring(centre: np.ndarray, rx: float, ry: float, count: int) -> np.ndarray:
    angles = np.linspace(np.pi, 3 * np.pi, count, endpoint=False)
    return centre + np.stack([rx * np.cos(angles), ry * np.sin(angles)], axis=1)


def crop_landmarks() -> np.ndarray:
    """68 points laid out as dlib's, on the FFHQ template's eyes and mouth, in crop pixels."""
    t = FFHQ_TEMPLATE_5 * SIZE
    iod = t[1, 0] - t[0, 0]
    lm = np.zeros((68, 2))
    lm[:17] = ring((t[0] + t[1]) / 2 + (0, 0.5 * iod), 1.0 * iod, 0.9 * iod, 17)      # jaw (rough)
    lm[17:22] = t[0] + np.stack([np.linspace(-0.3, 0.2, 5) * iod, np.full(5, -0.35 * iod)], 1)
    lm[22:27] = t[1] + np.stack([np.linspace(-0.2, 0.3, 5) * iod, np.full(5, -0.35 * iod)], 1)
    lm[27:36] = t[2]
    lm[36:42] = ring(t[0], 0.15 * iod, 0.06 * iod, 6)
    lm[42:48] = ring(t[1], 0.15 * iod, 0.06 * iod, 6)
    mouth = (t[3] + t[4]) / 2
    lm[48:60] = ring(mouth, 0.42 * iod, 0.15 * iod, 12)
    lm[60:68] = ring(mouth, 0.3 * iod, 0.05 * iod, 8)
    return lm


@pytest.mark.parametrize("points", ["68", "5"])
def test_mouth_mask_covers_the_mouth_and_spares_the_eyes_and_forehead(points: str) -> None:
    lm = crop_landmarks() if points == "68" else FFHQ_TEMPLATE_5 * SIZE
    mask = region_mask("mouth", lm, SIZE)
    mouth = lm[48:68].mean(0) if points == "68" else lm[3:5].mean(0)
    eyes = lm[36:48] if points == "68" else lm[:2]
    assert mask[int(mouth[1]), int(mouth[0])] > 0.99
    assert all(mask[int(y), int(x)] == 0 for x, y in eyes)
    assert mask[: int(eyes[:, 1].min())].max() == 0      # nothing above the eyes
    assert 0.03 < mask.mean() < 0.25                     # a part of the face, not all of it
    ramp = mask[int(mouth[1])]
    assert ((ramp > 0.05) & (ramp < 0.95)).sum() >= 4    # feathered, not a hard edge


def test_eye_mask_and_union() -> None:
    lm = crop_landmarks()
    eyes, mouth = region_mask("eyes", lm, SIZE), region_mask("mouth", lm, SIZE)
    for eye in (lm[36:42].mean(0), lm[42:48].mean(0)):
        assert eyes[int(eye[1]), int(eye[0])] > 0.99
    assert (eyes * mouth).max() == 0  # disjoint parts
    np.testing.assert_array_equal(union_mask(["eyes", "mouth"], lm, SIZE), np.maximum(eyes, mouth))
    assert union_mask(["mouth", "face"], lm, SIZE).min() == 1.0
    with pytest.raises(UserError, match="unknown region"):
        region_mask("ears", lm, SIZE)


def test_infer_region_finds_where_a_change_concentrates() -> None:
    lm = FFHQ_TEMPLATE_5 * SIZE
    energy = np.zeros((SIZE, SIZE), np.float32)
    energy += 0.01  # a faint change everywhere
    x, y = lm[3:5].mean(0).astype(int)
    energy[y - 8:y + 8, x - 20:x + 20] = 5.0
    assert infer_region(energy, lm) == "mouth"
    assert infer_region(np.ones((SIZE, SIZE), np.float32), lm) == "face"
