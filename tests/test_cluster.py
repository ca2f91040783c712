"""The batch on a local Ray cluster that the test starts (2 CPUs, loopback only): every output frame-exact
with its audio, then a batch interrupted with Ctrl-C (SIGINT) and resumed."""
from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream import cli
from stream.batch import marker_path
from tests.media_clips import audio_packets, trimmed_copy, video_timestamps
from tests.reference_weights import FACES, require

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="the cluster extra is not installed: pip install -e '.[cluster]'")

# short real clips with faces and AAC audio, one shorter than the others
CLIPS = (("d18.mp4", 8), ("d20.mp4", 24), ("d19.mp4", 24))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        # tests/conftest.py asks Ray for loopback only
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [trimmed_copy(require(FACES / name), folder / name, frames) for name, frames in CLIPS]


def batch(clips: list[Path], out: Path) -> int:
    return cli.main(["batch", *map(str, clips), "-o", str(out), "--ray", "local", "--workers", "2",
                     "--model", "student", "--backend", "torch", "--edit", "mouth_open=1"])


def assert_frame_exact(clip: Path, output: Path) -> None:
    stamps = video_timestamps(clip)
    assert len(stamps) > 0 and video_timestamps(output) == stamps
    packets = audio_packets(clip)
    assert len(packets) > 3 and audio_packets(output) == packets


@pytest.mark.slow
def test_batch_on_a_local_cluster_every_frame_and_audio(cluster: None, clips: list[Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(cli, "COMMANDS", {"batch": "batch"})
    assert batch(clips, tmp_path) == 0
    assert "3 done, 0 skipped, 0 failed" in capsys.readouterr().out
    for clip in clips:
        assert_frame_exact(clip, tmp_path / clip.name)
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


@pytest.mark.slow
def test_interrupted_cluster_batch_resumes(cluster: None, clips: list[Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(cli, "COMMANDS", {"batch": "batch"})
    # whichever output completes first: which worker starts first, and so which clip ends first, is the
    # cluster's choice (on a loaded machine the shortest clip can be the last one taken)
    markers = [marker_path(tmp_path / clip.name) for clip in clips]
    interrupted = threading.Event()

    def press_ctrl_c_after_the_first_output() -> None:
        deadline = time.monotonic() + 300
        while not any(m.exists() for m in markers) and time.monotonic() < deadline:
            time.sleep(0.02)
        interrupted.set()
        os.kill(os.getpid(), signal.SIGINT)

    # Ctrl-C as a fresh `run_stream.py batch` process gets it, whatever handler an earlier test left behind
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=press_ctrl_c_after_the_first_output, daemon=True).start()
        assert batch(clips, tmp_path) == 130, f"SIGINT handler before this test: {previous!r}"
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted.is_set()
    assert "interrupted" in capsys.readouterr().err
    finished = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert 0 < len(finished) < len(clips)
    leftovers = [p.name for p in tmp_path.iterdir() if ".part" in p.name]
    assert not leftovers, "a stopped job deletes its partial output"

    assert batch(clips, tmp_path) == 0
    printed = capsys.readouterr().out
    assert f"{len(finished)} of {len(clips)} outputs already complete" in printed
    assert f"{len(clips) - len(finished)} done, {len(finished)} skipped, 0 failed" in printed
    for clip in clips:
        assert_frame_exact(clip, tmp_path / clip.name)

