"""EditSession with a scripted tracker and a tiny random-weight pack: what changes, what never does."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.errors import UserError
from stream.composite import face_mask
from stream.config import ModelConfig
from stream.faces.align import ffhq_affine, invert_affine
from stream.session import EditNetworks, EditSession
from stream.types import Face, Frame
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


def networks(pack: Path, path: str = "auto", **kwargs: object) -> EditNetworks:
    """The random pack's networks; the confidence gate is off (random weights reproduce no face)."""
    kwargs.setdefault("gate", False)
    return EditNetworks(ModelConfig(pack=pack, path=path, backend="torch", **kwargs))


def session(pack: Path, path: str, tracker, *, causal: bool = False, faces: str = "all",
            **kwargs: object) -> EditSession:
    from stream.edits.smoothing import make_code_smoother

    return networks(pack, path, **kwargs).session(tracker, faces=faces,  # type: ignore[arg-type]
                                                  smoother=make_code_smoother if causal else None)


@pytest.mark.parametrize("path", ["student", "gan"])
def test_face_region_changes_and_the_rest_is_byte_identical(pack: Path, frame: Frame, path: str) -> None:
    target = face(120, 80, 40, track_id=0)
    pipeline = session(pack, path, ScriptedTracker([target]))
    pipeline.set_edits([("smile", 1.0)])
    out = pipeline.process(frame, 0.0)
    inside = support(frame.shape, target)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~inside], frame[~inside])
    assert np.abs(out[inside].astype(int) - frame[inside]).mean() > 0.5
    expected = {"student": {"detect", "align", "student", "composite"},
                "gan": {"detect", "align", "encode", "edit", "generate", "motion", "composite"}}[path]
    assert set(pipeline.times.mean_ms()) == expected


def test_no_face_returns_the_frame_untouched(pack: Path, frame: Frame) -> None:
    pipeline = session(pack, "student", ScriptedTracker([]))
    pipeline.set_edits([("smile", 1.0)])
    assert pipeline.process(frame, 0.0) is frame


def test_set_edits_takes_effect_on_the_next_frame(pack: Path, frame: Frame) -> None:
    tracker = ScriptedTracker([face(120, 80, 40, track_id=0)])
    pipeline = session(pack, "student", tracker)
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
        pipeline = session(pack, "student", ScriptedTracker([target]))
        pipeline.set_edits([("smile", strength)])
        changes[strength] = np.abs(pipeline.process(frame, 0.0).astype(int) - frame).sum()
    assert 0.35 < changes[0.5] / changes[1.0] < 0.65


def test_largest_face_only(pack: Path, frame: Frame) -> None:
    small, large = face(50, 50, 22, track_id=0), face(170, 90, 45, track_id=1)
    pipeline = session(pack, "student", ScriptedTracker([small, large]), faces="largest")
    pipeline.set_edits([("smile", 1.0)])
    out = pipeline.process(frame, 0.0)
    only_small = support(frame.shape, small) & ~support(frame.shape, large)
    np.testing.assert_array_equal(out[only_small], frame[only_small])
    assert not np.array_equal(out, frame)


def test_every_face_is_edited_with_all(pack: Path, frame: Frame) -> None:
    small, large = face(50, 50, 22, track_id=0), face(170, 90, 45, track_id=1)
    pipeline = session(pack, "gan", ScriptedTracker([small, large]), causal=True)  # one code filter per track
    pipeline.set_edits([("smile", 1.0)])
    pipeline.process(frame, 0.0)
    out = pipeline.process(frame, 0.04)
    assert sorted(pipeline._smoothers) == [0, 1]
    for f in (small, large):
        inside = support(frame.shape, f)
        assert np.abs(out[inside].astype(int) - frame[inside]).mean() > 0.5


