"""stream/media: decode, encode, audio copy, timestamps, rotation, colour tags, atomic output."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream.errors import MediaError
from stream.media import EncoderSettings, FileSink, FileSource, TestPatternSource
from tests.media_clips import audio_packets, make_clip, video_timestamps

LOSSLESS = EncoderSettings(codec="lossless")


def copy_through(src_path: Path, out: Path, settings: EncoderSettings = LOSSLESS) -> list[np.ndarray]:
    """Decode src_path and write every frame unchanged to out; returns the decoded frames."""
    frames = []
    with FileSource(src_path) as source, FileSink(out, source.info, settings=settings,
                                                  audio=source.audio_stream) as sink:
        for frame in source.frames(on_audio=sink.write_audio):
            frames.append(frame.image)
            sink.write_frame(frame)
    return frames


def decode_all(path: Path) -> list[np.ndarray]:
    with FileSource(path) as source:
        return [frame.image for frame in source.frames()]


def test_variable_frame_rate_timestamps_and_audio_survive(tmp_path: Path) -> None:
    clip = tmp_path / "vfr.mp4"
    # irregular gaps: 40, 40, 100, 10, 40 ... ms
    pts = [0, 40, 80, 180, 190, 230, 300, 301, 350, 420]
    make_clip(clip, frames=len(pts), pts=pts, time_base=Fraction(1, 1000))
    out = tmp_path / "out.mp4"
    copy_through(clip, out, EncoderSettings())
    assert video_timestamps(out) == video_timestamps(clip)
    assert len(video_timestamps(out)) == len(pts)
    original, copied = audio_packets(clip), audio_packets(out)
    assert len(original) > 5
    assert [payload for payload, _ in copied] == [payload for payload, _ in original]
    assert [t for _, t in copied] == [t for _, t in original]


def test_lossless_output_is_bit_exact(tmp_path: Path) -> None:
    clip = tmp_path / "in.mp4"
    make_clip(clip, frames=6, size=(80, 48))
    out = tmp_path / "out.mkv"
    frames_in = copy_through(clip, out)
    frames_out = decode_all(out)
    assert len(frames_out) == len(frames_in) == 6
    for a, b in zip(frames_in, frames_out):
        np.testing.assert_array_equal(a, b)


def test_h264_output_is_close_and_keeps_colour_tags(tmp_path: Path) -> None:
    clip = tmp_path / "in.mp4"
    # full range, BT.709 matrix: both must be declared on the output and used for the conversion
    make_clip(clip, frames=6, size=(64, 64), audio=False, color_range=2, colorspace=1)
    out = tmp_path / "out.mp4"
    frames_in = copy_through(clip, out, EncoderSettings(crf=0))
    frames_out = decode_all(out)
    with av.open(str(out)) as container:
        ctx = container.streams.video[0].codec_context
        assert (int(ctx.color_range), int(ctx.colorspace)) == (2, 1)
    for a, b in zip(frames_in, frames_out):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 3.0


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_is_applied_to_pixels_and_output_is_upright(tmp_path: Path, rotation: int) -> None:
    clip = tmp_path / "rot.mp4"
    stored = make_clip(clip, frames=3, size=(64, 32), audio=False, lossless=True, rotation=rotation)
    with FileSource(clip) as source:
        assert source.info.rotation == rotation % 360
        quarter_turns = rotation // 90
        expected_size = (32, 64) if rotation % 180 else (64, 32)
        assert (source.info.width, source.info.height) == expected_size
        frames = [f.image for f in source.frames()]
    # rotation is counter-clockwise as displayed: np.rot90 turns the stored picture the same way
    np.testing.assert_array_equal(frames[0], np.rot90(stored[0], k=quarter_turns))
    out = tmp_path / "out.mkv"
    copy_through(clip, out)
    with FileSource(out) as upright_file:
        assert upright_file.info.rotation == 0
        np.testing.assert_array_equal(next(upright_file.frames()).image, frames[0])


def test_failed_write_leaves_no_output_and_no_temp_file(tmp_path: Path) -> None:
    clip = tmp_path / "in.mp4"
    make_clip(clip, frames=4)
    out = tmp_path / "out.mp4"
    with FileSource(clip) as source, pytest.raises(RuntimeError), \
            FileSink(out, source.info, audio=source.audio_stream) as sink:
        for frame in source.frames(on_audio=sink.write_audio):
            sink.write_frame(frame)
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    clip = tmp_path / "in.mp4"
    make_clip(clip, frames=3, audio=False)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    with FileSource(clip) as source:
        with pytest.raises(MediaError, match="--overwrite"):
            FileSink(out, source.info)
        with FileSink(out, source.info, overwrite=True) as sink:
            for frame in source.frames():
                sink.write_frame(frame)
    assert len(video_timestamps(out)) == 3


def test_test_pattern_frames_are_deterministic_and_timed() -> None:
    source = TestPatternSource(width=64, height=48, fps=25, count=5)
    frames = list(source.frames())
    assert [f.pts for f in frames] == list(range(5))
    assert frames[1].seconds == pytest.approx(0.04)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    np.testing.assert_array_equal(frames[3].image, source.frame(3))
    assert not np.array_equal(frames[0].image, frames[1].image)
