"""Bad inputs and outputs: one clear line, exit code 2, no traceback, no output file (built here, per test)."""
from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream import cli
from stream.errors import MediaError
from stream.media import FileSink, FileSource
from tests.media_clips import make_clip


def _truncated(path: Path, faststart: bool) -> Path:
    whole = path.with_name("whole.mp4")
    make_clip(whole, frames=30, options={"movflags": "faststart"} if faststart else None)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    whole.unlink()
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for i in range(10):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 44100, i * 1024, Fraction(1, 44100)
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    return path


def _absurd_y4m(path: Path) -> Path:
    # a raw YUV4MPEG header declaring 16000x16000 (1 GB per frame once decoded), named .mp4
    path.write_bytes(b"YUV4MPEG2 W16000 H16000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 4096)
    return path


def _absurd_mov(path: Path) -> Path:
    # a valid QuickTime file whose sample description is patched to declare 60000x60000 pixels
    with av.open(str(path), "w", format="mov") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, 25)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    entry = data.find(b"raw ", data.find(b"stsd"))
    width_at = entry + 4 + 6 + 2 + 2 + 2 + 4 + 4 + 4  # fourcc, reserved, dref, version, revision, vendor, quality
    assert struct.unpack(">HH", data[width_at:width_at + 4]) == (32, 32)
    data[width_at:width_at + 4] = struct.pack(">HH", 60000, 60000)
    path.write_bytes(bytes(data))
    return path


BAD_INPUTS = {
    "missing": (lambda p: p, "not found"),
    "zero-byte": (lambda p: (p.touch(), p)[1], "empty"),
    "truncated": (lambda p: _truncated(p, faststart=False), "truncated"),
    "truncated-faststart": (lambda p: _truncated(p, faststart=True), "truncated"),
    "text": (lambda p: (p.write_text("this is not a video\n" * 20), p)[1], "not a readable video"),
    "audio-only": (_audio_only, "no video stream"),
    "absurd-y4m": (_absurd_y4m, "16000x16000"),
    "absurd-mov": (_absurd_mov, "not plausible"),
}


def _decode_everything(path: Path) -> None:
    with FileSource(path) as source:
        for _ in source.frames():
            pass


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_raises_one_line_media_error(tmp_path: Path, kind: str) -> None:
    build, words = BAD_INPUTS[kind]
    path = build(tmp_path / "bad.mp4")
    with pytest.raises(MediaError, match=words) as caught:
        _decode_everything(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message


@pytest.fixture
def file_cli(monkeypatch: pytest.MonkeyPatch):
    """cli.main with only the file command registered (the other commands are not under test here)."""
    monkeypatch.setattr(cli, "COMMANDS", {"file": "file"})
    return cli.main


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_file_command_rejects_bad_input(tmp_path: Path, kind: str, file_cli, capsys) -> None:
    build, words = BAD_INPUTS[kind]
    path = build(tmp_path / "bad.mp4")
    out = tmp_path / "out" / "edited.mp4"
    out.parent.mkdir()
    assert file_cli(["file", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]
    assert "Traceback" not in err[0]
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("where", ["missing-folder", "folder-is-a-file", "read-only-folder"])
def test_unwritable_output_folder(tmp_path: Path, where: str, file_cli, capsys) -> None:
    clip = tmp_path / "in.mp4"
    make_clip(clip, frames=3, audio=False)
    if where == "missing-folder":
        out = tmp_path / "nope" / "out.mp4"
    elif where == "folder-is-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out.mp4"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "out.mp4"
    with FileSource(clip) as source, pytest.raises(MediaError, match="out.mp4"):
        FileSink(out, source.info)
    assert file_cli(["file", str(clip), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not out.exists()