def test_gan_without_residual_replaces_the_face(pack: Path, frame: Frame) -> None:
    target = face(120, 80, 40, track_id=0)
    pipeline = session(pack, "gan", ScriptedTracker([target]), residual=False)
    pipeline.set_edits([("smile", 1e-6)])  # G(w') alone differs from the crop even without an edit
    out = pipeline.process(frame, 0.0)
    inside = support(frame.shape, target)
    np.testing.assert_array_equal(out[~inside], frame[~inside])
    assert not np.array_equal(out[inside], frame[inside])


def test_one_rule_picks_the_student_only_when_students_cover_every_edit(pack: Path) -> None:
    auto = networks(pack)
    assert auto.path_for([("smile", 1.0)]) == "student"
    assert auto.path_for([("smile", 1.0), ("age", 0.5)]) == "gan"      # falls back, with one line
    assert auto.path_for([("smile", 1.0), ("age", 0.0)]) == "student"  # a zero edit needs no student
    assert networks(pack, "student").path_for([("age", 1.0)]) == "gan"
    assert networks(pack, "gan").path_for([("smile", 1.0)]) == "gan"


def test_several_edits_combine_and_each_frame_keeps_its_snapshot(pack: Path, frame: Frame) -> None:
    pipeline = session(pack, "auto", ScriptedTracker([face(120, 80, 40, track_id=0)]))
    first = pipeline.set_edits([("smile", 1.0)])
    located = pipeline.locate(frame, 0.0)
    second = pipeline.set_edits([("smile", 1.0), ("age", 1.0)])
    assert (first.version, first.path) == (1, "student") and (second.version, second.path) == (2, "gan")
    assert located is not None and located.state is first  # rendered with the edits it was located with
    both = pipeline.process(frame, 0.04)
    pipeline.set_edits([("age", 1.0)])
    age_only = pipeline.process(frame, 0.08)
    assert not np.array_equal(both, age_only)


def test_the_change_is_not_quantised_before_paste_back(pack: Path) -> None:
    """A change under half a grey level per render still adds up: nothing rounds it in crop space."""
    renderer = networks(pack, "gan", motion=False).gan()  # the paint alone: motion moves pixels, it adds none
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 128, np.uint8)
    codes = renderer.encode([crop])
    from stream.types import StageTimes

    small = renderer.render([crop], codes, [("smile", 0.001)], StageTimes()).changes[0]
    assert small.dtype == np.float32 and 0 < np.abs(small).max() < 0.5
    double = renderer.render([crop], codes, [("smile", 0.002)], StageTimes()).changes[0]
    np.testing.assert_allclose(small * 2, double, atol=0.1 * np.abs(double).max())  # linear near zero, unrounded


def test_colour_matching_keeps_the_edits_own_mean_change() -> None:
    """Without the residual the face is replaced by G(w') matched with the G(w) -> crop transfer: a cast the
    generator adds to both goes, a darkening the edit makes stays."""
    from stream.composite import colour_transfer

    rng = np.random.default_rng(0)
    crop = rng.integers(60, 200, (64, 64, 3)).astype(np.float32)
    recon = crop * 0.8 + 30  # the generator's cast
    edited = recon - 20      # the edit darkens by 20
    gain, offset = colour_transfer(recon, crop.astype(np.uint8), face_mask(64))
    change = edited * gain + offset - crop
    inside = face_mask(64) > 0.99
    assert change[inside].mean() == pytest.approx(-20 / 0.8, abs=1.5)


def test_a_luma_pack_pastes_a_grey_change(tmp_path: Path) -> None:
    from stream.modelpack import load_pack

    root = make_random_pack(tmp_path / "luma", residual_colour="luma").root
    assert load_pack(root).residual_colour == "luma"
    renderer = networks(root, "gan").gan()
    assert renderer.residual_colour == "luma"
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 128, np.uint8)
    from stream.types import StageTimes

    change = renderer.render([crop], renderer.encode([crop]), [("smile", 1.0)], StageTimes()).changes[0]
    assert np.abs(change).max() > 0
    np.testing.assert_allclose(change[..., 0], change[..., 2])  # the same on every channel
    own = networks(root, "gan", generator=root / "generator.safetensors")  # your own generator keeps its colours
    assert own.gan().residual_colour == "rgb"
    forced = networks(root, "gan", generator=root / "generator.safetensors", residual_colour="luma")
    assert forced.gan().residual_colour == "luma"  # the run's spec decides when it says


