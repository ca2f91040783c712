"""Paste-back: mask shape, byte-identical outside the mask, exact round trip of a zero change, PSNR of a replaced face."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.errors import UserError
from stream.composite import colour_transfer, face_mask, mask_bounds, paste_change
from stream.faces.align import ffhq_affine, invert_affine, warp_to_crop
from tests.test_faces_align import synthetic_68
from tests.test_faces_detect import clip_frames


def warped_mask(mask, affine, frame):
    return cv2.warpAffine(mask, invert_affine(affine), (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR)


def test_face_mask_is_feathered_and_zero_at_the_border():
    m = face_mask(256)
    assert m.dtype == np.float32 and m.shape == (256, 256)
    assert m[int(0.57 * 256), 128] == 1.0
    assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
    ramp = m[int(0.57 * 256), :128]
    assert ((ramp > 0) & (ramp < 1)).sum() >= 5  # a soft edge, not a step
    assert not m.flags.writeable
    with pytest.raises(UserError):
        face_mask(256, feather=0.0)


def test_outside_the_mask_is_byte_identical_and_edit_lands_inside():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(360, 640, 3), dtype=np.uint8)
    affine = ffhq_affine(synthetic_68(centre=(320.0, 170.0), eye_dist=50.0, angle=0.2), 128)
    change = np.full((128, 128, 3), 40.0, np.float32)
    mask = face_mask(128)
    wm = warped_mask(mask, affine, frame)
    out = paste_change(frame, change, affine, mask)
    assert np.array_equal(out[wm == 0], frame[wm == 0])
    assert (out[wm > 0.99].astype(int) - frame[wm > 0.99]).mean() > 20
    x0, y0, x1, y1 = mask_bounds(mask, affine, frame.shape)
    changed = np.argwhere((out != frame).any(axis=-1))
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y1


def test_a_zero_change_round_trips_exactly_near_the_border():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    affine = ffhq_affine(synthetic_68(centre=(10.0, 190.0), eye_dist=60.0), 256)  # face off the corner
    zero = np.zeros((256, 256, 3), np.float32)
    assert np.array_equal(paste_change(frame, zero, affine, face_mask(256)), frame)


def test_sub_level_changes_are_rounded_once_at_the_frame():
    frame = np.full((64, 64, 3), 100, np.uint8)
    affine = np.array([[1.0, 0, 0], [0, 1.0, 0]])  # the crop is the frame
    mask = np.ones((64, 64), np.float32)
    out = paste_change(frame, np.full((64, 64, 3), 0.6, np.float32), affine, mask)
    assert (out[8:-8, 8:-8] == 101).all()  # 0.6 rounds up: the change was not truncated on the way


def test_colour_match_removes_a_cast_and_keeps_local_change():
    rng = np.random.default_rng(3)
    reference = rng.integers(60, 200, size=(64, 64, 3), dtype=np.uint8)
    mask = face_mask(64)
    edited = reference.astype(np.int16)
    edited[30:34, 30:34] += 50                       # a local edit
    cast = np.clip(edited * 0.8 + [30, 0, -20], 0, 255).astype(np.uint8)  # plus a global cast
    gain, offset = colour_transfer(cast, reference, mask)
    matched = cast.astype(np.float32) * gain + offset
    inside = mask > 0.5
    assert np.abs(matched[inside].mean(axis=0) - reference[inside].mean(axis=0)).max() < 1.0
    assert (matched[30:34, 30:34] - reference[30:34, 30:34]).mean() > 30


def test_mask_entirely_outside_the_frame_and_bad_inputs():
    frame = np.zeros((100, 100, 3), np.uint8)
    affine = ffhq_affine(synthetic_68(centre=(-500.0, -500.0), eye_dist=30.0), 64)
    change = np.full((64, 64, 3), 255.0, np.float32)
    assert np.array_equal(paste_change(frame, change, affine, face_mask(64)), frame)
    with pytest.raises(UserError, match="face_mask"):
        paste_change(frame, change, affine, face_mask(32))


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["d3", "d13", "s18", "d18"])
def test_round_trip_on_real_faces(clip):
    from stream.faces.detect import DlibDetector

    detector = DlibDetector()
    size = 512
    mask = face_mask(size)
    for frame in clip_frames(clip, every=60):
        face = detector.detect(frame)[0]
        affine = ffhq_affine(face.landmarks, size)
        crop = warp_to_crop(frame, affine, size)
        wm = warped_mask(mask, affine, frame)
        assert np.array_equal(paste_change(frame, np.zeros(crop.shape, np.float32), affine, mask), frame)
        out = paste_change(frame, np.full(crop.shape, 30.0, np.float32), affine, mask)
        assert np.array_equal(out[wm == 0], frame[wm == 0])
        face_region = wm > 0.99
        assert 25 < (out[face_region].astype(int) - frame[face_region]).mean() <= 30
