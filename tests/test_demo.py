"""`demo`: the sample clip builder and the command end to end (random-weight pack in a tmp folder)."""
from __future__ import annotations

from pathlib import Path

import pytest

from stream import cli
from stream.media import FileSource
from stream.sample import build_sample_clip
from tests.media_clips import audio_packets, video_timestamps
from tests.random_pack import make_random_pack


def test_sample_clip_has_video_and_audio(tmp_path: Path) -> None:
    clip = build_sample_clip(tmp_path / "sample.mp4", seconds=1.0, fps=25, size=256)
    with FileSource(clip) as source:
        assert (source.info.width, source.info.height) == (256, 256)
        frames = [f.image for f in source.frames()]
    assert len(frames) == 25
    assert (frames[0] != frames[-1]).any()  # the camera moves
    assert len(audio_packets(clip)) > 10


@pytest.mark.slow
def test_demo_writes_side_by_side_with_timings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys) -> None:
    pack = make_random_pack(tmp_path / "pack").root
    monkeypatch.setattr(cli, "COMMANDS", {"demo": "demo"})
    out = tmp_path / "demo" / "demo.mp4"
    assert cli.main(["demo", "-o", str(out), "--pack", str(pack), "--backend", "torch", "--seconds", "1"]) == 0
    printed = capsys.readouterr().out
    sample = out.with_name("demo_input.mp4")
    assert f"wrote {out}" in printed and "(gan path)" in printed and "ms/call" in printed
    assert "\nmotion " in printed  # the edit moved the face's own pixels
    with FileSource(out) as edited:
        assert (edited.info.width, edited.info.height) == (1024, 512)
    assert video_timestamps(out) == video_timestamps(sample)
    assert audio_packets(out) == audio_packets(sample)


@pytest.mark.parametrize("extra, match", [(["--edit", "nonsense"], "NAME=STRENGTH"),
                                          (["-o", "FILE/demo.mp4"], "cannot create its folder")])
def test_demo_rejects_bad_arguments_before_building_the_sample(tmp_path: Path, capsys, extra, match) -> None:
    """One error line and exit 2, with no sample clip (or folder) left behind."""
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    out = tmp_path / "demo" / "demo.mp4"
    argv = ["demo", "-o", str(out), "--pack", str(make_random_pack(tmp_path / "pack").root)]
    argv += [str(blocker / "demo.mp4") if item == "FILE/demo.mp4" else item for item in extra]
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err
    assert not out.parent.exists()