def test_luma_residual_changes_brightness_only() -> None:
    from stream.pipeline import residual_change

    delta = np.zeros((1, 3, 4, 4), np.float32)
    delta[0, 0] = 0.4  # a red-only change in G(w') - G(w)
    rgb, luma = residual_change(delta, 8, "rgb"), residual_change(delta, 8, "luma")
    assert luma.shape == rgb.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(luma[..., 0], luma[..., 2])  # grey: no hue change
    np.testing.assert_allclose(luma[..., 1], 0.299 * rgb[..., 0], rtol=1e-5)


def test_pack_refuses_an_unknown_residual_colour(tmp_path: Path) -> None:
    import json

    from engines.errors import CheckpointError
    from stream.modelpack import MANIFEST, load_pack

    root = make_random_pack(tmp_path / "p").root
    manifest = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps({**manifest, "residual_colour": "sepia"}))
    with pytest.raises(CheckpointError, match="residual_colour 'sepia'"):
        load_pack(root)


def test_the_gate_weakens_an_edit_on_a_face_the_generator_draws_poorly(pack: Path, frame: Frame) -> None:
    from stream.session import GATE_HIGH_DB, GATE_LOW_DB, gate_weight

    assert gate_weight(GATE_LOW_DB - 1) == 0.0 and gate_weight(GATE_HIGH_DB + 1) == 1.0
    assert 0.0 < gate_weight((GATE_LOW_DB + GATE_HIGH_DB) / 2) < 1.0
    target = face(120, 80, 40, track_id=0)
    # the gate weighs what the generator paints; the motion it draws moves the face's own pixels, ungated
    ungated = session(pack, "gan", ScriptedTracker([target]), motion=False)
    gated = session(pack, "gan", ScriptedTracker([target]), gate=True, motion=False)
    for s in (ungated, gated):
        s.set_edits([("smile", 1.0)])
    assert not np.array_equal(ungated.process(frame, 0.0), frame)
    assert np.array_equal(gated.process(frame, 0.0), frame)  # random weights reproduce nothing of the face
    assert gated.gate.faces == gated.gate.weakened == 1 and gated.gate.fidelity < GATE_LOW_DB


def test_an_edit_is_confined_to_its_region(pack: Path, frame: Frame) -> None:
    """A mouth edit changes nothing above the nose, whatever the generator draws there."""
    from stream.faces.align import ffhq_affine, transform_points
    from stream.regions import region_mask

    target = face(120, 80, 40, track_id=0)
    pipeline = session(pack, "gan", ScriptedTracker([target]))
    pipeline.networks._directions()["smile"].metadata["region"] = "mouth"  # as the pack's export writes it
    pipeline.set_edits([("smile", 1.0)])
    out = pipeline.process(frame, 0.0)
    affine = ffhq_affine(target.landmarks, CROP_SIZE)
    mask = region_mask("mouth", transform_points(affine, target.landmarks), CROP_SIZE)
    warped = cv2.warpAffine(mask, invert_affine(affine), (frame.shape[1], frame.shape[0]))
    outside = cv2.dilate((warped > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    np.testing.assert_array_equal(out[outside], frame[outside])
    assert np.abs(out[warped > 0.9].astype(int) - frame[warped > 0.9]).mean() > 0.5


def test_your_own_generator_is_pasted_back_at_its_own_resolution(pack: Path) -> None:
    from engines import load_generator

    own = pack / "generator.safetensors"
    assert networks(pack).crop_size == CROP_SIZE  # the pack says
    assert networks(pack, "gan", generator=own).crop_size == load_generator(own).resolution
    assert networks(pack, "gan", generator=own, crop_size=96).crop_size == 96  # the run's spec decides when it says
