"""FaceEditPipeline with a scripted tracker and a tiny random-weight pack: what changes, what never does."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.errors import UserError
from stream.composite import face_mask
from stream.config import ModelConfig
from stream.faces.align import ffhq_affine, invert_affine
from stream.filejob import build_edit_model
from stream.pipeline import FaceEditPipeline, GanEditModel, StudentEditModel
from stream.types import Face, Frame, StageTimes
from tests.random_pack import CROP_SIZE, make_random_pack


def five_points(cx: float, cy: float, scale: float) -> np.ndarray:
    """insightface-order landmarks (eyes, nose, mouth corners) of a face centred at (cx, cy)."""
    unit = np.array([[-0.35, -0.2], [0.35, -0.2], [0.0, 0.1], [-0.28, 0.42], [0.28, 0.42]], np.float32)
    return (unit * scale + (cx, cy)).astype(np.float32)


class ScriptedTracker:
    """Returns the same faces every frame (the pipeline must not care how they were found)."""

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces
        self.calls = 0

    def update(self, frame: Frame, t: float | None = None) -> list[Face]:
        self.calls += 1
        return [Face(f.box, f.score, f.landmarks.copy(), f.track_id) for f in self.faces]


def face(cx: float, cy: float, scale: float, track_id: int) -> Face:
    return Face((cx - scale, cy - scale, cx + scale, cy + scale), 1.0, five_points(cx, cy, scale), track_id)


def support(frame_shape: tuple[int, ...], f: Face) -> np.ndarray:
    """Frame pixels the face's paste-back may touch: its warped mask, grown by 2 px for interpolation."""
    affine = ffhq_affine(f.landmarks, CROP_SIZE)
    warped = cv2.warpAffine(face_mask(CROP_SIZE), invert_affine(affine), (frame_shape[1], frame_shape[0]))
    return cv2.dilate((warped > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tmp_path_factory.mktemp("pack")).root


@pytest.fixture
def frame() -> Frame:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(160, 240, 3), dtype=np.uint8)


def model(pack: Path, path: str, **kwargs: object):
    kwargs.setdefault("smoothing", "off")
    config = ModelConfig(pack=pack, path=path, backend="torch", **kwargs)
    return build_edit_model(config, [("smile", 1.0)])


@pytest.mark.parametrize("path", ["student", "gan"])
def test_face_region_changes_and_the_rest_is_byte_identical(pack: Path, frame: Frame, path: str) -> None:
    target = face(120, 80, 40, track_id=0)
    pipeline = FaceEditPipeline(ScriptedTracker([target]), model(pack, path))
    pipeline.set_edits([("smile", 1.0)])
    out = pipeline.process(frame, 0.0)
    inside = support(frame.shape, target)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~inside], frame[~inside])
    assert np.abs(out[inside].astype(int) - frame[inside]).mean() > 0.5
    expected = {"student": {"detect", "align", "student", "composite"},
                "gan": {"detect", "align", "encode", "edit", "generate", "composite"}}[path]
    assert set(pipeline.times.mean_ms()) == expected


def test_no_face_returns_the_frame_untouched(pack: Path, frame: Frame) -> None:
    pipeline = FaceEditPipeline(ScriptedTracker([]), model(pack, "student"))
    pipeline.set_edits([("smile", 1.0)])
    assert pipeline.process(frame, 0.0) is frame


def test_set_edits_takes_effect_on_the_next_frame(pack: Path, frame: Frame) -> None:
    tracker = ScriptedTracker([face(120, 80, 40, track_id=0)])
    pipeline = FaceEditPipeline(tracker, model(pack, "student"))
    pipeline.set_edits([("smile", 0.0)])
    assert pipeline.process(frame, 0.0) is frame  # strength 0: nothing to do, not even tracking
    assert tracker.calls == 0
    pipeline.set_edits([("smile", 1.0)])
    assert not np.array_equal(pipeline.process(frame, 0.04), frame)
    with pytest.raises(UserError, match="unknown edit 'beard'"):
        pipeline.set_edits([("beard", 1.0)])


def test_student_strength_scales_the_change(pack: Path, frame: Frame) -> None:
    target = face(120, 80, 40, track_id=0)
    changes = {}
    for strength in (0.5, 1.0):
        pipeline = FaceEditPipeline(ScriptedTracker([target]), model(pack, "student"), colour_match=False)
        pipeline.set_edits([("smile", strength)])
        changes[strength] = np.abs(pipeline.process(frame, 0.0).astype(int) - frame).sum()
    assert 0.35 < changes[0.5] / changes[1.0] < 0.65


