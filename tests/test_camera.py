"""`camera`: live sources (stream/media/webcam.py), the virtual camera sink, and the command end to end.

No webcam or v4l2loopback device is needed: a small video file stands in for the camera, and the
virtual camera is replaced by a recorder where a device would be required.
"""
from __future__ import annotations

import argparse
import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engines.errors import UserError
from stream.errors import MediaError
from stream.media.virtualcam import LOOPBACK_HINT
from stream.media.webcam import LoopedFileSource, open_live_source
from tests.random_pack import make_random_pack

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CLIP = SHARED / "data" / "faces" / "d18.mp4"


def write_clip(path: Path, frames: int = 10, fps: int = 50) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            image = np.full((48, 64, 3), index * 20, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def camera_args(*argv: str) -> argparse.Namespace:
    from stream.commands import camera

    parser = argparse.ArgumentParser()
    camera.add_arguments(parser)
    return parser.parse_args(list(argv))


def loopback_device_present() -> bool:
    return any(Path("/sys/devices/virtual/video4linux").glob("video*"))


def test_live_source_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="neither a camera"):
        open_live_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(MediaError, match="no such device"):
        open_live_source("/dev/video-missing")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(MediaError, match="text.mp4"):
        open_live_source(str(tmp_path / "text.mp4"))


def test_looped_file_plays_again_with_timestamps_continuing(tmp_path: Path) -> None:
    source = LoopedFileSource(write_clip(tmp_path / "clip.mp4"), loops=2)
    assert (source.width, source.height, source.fps) == (64, 48, 50.0)
    frames = list(source.frames())
    pts = [frame.pts for frame in frames]
    assert len(frames) == 20 and frames[0].time_base == Fraction(1, 1_000_000)
    assert pts[:3] == [0, 20_000, 40_000] and pts[10] == 200_000  # loop 2 starts one frame after loop 1 ends
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert frames[10].image.mean() == pytest.approx(frames[0].image.mean(), abs=3)


@pytest.mark.skipif(loopback_device_present(), reason="a v4l2loopback device exists here")
def test_without_a_loopback_device_the_command_says_how_to_make_one(tmp_path: Path, capsys) -> None:
    from stream.cli import main

    # the pack does not exist: the device check must come first, before any model loads
    clip = write_clip(tmp_path / "clip.mp4")
    assert main(["camera", "--input", str(clip), "--pack", str(tmp_path / "none")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and LOOPBACK_HINT in lines[0]


def test_camera_needs_an_output(tmp_path: Path) -> None:
    from stream.commands import camera

    with pytest.raises(UserError, match="no output"):
        camera.run(camera_args("--input", str(tmp_path / "x.mp4"), "--no-virtual-cam"))


@pytest.mark.slow
@pytest.mark.skipif(not CLIP.is_file(), reason=f"needs the face clips in {CLIP.parent}")
def test_camera_command_edits_a_looped_clip_into_the_virtual_camera(tmp_path: Path, monkeypatch, capsys) -> None:
    from stream.commands import camera
    from stream.media import virtualcam

    sent: list[np.ndarray] = []

    class RecordingCamera:
        def __init__(self, width: int, height: int, fps: float, device: str | None = None) -> None:
            self.device = device or "/dev/video-test"
            self.size = (height, width)

        def send(self, frame: np.ndarray) -> None:
            assert frame.shape[:2] == self.size
            sent.append(frame)

        def close(self) -> None:
            pass

    monkeypatch.setattr(virtualcam, "VirtualCameraSink", RecordingCamera)
    pack = make_random_pack(tmp_path / "pack").root
    assert camera.run(camera_args("--input", str(CLIP), "--pack", str(pack), "--backend", "torch",
                                  "--edit", "smile=4", "--frames", "12")) == 0
    out = capsys.readouterr().out
    assert "virtual camera: /dev/video-test" in out and "applying smile=4" in out
    assert len(sent) == 12
    # match the output to its input by the wall beside the face, then look at the face (d18: 480x480)
    sources = [frame.image.astype(np.int16) for frame, _ in zip(LoopedFileSource(CLIP, loops=1).frames(), range(40))]
    out_frame = sent[-1].astype(np.int16)
    sides = (slice(None), np.r_[0:60, 420:480])
    best = min(sources, key=lambda image: np.abs(image[sides] - out_frame[sides]).mean())
    assert np.abs(best[sides] - out_frame[sides]).mean() < 1.0
    assert np.abs(best[150:380, 150:330] - out_frame[150:380, 150:330]).mean() > 4


@pytest.mark.parametrize("flag,value", [("--width", "0"), ("--height", "-480"), ("--fps", "1000")])
def test_camera_refuses_an_impossible_size_or_rate(tmp_path: Path, flag: str, value: str) -> None:
    from stream.commands import camera

    clip = write_clip(tmp_path / "clip.mp4")
    with pytest.raises(UserError, match=f"{flag} {value}: must be between 1 and"):
        camera.run(camera_args("--input", str(clip), "--preview", flag, value))
