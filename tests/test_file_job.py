"""The file job end to end on real clips (../shared/data/faces, trimmed copies) with a random-weight pack."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stream import cli, filejob
from stream.composite import face_mask
from stream.config import FaceConfig, FileJobConfig, ModelConfig
from stream.faces.align import ffhq_affine, invert_affine
from stream.media import EncoderSettings, FileSource
from stream.types import Face, Frame
from tests.media_clips import audio_packets, make_clip, trimmed_copy, video_timestamps
from tests.random_pack import CROP_SIZE, make_random_pack
from tests.reference_weights import FACES, require

FRAMES = 30


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tmp_path_factory.mktemp("pack")).root


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30 frames of a 512x512 clip with AAC audio, stream-copied."""
    source = require(FACES / "d11.mp4")
    return trimmed_copy(source, tmp_path_factory.mktemp("clip") / "d11_30.mp4", FRAMES)


class RecordingTracker:
    """The real tracker, remembering the faces it returned for each frame."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.faces: list[list[Face]] = []

    def update(self, frame: Frame, t: float | None = None) -> list[Face]:
        faces = self.inner.update(frame, t)
        self.faces.append(faces)
        return faces


def face_support(shape: tuple[int, ...], faces: list[Face]) -> np.ndarray:
    """Pixels the faces' paste-back may touch (warped masks, grown by 2 px for interpolation)."""
    support = np.zeros(shape[:2], bool)
    for face in faces:
        affine = ffhq_affine(face.landmarks, CROP_SIZE)
        warped = cv2.warpAffine(face_mask(CROP_SIZE), invert_affine(affine), (shape[1], shape[0]))
        support |= cv2.dilate((warped > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return support


def decode(path: Path) -> list[np.ndarray]:
    with FileSource(path) as source:
        return [frame.image for frame in source.frames()]


def job(clip: Path, out: Path, pack: Path, path: str, **kwargs: object) -> FileJobConfig:
    return FileJobConfig(input=clip, output=out, edits=(("smile", 1.0),),
                         model=ModelConfig(pack=pack, path=path, backend="torch", gate=False),  # random weights draw no face
                         face=FaceConfig(detect_every=5), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["student", "gan"])
def test_lossless_job_changes_faces_only_and_keeps_time_and_audio(
        clip: Path, pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    trackers: list[RecordingTracker] = []
    real_build = filejob.build_tracker
    monkeypatch.setattr(filejob, "build_tracker",
                        lambda config, fps: trackers.append(RecordingTracker(real_build(config, fps))) or trackers[-1])
    out = tmp_path / "edited.mp4"
    result = filejob.run_file_job(job(clip, out, pack, path, encoder=EncoderSettings(codec="lossless")))
    assert result.frames == FRAMES and result.output == out
    assert video_timestamps(out) == video_timestamps(clip)
    assert audio_packets(out) == audio_packets(clip) and len(audio_packets(clip)) > 10
    frames_in, frames_out = decode(clip), decode(out)
    assert len(frames_out) == len(frames_in) == FRAMES
    faces = trackers[0].faces
    assert sum(bool(f) for f in faces) >= FRAMES - 2, "the clip shows a face in (nearly) every frame"
    for before, after, found in zip(frames_in, frames_out, faces):
        inside = face_support(before.shape, found)
        np.testing.assert_array_equal(after[~inside], before[~inside])
        if found:
            assert np.abs(after[inside].astype(int) - before[inside]).mean() > 0.3


@pytest.mark.slow
def test_side_by_side_h264_through_the_cli(clip: Path, pack: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(cli, "COMMANDS", {"file": "file"})
    out = tmp_path / "sbs.mp4"
    code = cli.main(["file", str(clip), "-o", str(out), "--pack", str(pack), "--backend", "torch",
                     "--edit", "smile=0.8", "--side-by-side", "--faces", "largest"])
    assert code == 0
    printed = capsys.readouterr().out
    for stage in ("decode", "detect", "align", "student", "composite", "write"):
        assert stage in printed
    assert f"wrote {out}" in printed
    with FileSource(out) as edited, FileSource(clip) as original:
        assert (edited.info.width, edited.info.height) == (2 * original.info.width, original.info.height)
    assert video_timestamps(out) == video_timestamps(clip)
    assert audio_packets(out) == audio_packets(clip)
    left = decode(out)[5][:, :512].astype(int)
    assert np.abs(left - decode(clip)[5]).mean() < 3.0  # the left half is the input (H.264-close)


def test_frames_without_faces_pass_through(pack: Path, tmp_path: Path) -> None:
    clip = tmp_path / "pattern.mp4"
    make_clip(clip, frames=8, size=(96, 64))
    out = tmp_path / "out.mp4"  # .mkv would round timestamps to milliseconds
    filejob.run_file_job(job(clip, out, pack, "student", encoder=EncoderSettings(codec="lossless")))
    for before, after in zip(decode(clip), decode(out)):
        np.testing.assert_array_equal(before, after)
    assert audio_packets(out) == audio_packets(clip)


def test_interrupted_job_leaves_no_output(pack: Path, tmp_path: Path) -> None:
    clip = tmp_path / "pattern.mp4"
    make_clip(clip, frames=8, size=(96, 64))
    out = tmp_path / "out.mp4"
    seen = []

    def interrupt(frame: object) -> None:
        seen.append(frame)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        filejob.run_file_job(job(clip, out, pack, "student"), on_frame=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pattern.mp4"]


def test_unknown_edit_fails_before_any_frame(pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys) -> None:
    monkeypatch.setattr(cli, "COMMANDS", {"file": "file"})
    clip = tmp_path / "pattern.mp4"
    make_clip(clip, frames=3, size=(96, 64), audio=False)
    out = tmp_path / "out.mp4"
    assert cli.main(["file", str(clip), "-o", str(out), "--pack", str(pack), "--edit", "beard=1"]) == 2
    assert "beard" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("smoothing", "sigma"), [
    ("centred", 1.0),    # a look-ahead window shorter than the clip
    ("centred", 15.0),   # one longer than the clip: every frame waits for the end
    ("causal", 3.0),     # the live filter
])
def test_code_smoothing_keeps_every_frame_and_timestamp(clip: Path, pack: Path, tmp_path: Path,
                                                        smoothing: str, sigma: float) -> None:
    out = tmp_path / "smoothed.mp4"
    result = filejob.run_file_job(job(clip, out, pack, "gan", smoothing=smoothing, smoothing_sigma=sigma))
    assert result.frames == FRAMES and "smooth" in result.times.counts
    assert video_timestamps(out) == video_timestamps(clip)
    assert audio_packets(out) == audio_packets(clip)


@pytest.mark.slow
def test_own_checkpoints_with_a_published_direction_file(clip: Path, pack: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """--generator/--encoder replace the pack, --directions takes InterFaceGAN's smile.pt as it is published."""
    from tests.reference_weights import DIRECTIONS

    smile = require(DIRECTIONS / "smile.pt")
    monkeypatch.setattr(cli, "COMMANDS", {"file": "file"})
    out = tmp_path / "own.mp4"
    code = cli.main(["file", str(clip), "-o", str(out), "--backend", "torch", "--codec", "lossless",
                     "--generator", str(pack / "generator.safetensors"),
                     "--encoder", str(pack / "encoder.safetensors"),
                     "--directions", str(smile), "--edit", "smile=3", "--smoothing", "off",
                     "--no-gate"])  # random weights reproduce no face: the gate would rightly remove the edit
    assert code == 0
    assert "gan path" in capsys.readouterr().out
    assert video_timestamps(out) == video_timestamps(clip)
    changed = [np.abs(a.astype(int) - b).max() for a, b in zip(decode(out), decode(clip))]
    assert max(changed) > 0  # the direction moved the faces