def test_largest_face_only(pack: Path, frame: Frame) -> None:
    small, large = face(50, 50, 22, track_id=0), face(170, 90, 45, track_id=1)
    pipeline = FaceEditPipeline(ScriptedTracker([small, large]), model(pack, "student"), faces="largest")
    pipeline.set_edits([("smile", 1.0)])
    out = pipeline.process(frame, 0.0)
    only_small = support(frame.shape, small) & ~support(frame.shape, large)
    np.testing.assert_array_equal(out[only_small], frame[only_small])
    assert not np.array_equal(out, frame)


def test_every_face_is_edited_with_all(pack: Path, frame: Frame) -> None:
    small, large = face(50, 50, 22, track_id=0), face(170, 90, 45, track_id=1)
    edit_model = model(pack, "gan", smoothing="causal")  # one code filter per track
    pipeline = FaceEditPipeline(ScriptedTracker([small, large]), edit_model)
    pipeline.set_edits([("smile", 1.0)])
    pipeline.process(frame, 0.0)
    out = pipeline.process(frame, 0.04)
    assert sorted(edit_model._smoothers) == [0, 1]
    for f in (small, large):
        inside = support(frame.shape, f)
        assert np.abs(out[inside].astype(int) - frame[inside]).mean() > 0.5


def test_gan_without_residual_replaces_the_face(pack: Path, frame: Frame) -> None:
    edit_model = model(pack, "gan", residual=False)
    assert isinstance(edit_model, GanEditModel) and edit_model.blend == "replace"
    target = face(120, 80, 40, track_id=0)
    pipeline = FaceEditPipeline(ScriptedTracker([target]), edit_model)
    pipeline.set_edits([("smile", 0.0)])
    out = pipeline.process(frame, 0.0)  # G(w) alone differs from the crop even at strength 0
    inside = support(frame.shape, target)
    np.testing.assert_array_equal(out[~inside], frame[~inside])
    assert not np.array_equal(out[inside], frame[inside])


def test_auto_path_picks_the_student_when_one_covers_the_edit(pack: Path) -> None:
    config = ModelConfig(pack=pack, backend="torch", smoothing="off")
    assert isinstance(build_edit_model(config, [("smile", 1.0)]), StudentEditModel)
    assert isinstance(build_edit_model(config, [("age", 1.0)]), GanEditModel)


def test_luma_residual_changes_brightness_only() -> None:
    from stream.pipeline import residual_change

    delta = np.zeros((1, 3, 4, 4), np.float32)
    delta[0, 0] = 0.4  # a red-only change in G(w') - G(w)
    rgb, luma = residual_change(delta, 8, "rgb"), residual_change(delta, 8, "luma")
    assert luma.shape == rgb.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(luma[..., 0], luma[..., 2])  # grey: no hue change
    np.testing.assert_allclose(luma[..., 1], 0.299 * rgb[..., 0], rtol=1e-5)


def test_a_luma_pack_pastes_a_grey_change(tmp_path: Path, frame: Frame) -> None:
    from stream.modelpack import load_pack

    root = make_random_pack(tmp_path / "luma", residual_colour="luma").root
    assert load_pack(root).residual_colour == "luma"
    edit_model = model(root, "gan")
    assert edit_model.residual_colour == "luma"
    crop = frame[:CROP_SIZE, :CROP_SIZE].copy()
    crop[:] = 128  # mid grey: no clipping, so the change is exactly what was added
    edit_model.set_edits([("smile", 1.0)])
    change = edit_model.render([crop], edit_model.encode([crop]), StageTimes()).pop().astype(int) - 128
    assert np.abs(change).max() > 0
    assert np.abs(change[..., 0] - change[..., 2]).max() <= 1  # the same on every channel, up to rounding
    own = model(root, "gan", generator=root / "generator.safetensors")  # your own generator keeps its colours
    assert own.residual_colour == "rgb"


def test_pack_refuses_an_unknown_residual_colour(tmp_path: Path) -> None:
    import json

    from engines.errors import CheckpointError
    from stream.modelpack import MANIFEST, load_pack

    root = make_random_pack(tmp_path / "p").root
    manifest = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps({**manifest, "residual_colour": "sepia"}))
    with pytest.raises(CheckpointError, match="residual_colour 'sepia'"):
        load_pack(root)
