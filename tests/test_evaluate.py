import argparse
import json
from fractions import Fraction

import av
import numpy as np
import pytest

from engines.errors import UserError
from stream.commands import evaluate as evaluate_command
from stream.evaluate import FaceMeasurer, evaluate_frames, evaluate_videos
from tests.reference_weights import FACES, require
from tests.synthetic_face import warp_face

FRAMES = 10


@pytest.fixture(scope="module")
def clip():
    """The first frames of a real talking-head clip and each frame's 68 landmarks."""
    from stream.faces.detect import DlibDetector
    from stream.media.source import FileSource

    detector = DlibDetector()
    frames = []
    with FileSource(require(FACES / "d18.mp4")) as source:
        for frame in source.frames():
            frames.append(frame.image)
            if len(frames) == FRAMES:
                break
    landmarks = [detector.detect(f)[0].landmarks for f in frames]
    smiling = [warp_face(f, lm, smile=2.0) for f, lm in zip(frames, landmarks)]
    return frames, smiling


@pytest.fixture(scope="module")
def measurer():
    return FaceMeasurer()


def _write(path, frames):
    """A lossless clip, so that the decoded frames are the ones given."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "rgb24"
        stream.options = {"qp": "0"}
        stream.time_base = Fraction(1, 25)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_video_compared_with_itself_is_perfect(clip, measurer):
    frames, _ = clip
    report = evaluate_frames(zip(frames, frames), measurer=measurer)
    assert (report.frames, report.face_frames, report.measured_frames) == (FRAMES, FRAMES, FRAMES)
    assert report.identity_cosine == pytest.approx(1.0) and report.identity_distance == pytest.approx(0.0)
    assert report.same_person == 1.0
    assert report.tl_id == pytest.approx(1.0) and report.tg_id == pytest.approx(1.0)
    assert report.flicker == pytest.approx(1.0) and report.flicker_in > 0
    for before, after in report.attributes.values():
        assert after == pytest.approx(before)


def test_smile_edit_is_measured_and_noise_shows_as_flicker(clip, measurer):
    frames, smiling = clip
    report = evaluate_frames(zip(frames, smiling), every=2, measurer=measurer)
    assert report.measured_frames == FRAMES // 2
    before, after = report.attributes["smile"]
    assert after - before > 0.1
    for name in ("eyes_open", "yaw"):
        b, a = report.attributes[name]
        assert abs(a - b) < 0.3 * (after - before)
    assert report.same_person == 1.0 and report.identity_distance < 0.3
    # the edit is steady: no more flicker than the input; per-frame noise on the face is flicker
    assert report.flicker < 1.2
    rng = np.random.default_rng(0)
    noisy = [np.clip(f.astype(np.int16) + rng.integers(-20, 21, f.shape), 0, 255).astype(np.uint8) for f in frames]
    noisy_report = evaluate_frames(zip(frames, noisy), every=5, measurer=measurer)
    assert noisy_report.flicker > 2.0
    assert noisy_report.tl_id < 1.0 + 1e-3


def test_frames_of_different_sizes_or_no_faces(clip, measurer):
    frames, _ = clip
    with pytest.raises(UserError, match="compare a video with its own edit"):
        evaluate_frames([(frames[0], frames[0][:100])], measurer=measurer)
    blank = np.zeros((64, 64, 3), np.uint8)
    report = evaluate_frames([(blank, blank)] * 3, measurer=measurer)
    assert report.face_frames == 0 and np.isnan(report.identity_cosine) and report.rows()
    with pytest.raises(UserError):
        evaluate_frames([], measurer=measurer)
    with pytest.raises(UserError, match="every"):
        evaluate_frames([(blank, blank)], every=0, measurer=measurer)


def test_videos_and_the_command(tmp_path, clip, measurer, capsys):
    frames, smiling = clip
    _write(tmp_path / "in.mp4", frames)
    _write(tmp_path / "out.mp4", smiling)
    _write(tmp_path / "short.mp4", frames[:4])
    report = evaluate_videos(tmp_path / "in.mp4", tmp_path / "out.mp4", every=3, measurer=measurer)
    assert report.frames == FRAMES and report.attributes["smile"][1] > report.attributes["smile"][0]
    with pytest.raises(UserError, match="fewer frames"):
        evaluate_videos(tmp_path / "in.mp4", tmp_path / "short.mp4", every=5, measurer=measurer)
    args = argparse.Namespace(input=tmp_path / "in.mp4", output=tmp_path / "out.mp4", every=5, max_frames=6,
                              json=tmp_path / "m.json")
    assert evaluate_command.run(args) == 0
    printed = capsys.readouterr().out
    assert "TL-ID" in printed and "flicker" in printed and "smile" in printed
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["frames"] == 6 and set(saved["attributes"]) >= {"smile", "yaw"}


@pytest.mark.parametrize("every, max_frames, json_name, match", [
    (0, None, None, "--every"),
    (1, -1, None, "--max-frames"),
    (1, 2, "missing/m.json", "--json"),
    (1, 2, None, "not a readable video"),
])
def test_command_rejects_bad_arguments_before_measuring(tmp_path, every, max_frames, json_name, match):
    """A bad option or unreadable OUT is one clear error up front, not a traceback after the work."""
    bad = tmp_path / "out.mp4"
    bad.write_text("not a video")
    good = require(FACES / "d18.mp4")
    output = bad if match == "not a readable video" else good
    args = argparse.Namespace(input=good, output=output, every=every, max_frames=max_frames,
                              json=tmp_path / json_name if json_name else None)
    with pytest.raises(UserError, match=match):
        evaluate_command.run(args)


def test_videos_reject_a_negative_frame_limit(tmp_path):
    with pytest.raises(UserError, match="--max-frames"):
        evaluate_videos(tmp_path / "a.mp4", tmp_path / "b.mp4", max_frames=-1)
