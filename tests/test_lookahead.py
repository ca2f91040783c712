"""LookaheadEditor: centred code smoothing with a delay line, on scripted faces and scripted codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.errors import UserError
from stream.edits.smoothing import smooth_offline
from stream.lookahead import LookaheadEditor
from stream.pipeline import GanRenderer
from stream.session import EditSession
from stream.types import Face, Frame
from tests.random_pack import make_random_pack
from tests.test_session import face, networks

FRAMES = 40


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tmp_path_factory.mktemp("pack")).root


class PerFrameTracker:
    """Faces given per frame index: `script[i]` lists the faces of frame i."""

    def __init__(self, script: list[list[Face]]) -> None:
        self.script = script
        self.calls = 0

    def update(self, frame: Frame, t: float | None = None) -> list[Face]:
        faces = self.script[self.calls]
        self.calls += 1
        return faces


class Scripted:
    """A GAN renderer from the random pack whose encoder returns `codes[track][k]` for the track's k-th face
    (tracks listed in `current`, set by the test before each frame) and whose render records the codes."""

    def __init__(self, pack: Path, smoothing: str, codes: dict[int, np.ndarray]) -> None:
        self.networks = networks(pack, "gan")
        self.smoothing = smoothing
        model = self.networks.gan()
        self.model = model
        self.codes = codes
        self.current: list[int] = []
        self.rendered: list[np.ndarray] = []
        self._next = {track: 0 for track in codes}
        self._render = model.render
        model.encode = self._encode  # type: ignore[method-assign]
        model.render = self._record  # type: ignore[method-assign]

    def _encode(self, crops: list[np.ndarray]) -> np.ndarray:
        out = []
        for track in self.current:
            out.append(self.codes[track][self._next[track]])
            self._next[track] += 1
        return np.stack(out)

    def _record(self, crops, codes, edits, times):
        self.rendered.append(np.array(codes))
        return self._render(crops, codes, edits, times)

    def session(self, tracker) -> EditSession:
        from stream.edits.smoothing import make_code_smoother

        out = self.networks.session(tracker, smoother=make_code_smoother if self.smoothing == "causal" else None)
        out.set_edits([("smile", 1.0)])
        return out


def jittery_codes(model: GanRenderer, frames: int, seed: int = 0) -> np.ndarray:
    """A slow drift plus frame-to-frame noise, as an encoder's inversions of a talking face look."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    drift = 0.5 * np.sin(2 * np.pi * t / 30.0) * np.ones((1, model.num_ws, model.style_dim), np.float32)
    return (drift + 0.3 * rng.standard_normal((frames, model.num_ws, model.style_dim))).astype(np.float32)


def frame_to_frame(codes: list[np.ndarray]) -> float:
    stacked = np.stack(codes)
    return float(np.abs(np.diff(stacked, axis=0)).mean())


@pytest.fixture
def image() -> Frame:
    return np.random.default_rng(1).integers(0, 256, size=(160, 240, 3), dtype=np.uint8)


def run_lookahead(scripted: Scripted, script: list[list[Face]], image: Frame,
                  sigma: float) -> list[tuple[int, Frame]]:
    pipeline = scripted.session(PerFrameTracker(script))
    editor = LookaheadEditor[int](pipeline, sigma)
    out = []
    for index, faces in enumerate(script):
        scripted.current = [f.track_id for f in faces]
        ready = editor.push(index, image, pipeline.locate(image, index / 25.0))
        # each frame comes out exactly `radius` frames after it went in: the delay line holds no more
        assert [item for item, _ in ready] == ([index - editor.radius] if index >= editor.radius else [])
        out.extend(ready)
    out.extend(editor.flush())
    return out


def test_centred_codes_change_less_from_frame_to_frame_than_causal(pack: Path, image: Frame) -> None:
    script = [[face(120, 80, 40, track_id=0)]] * FRAMES
    raw = jittery_codes(Scripted(pack, "off", {}).model, FRAMES)

    causal = Scripted(pack, "causal", {0: raw})
    causal.current = [0]
    pipeline = causal.session(PerFrameTracker(script))
    for index in range(FRAMES):
        pipeline.process(image, index / 25.0)

    centred = Scripted(pack, "off", {0: raw})
    out = run_lookahead(centred, script, image, sigma=3.0)

    assert [item for item, _ in out] == list(range(FRAMES))
    assert all(edited.shape == image.shape and not np.array_equal(edited, image) for _, edited in out)
    raw_change = frame_to_frame([code for code in raw])
    causal_change = frame_to_frame([codes[0] for codes in causal.rendered])
    centred_change = frame_to_frame([codes[0] for codes in centred.rendered])
    assert centred_change < causal_change < raw_change


def test_each_track_is_smoothed_over_its_own_frames(pack: Path, image: Frame) -> None:
    """Track 0 is in frames 0-29, track 1 enters at frame 10 and leaves after frame 25, the last 10 frames
    have no face: each track's codes are smooth_offline of its own run, every frame comes out in order."""
    stay, visit = face(70, 80, 30, track_id=0), face(180, 80, 30, track_id=1)
    script = [[stay, visit] if 10 <= i <= 25 else [stay] if i < 30 else [] for i in range(FRAMES)]
    probe = Scripted(pack, "off", {}).model
    codes = {0: jittery_codes(probe, 30, seed=1), 1: jittery_codes(probe, 16, seed=2)}
    scripted = Scripted(pack, "off", codes)
    out = run_lookahead(scripted, script, image, sigma=2.0)

    assert [item for item, _ in out] == list(range(FRAMES))
    assert all(edited is image for _, edited in out[30:])   # no face: the frame itself
    first = [codes_[0] for codes_ in scripted.rendered]
    second = [codes_[1] for codes_ in scripted.rendered[10:26]]
    np.testing.assert_allclose(np.stack(first), smooth_offline(codes[0], 2.0), atol=1e-5)
    np.testing.assert_allclose(np.stack(second), smooth_offline(codes[1], 2.0), atol=1e-5)


def test_lookahead_needs_the_generator_path(pack: Path) -> None:
    student = networks(pack, "student").session(PerFrameTracker([]))
    student.set_edits([("smile", 1.0)])
    with pytest.raises(UserError, match="generator path"):
        LookaheadEditor(student)
