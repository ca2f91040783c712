"""The batch command on this machine: inputs, output names, markers, resume, a bad input among good ones.
(The Ray cluster path: tests/test_cluster.py.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engines.errors import UserError
from stream import cli
from stream.batch import (
    BatchItem,
    BatchSpec,
    collect_inputs,
    completed,
    marker_path,
    output_names,
    plan,
    run_local,
)
from stream.commands.batch import add_arguments
from stream.commands.file import job_config
from tests.media_clips import audio_packets, make_clip, video_timestamps
from tests.random_pack import make_random_pack


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tmp_path_factory.mktemp("pack")).root


def test_inputs_from_folders_lists_and_files_each_once(tmp_path: Path) -> None:
    folder = tmp_path / "day1"
    folder.mkdir()
    for name in ("b.mp4", "a.MOV", "notes.txt"):
        (folder / name).touch()
    listing = tmp_path / "list.txt"
    listing.write_text("# cameras\nday1/a.MOV\n\nelsewhere/c.mkv\n")
    found = collect_inputs([folder, listing, folder / "b.mp4"])
    assert found == [folder / "a.MOV", folder / "b.mp4", tmp_path / "elsewhere" / "c.mkv"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no video files"):
        collect_inputs([empty])


def test_same_stems_get_distinct_stable_names(tmp_path: Path) -> None:
    inputs = [tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mov", tmp_path / "b" / "CLIP.mkv",
              tmp_path / "other.mp4"]
    names = output_names(inputs)
    assert names[3] == "other.mp4"
    assert len({n.casefold() for n in names}) == 4
    assert all(n.casefold().startswith("clip-") for n in names[:3])
    # a name depends on its own input alone: the same input gets it again in another order
    assert output_names(list(reversed(inputs)))[::-1] == names


@pytest.mark.slow
def test_bad_input_is_one_line_and_the_rest_finish_then_resume_skips(pack: Path, tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.backends

    engines_built = []
    real_create = engines.backends.create_engine
    monkeypatch.setattr(engines.backends, "create_engine",
                        lambda *a, **k: engines_built.append(a) or real_create(*a, **k))
    monkeypatch.setattr(cli, "COMMANDS", {"batch": "batch"})
    clips = [tmp_path / "in1" / "clip.mp4", tmp_path / "in2" / "clip.mp4", tmp_path / "in2" / "other.mp4"]
    for i, clip in enumerate(clips):
        clip.parent.mkdir(exist_ok=True)
        make_clip(clip, frames=4 + i, size=(64, 48))
    broken = tmp_path / "in2" / "broken.mp4"
    broken.write_bytes(b"not a video")
    out = tmp_path / "out"
    argv = ["batch", str(clips[0]), str(tmp_path / "in2"), "-o", str(out), "--pack", str(pack),
            "--backend", "torch", "--model", "student", "--edit", "smile=1"]

    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failures) == 1 and "broken.mp4" in failures[0] and "not a readable video" in failures[0]
    assert len(engines_built) == 1, "one worker loads the student once for the whole batch"
    outputs = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(outputs) == 3 and (out / "other.mp4") in outputs
    for clip in clips:
        [output] = [o for o in outputs if o.stem.startswith(clip.stem) and
                    len(video_timestamps(o)) == len(video_timestamps(clip))]
        assert video_timestamps(output) == video_timestamps(clip)
        assert audio_packets(output) == audio_packets(clip)
        assert marker_path(output).is_file()

    assert cli.main(argv) == 1      # only the broken input is tried again
    printed = capsys.readouterr()
    assert "3 of 4 outputs already complete" in printed.out and "3 skipped, 1 failed" in printed.out
    assert len(engines_built) == 2

    # other settings: the outputs are not this batch's; they are named, not replaced
    assert cli.main([*argv[:-1], "smile=0.5"]) == 1
    assert "made with other settings or not by a batch; pass --overwrite" in capsys.readouterr().err


def test_interrupted_batch_leaves_no_partial_output_and_resumes(pack: Path, tmp_path: Path) -> None:
    clips = []
    for name in ("a", "b"):
        clips.append(tmp_path / f"{name}.mp4")
        make_clip(clips[-1], frames=6, size=(64, 48))
    out = tmp_path / "out"
    out.mkdir()
    args = _parse(["x", "-o", str(out), "--pack", str(pack), "--backend", "torch", "--edit", "smile=1"])
    spec = BatchSpec(job_config(args, input=clips[0], output=out / ".template.mp4"))
    items = plan(clips, out)
    outcomes = []

    def interrupt_second(index: int, count: int) -> None:
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_local(spec, items, [None], interrupt_second, outcomes.append)
    assert [o.status for o in outcomes] == ["done", "interrupted"]
    assert sorted(p.name for p in out.iterdir()) == [".a.mp4.done", "a.mp4"]

    todo = [item for item in items if completed(item, spec.settings()) is None]
    assert todo == [items[1]]
    run_local(spec, todo, [None], lambda index, count: None, outcomes.append)
    assert outcomes[-1].status == "done" and video_timestamps(out / "b.mp4") == video_timestamps(clips[1])


def _parse(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_plan_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a folder"):
        plan([tmp_path / "a.mp4"], tmp_path / "missing")
    (tmp_path / "out").mkdir()
    expected = BatchItem(0, tmp_path / "a.mp4", tmp_path / "out" / "a.mp4")
    assert plan([tmp_path / "a.mp4"], tmp_path / "out") == [expected]


@pytest.mark.slow
def test_two_worker_processes_share_the_batch(pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys) -> None:
    monkeypatch.setattr(cli, "COMMANDS", {"batch": "batch"})
    clips = []
    for i in range(4):
        clips.append(tmp_path / f"c{i}.mp4")
        make_clip(clips[-1], frames=3 + i, size=(64, 48))
    (tmp_path / "broken.mp4").write_bytes(b"")
    out = tmp_path / "out"
    assert cli.main(["batch", str(tmp_path), "-o", str(out), "--workers", "2", "--pack", str(pack),
                     "--backend", "torch", "--edit", "smile=1"]) == 1
    printed = capsys.readouterr()
    assert "4 done, 0 skipped, 1 failed" in printed.out and "failed: broken.mp4" in printed.err
    for clip in clips:
        assert video_timestamps(out / clip.name) == video_timestamps(clip)
        assert audio_packets(out / clip.name) == audio_packets(clip)


def test_ray_without_the_extra_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as it does when it is not installed
    monkeypatch.setattr(cli, "COMMANDS", {"batch": "batch"})
    assert cli.main(["batch", str(tmp_path / "a.mp4"), "-o", str(tmp_path / "out"), "--ray", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'faceedit-stream[cluster]'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the cluster extra is not installed")
def test_a_ray_address_where_nothing_answers_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys) -> None:
    import socket

    with socket.socket() as probe:     # a loopback port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(cli, "COMMANDS", {"batch": "batch"})
    clip = tmp_path / "a.mp4"
    clip.touch()
    assert cli.main(["batch", str(clip), "-o", str(tmp_path / "out"), "--ray", f"127.0.0.1:{port}"]) == 2
    assert "nothing answers there" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_tunes_each_video_on_its_worker(pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys) -> None:
    from tests.media_clips import trimmed_copy
    from tests.reference_weights import FACES, require

    monkeypatch.setenv("FACEEDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "COMMANDS", {"batch": "batch"})
    clips = [trimmed_copy(require(FACES / name), tmp_path / name, 6) for name in ("d19.mp4", "d18.mp4")]
    argv = ["batch", *map(str, clips), "-o", str(tmp_path / "out"), "--pack", str(pack), "--backend", "torch",
            "--edit", "smile=1", "--tune", "--tune-steps", "2", "--tune-frames", "2", "--invert-steps", "1"]
    assert cli.main(argv) == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "tuned").glob("*.safetensors"))) == 2  # one generator per video
    for clip in clips:
        assert video_timestamps(tmp_path / "out" / clip.name) == video_timestamps(clip)
    # tuning is part of the settings: the same batch without it does not take these outputs as its own
    assert cli.main([arg for arg in argv if arg != "--tune"]) == 1
    assert "made with other settings" in capsys.readouterr().err
