"""training/: the fast form of synthesis, the split, balanced contrasts, and the train-pack / distill commands
end to end on a tiny synthetic crop cache (a few steps, a resume, an export, a student)."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.nets.stylegan2 import Generator, small_generator_config
from engines.errors import UserError
from engines.nets.synthesis import synthesize
from stream.losses import psnr, ssim_map
from tests.media_clips import make_clip, trimmed_copy
from training.data import CACHE_VERSION, ClipCrops, SkippedClip, build_cache, load_cache, make_split
from training.directions import blink_groups, contrast_groups

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


def test_fast_synthesis_matches_generator():
    torch.manual_seed(0)
    g = Generator(**small_generator_config(16, width=16, n_mlp=2))
    w = torch.randn(3, g.num_ws, 512) * 0.5
    assert torch.allclose(synthesize(g, w), g.synthesis(w), atol=1e-4)


def test_ssim_and_psnr_of_identical_images():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim_map(x, x), torch.ones(2, 3, 16, 16), atol=1e-4)
    assert psnr(x, x.clone()).min() > 90
    assert psnr(x, torch.zeros_like(x)).max() < psnr(x, x * 0.9).min()


def _clip(name: str, n: int, size: int = 64, seed: int = 0) -> ClipCrops:
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    lms = np.stack([_face_landmarks(size, gap=0.02 + 0.2 * (i % 4) / 3) for i in range(n)])
    return ClipCrops(name, crops, lms, np.arange(n))


def _face_landmarks(size: int, gap: float) -> np.ndarray:
    """A plausible frontal 68-point layout in a crop of `size` px; `gap` opens the mouth (fraction of size)."""
    s = size
    t = np.linspace(np.pi, 0, 17)
    jaw = np.stack([0.5 + 0.32 * np.cos(t), 0.45 + 0.4 * np.sin(t)], 1)
    brows = np.stack([np.r_[np.linspace(0.27, 0.45, 5), np.linspace(0.55, 0.73, 5)], np.full(10, 0.38)], 1)
    nose = np.stack([np.r_[np.full(4, 0.5), np.linspace(0.45, 0.55, 5)], np.r_[np.linspace(0.45, 0.58, 4), np.full(5, 0.62)]], 1)
    a = np.linspace(0, 2 * np.pi, 7)[:-1]
    eyes = np.concatenate([np.stack([cx + 0.06 * np.cos(a + np.pi), 0.47 + 0.02 * np.sin(a + np.pi)], 1) for cx in (0.38, 0.62)])
    b = np.linspace(0, 2 * np.pi, 13)[:-1]
    outer = np.stack([0.5 - 0.1 * np.cos(b), 0.75 + (0.03 + gap / 2) * np.sin(b)], 1)
    c = np.linspace(0, 2 * np.pi, 9)[:-1]
    inner = np.stack([0.5 - 0.07 * np.cos(c), 0.75 + gap / 2 * np.sin(c)], 1)
    return (np.concatenate([jaw, brows, nose, eyes, outer, inner]) * s).astype(np.float32)


def test_split_holds_out_a_clip_and_the_end_of_the_others():
    clips = [_clip("a", 20), _clip("b", 10), _clip("c", 30)]
    split = make_split(clips, ["b"], holdout_frac=0.1)
    assert set(split.heldout_clip) == set(range(20, 30))
    assert set(split.heldout_frames) == {18, 19, 57, 58, 59}
    assert not set(split.train) & (set(split.heldout_frames) | set(split.heldout_clip))
    assert len(split.train) + len(split.heldout_frames) + len(split.heldout_clip) == 60
    two = make_split(clips, ["a", "c"], holdout_frac=0.1)
    assert set(two.heldout_clip) == set(range(20)) | set(range(30, 60)) and set(two.heldout_frames) == {29}
    with pytest.raises(UserError, match="'x'"):
        make_split(clips, ["a", "x"])


@pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces (real clips)")
def test_cache_skips_a_clip_it_cannot_use_with_one_line(tmp_path: Path):
    """A real HEVC 1080x1920 clip (cut to 3 frames) is aligned; an undecodable file and a clip without a face
    are skipped with their reason, remembered so a later run does not retry them."""
    clips = tmp_path / "clips"
    clips.mkdir()
    trimmed_copy(FACES / "ls01.mp4", clips / "hevc.mp4", 3)
    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    make_clip(clips / "noface.mp4", frames=3, audio=False)
    cache = tmp_path / "crops"
    got = {c.name: c for c in build_cache(clips, cache)}
    assert isinstance(got["hevc"], ClipCrops) and len(got["hevc"]) == 3 and got["hevc"].crops.shape[1:] == (256, 256, 3)
    for name in ("broken", "noface"):
        assert isinstance(got[name], SkippedClip) and got[name].reason.startswith(str(clips / f"{name}.mp4"))
        assert "\n" not in got[name].reason.strip()
    assert "no face" in got["noface"].reason
    assert sorted(p.name for p in cache.iterdir()) == ["broken.skipped", "hevc.npz", "noface.skipped"]
    (clips / "noface.mp4").unlink()  # a second pass reads the markers, it does not decode again
    again = {c.name: c for c in build_cache(clips, cache)}
    assert isinstance(again["broken"], SkippedClip) and [c.name for c in load_cache(cache)] == ["hevc"]


def test_contrast_groups_are_balanced_within_each_clip():
    scores = np.r_[np.arange(10.0), 100 + np.arange(20.0)]
    clip_id = np.r_[np.zeros(10, int), np.ones(20, int)]
    idx, labels, groups = contrast_groups(scores, clip_id, np.arange(30), 0.3, 0.3)
    for g in (0, 1):
        assert (labels & (groups == g)).sum() == (~labels & (groups == g)).sum()
    # within clip 1, "high" means high for that clip, not high overall
    assert set(idx[(groups == 1) & ~labels]) == {10, 11, 12, 13, 14, 15}


def test_blink_frames_are_contrasted_with_open_frames_of_the_same_expression():
    """Smiling narrows the eyes: the open frames matched to a blink are the ones with the blink's smile."""
    eyes = np.array([0.30, 0.30, 0.31, 0.29, 0.30, 0.30, 0.12, 0.13, 0.30, 0.30])
    smile = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    flat = np.zeros(10)
    scores = {"eyes_open": np.r_[eyes, eyes], "smile": np.r_[smile, smile], "mouth_open": np.r_[flat, flat],
              "yaw": np.r_[flat, flat], "pitch": np.r_[flat, flat]}
    clip_id = np.r_[np.zeros(10, int), np.ones(10, int)]
    idx, labels, groups = blink_groups(scores, clip_id, np.r_[np.arange(10), np.arange(10, 16)], matches=2)
    # the second clip's candidates (its first six frames) hold no blink: it is left out
    assert set(groups) == {0}
    assert list(idx[~labels]) == [6, 7] and sorted(idx[labels]) == [4, 4, 5, 5]
    with pytest.raises(ValueError, match="blink"):
        blink_groups({k: v[:6] for k, v in scores.items()}, clip_id[:6], np.arange(6))


def _write_cache(folder: Path) -> None:
    folder.mkdir(parents=True)
    for k, name in enumerate(("p0", "p1", "p2")):
        clip = _clip(name, 12, seed=k)
        np.savez(folder / f"{name}.npz", version=CACHE_VERSION, crops=clip.crops, landmarks=clip.landmarks,
                 frame_index=clip.frame_index)


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.mark.slow
def test_train_pack_resumes_exports_and_distills(tmp_path: Path):
    from stream.commands import distill, train_pack
    from stream.modelpack import load_pack

    run = tmp_path / "run"
    _write_cache(run / "crops")
    common = ["--data", str(tmp_path / "none"), "--run", str(run), "--size", "32", "--generator-width", "16",
              "--encoder-width", "8", "--batch", "4", "--holdout-clip", "p2", "--minutes", "5"]
    assert _run(train_pack, common + ["--max-steps", "2"]) == 0
    first = torch.load(run / "checkpoint.pt", weights_only=True)
    assert first["step"] == 2
    pack_dir = tmp_path / "pack"
    assert _run(train_pack, common + ["--max-steps", "2", "--export", str(pack_dir),
                                      "--sheet", str(tmp_path / "sheet.png"), "--results", str(tmp_path / "R.md")]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4  # resumed, not restarted
    pack = load_pack(pack_dir)
    assert set(pack.load_directions(8)) == {"mouth_open", "smile", "eyes_open"}
    metrics = json.loads((pack_dir / "metrics.json").read_text())
    assert metrics["faces"]["heldout_clip"] == 12
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert "## Demo pack" in (tmp_path / "R.md").read_text()

    assert _run(distill, ["--pack", str(pack_dir), "--run", str(run), "--edit", "mouth_open", "--strength", "1",
                          "--max-steps", "2", "--minutes", "5", "--sheet", str(tmp_path / "student.png")]) == 0
    pack = load_pack(pack_dir)
    student = pack.load_student("mouth_open")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert student(x).shape == x.shape
    assert "Distilled student" in (pack_dir / "MODEL_CARD.md").read_text()

    grown = tmp_path / "grown"
    assert _run(train_pack, ["--data", str(tmp_path / "none"), "--run", str(grown), "--grow-from", str(run),
                             "--minutes", "5", "--max-steps", "1", "--eye-weight", "9", "--uniform-draws"]) == 0
    saved = torch.load(grown / "checkpoint.pt", weights_only=True)
    config = json.loads(saved["config"])
    assert config["size"] == 64 and saved["step"] == 5  # continues the small run's count
    # settings given on the command line reach the grown run; the rest are the small run's
    assert config["eye_weight"] == 9 and not config["balance_expressions"]
    assert config["batch"] == 4 and config["holdout_clips"] == ["p2"]
    assert sorted(p.name for p in (grown / "crops").glob("*.npz")) == ["p0.npz", "p1.npz", "p2.npz"]

    # a new run from the exported pack: its networks and architecture, several held-out clips, the step count on
    tuned = tmp_path / "tuned"
    shutil.copytree(run / "crops", tuned / "crops")
    with pytest.raises(UserError, match="nobody"):  # a clip name that is not there: no run is saved
        _run(train_pack, ["--data", str(tmp_path / "none"), "--run", str(tuned), "--init-from-pack", str(pack_dir),
                          "--holdout-clip", "p1", "nobody", "--minutes", "0"])
    assert not (tuned / "checkpoint.pt").exists()
    assert _run(train_pack, ["--data", str(tmp_path / "none"), "--run", str(tuned), "--init-from-pack", str(pack_dir),
                             "--holdout-clip", "p1", "p2", "--minutes", "0"]) == 0
    saved = torch.load(tuned / "checkpoint.pt", weights_only=True)
    config = json.loads(saved["config"])
    assert config["size"] == 32 and config["holdout_clips"] == ["p1", "p2"] and saved["step"] == 4
    shipped = pack.load_generator().module.state_dict()
    for key in ("generator", "generator_ema"):
        assert all(torch.equal(saved[key][k], v) for k, v in shipped.items())


def test_run_option_reaches_train_pack_and_distill_through_the_cli(tmp_path: Path, capsys):
    """`--run DIR` once overwrote the CLI's entry point (args.run): both commands died with a TypeError."""
    from stream import cli

    run = tmp_path / "run"
    assert cli.main(["train-pack", "--data", str(tmp_path / "none"), "--run", str(run), "--minutes", "0"]) == 2
    assert "no crop cache" in capsys.readouterr().err
    assert not run.exists()  # a failed start leaves no empty run folder
    assert cli.main(["distill", "--pack", str(tmp_path / "nopack"), "--run", str(run)]) == 2
    assert "pack.json" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["train-pack", "--data", str(tmp_path / "none"), "--run", str(blocker), "--minutes", "0"]) == 2
    assert "not a folder" in capsys.readouterr().err
    # a run to grow from that is not one fails before any face is aligned
    assert cli.main(["train-pack", "--run", str(run), "--grow-from", str(tmp_path / "nothing"), "--minutes", "0"]) == 2
    assert "--grow-from" in capsys.readouterr().err and not run.exists()


def test_distill_pairs_cache_is_never_half_written(tmp_path: Path, monkeypatch):
    from stream.commands import distill

    path = tmp_path / "pairs_smile_1.npy"
    distill.save_pairs(path, np.zeros((2, 4, 4, 3), np.uint8))
    assert np.load(path).shape == (2, 4, 4, 3)

    def interrupted(handle, _array):
        handle.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill.save_pairs(tmp_path / "pairs_smile_2.npy", np.zeros(3))
    assert not (tmp_path / "pairs_smile_2.npy").exists() and not list(tmp_path.glob(".*.tmp"))


def _small_state(size: int = 32):
    from training.pack import PackConfig, new_state

    return new_state(PackConfig(size=size, generator_width=16, encoder_width=8, batch=2))


def test_grown_generator_starts_as_the_small_one_upsampled():
    from training.grow import grow_state

    small = _small_state(32)
    big = grow_state(small)
    assert big.config.size == 64 and big.config.start_step == small.step
    codes = torch.randn(2, 8, 512)
    grown_codes = torch.cat([codes, codes[:, -1:], codes[:, -1:]], 1)  # the two new entries copy the last
    with torch.no_grad():
        expected = big.generator.to_rgbs[-1].upsample(synthesize(small.generator_ema, codes))
        got = synthesize(big.generator, grown_codes)
    assert got.shape == (2, 3, 64, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_grown_encoder_reads_a_smooth_image_as_the_small_one_reads_it_downsampled():
    from torch.nn import functional as F

    from training.grow import grow_state

    small = _small_state(32)
    big = grow_state(small)
    image = F.interpolate(torch.rand(2, 3, 8, 8) * 2 - 1, size=64, mode="bilinear", align_corners=False)
    with torch.no_grad():
        want = small.encoder_ema(F.avg_pool2d(image, 2))
        got = big.encoder_ema(image)
        unrelated = small.encoder_ema(F.avg_pool2d(image.flip(0), 2))
    assert got.shape == (2, 10, 512)
    torch.testing.assert_close(got[:, 8], got[:, 9])  # new entries start as copies of the last old one
    error = float((got[:, :8] - want).norm() / want.norm())
    assert error < 0.25 * float((unrelated - want).norm() / want.norm())  # 0.13 of it when written


def test_expression_weights_draw_each_clips_extremes_more_often():
    from training.pack import expression_weights

    gaps = np.r_[np.linspace(0.0, 0.1, 20), np.linspace(0.1, 0.2, 20)]  # clip 1's mouths are all more open
    landmarks = np.stack([_face_landmarks(64, g) for g in gaps])
    clip_id = np.r_[np.zeros(20, int), np.ones(20, int)]
    weights = expression_weights(landmarks, clip_id, tail=0.1)
    for clip in (0, 1):
        member = np.flatnonzero(clip_id == clip)
        assert weights[member[0]] > 1 and weights[member[-1]] > 1  # the clip's least and most open mouths
        assert weights[member[10]] == 1
    assert weights.min() == 1


def test_part_share_is_where_the_change_is():
    from training.edit_metrics import part_share

    crops = np.zeros((2, 40, 40, 3), np.uint8)
    inside, outside = crops.copy(), crops.copy()
    inside[:, 22:28, 12:28] = 50
    outside[:, 2:8, 2:8] = 50
    box = (0.25, 0.5, 0.75, 0.75)
    assert part_share(inside, crops, box) == 1.0
    assert part_share(outside, crops, box) == 0.0


def _row(edit: str, strength: float, change: float, identity: float = 0.99, share: float = 0.8) -> dict:
    return {"edit": edit, "strength": strength, "target_change": change, "identity_cosine": identity,
            "part_share": share, "part_area": 0.1}


def test_calibrated_strength_stops_where_identity_breaks():
    from training.export import calibrate_strength

    rows = [_row("a", -3, -0.1), _row("a", 2, 0.1), _row("a", 4, 0.2), _row("a", 6, 0.3, identity=0.9)]
    assert calibrate_strength(rows) == 4  # 6 changes more but loses identity
    rows[2] = _row("a", 4, 0.05)
    assert calibrate_strength(rows) == 2  # past its peak
    assert calibrate_strength([_row("a", 2, 0.1, identity=0.5), _row("a", 4, 0.2, identity=0.5)]) == 2


def test_default_edit_is_discounted_by_change_outside_its_part():
    from stream.edits.directions import Direction
    from training.export import pick_default

    def direction(name: str) -> Direction:
        return Direction(name, np.zeros((4, 8), np.float32), [0], 4.0, metadata={"score_gap": 0.2})

    rows = [_row("tidy", 4, 0.1, share=0.9), _row("blotchy", 4, 0.15, share=0.3)]
    assert pick_default(rows, [direction("tidy"), direction("blotchy")]) == ("tidy", 1.0)
    rows[1]["part_share"] = 0.9
    assert pick_default(rows, [direction("tidy"), direction("blotchy")]) == ("blotchy", 1.0)


def test_an_edit_that_does_not_move_its_attribute_is_marked():
    from stream.edits.directions import Direction
    from training.export import verify

    def direction() -> Direction:
        return Direction("eyes_open", np.zeros((4, 8), np.float32), [0], 4.0, "opens the eyes", {"score_gap": 0.1})

    good, bad = direction(), direction()
    assert verify(good, {"heldout_frames": [_row("eyes_open", 4, 0.05)], "heldout_clip": [_row("eyes_open", 4, 0.02)]})
    assert good.metadata["verified"] and good.description == "opens the eyes"
    assert not verify(bad, {"heldout_frames": [_row("eyes_open", 4, 0.01)], "heldout_clip": [_row("eyes_open", 4, 0.02)]})
    assert not bad.metadata["verified"] and "does not change the attribute" in bad.description


def test_a_direction_without_training_contrast_never_verifies():
    from stream.edits.directions import Direction
    from training.export import verify

    flat = Direction("eyes_open", np.zeros((4, 8), np.float32), [0], 4.0, "opens the eyes", {"score_gap": -0.01})
    assert not verify(flat, {"heldout_frames": [_row("eyes_open", 4, 0.0)], "heldout_clip": [_row("eyes_open", 4, 0.01)]})


def test_student_learns_a_change_confined_to_a_small_region():
    """Teacher pairs that change only the mouth's region once trained a student that never edited (L1's median is
    zero on the unchanged 90 % of pixels); the student must learn the region's change."""
    from training.distill import DistillConfig, apply_student, train_student

    rng = np.random.default_rng(0)
    inputs = rng.integers(60, 190, (16, 32, 32, 3), dtype=np.uint8)
    targets = inputs.copy()
    targets[:, 20:28, 10:22] += 50  # a brighter patch, about 9 % of the crop
    student, _, _ = train_student(DistillConfig("mouth_open", 1.0, width=8, max_width=16), inputs, targets,
                                  minutes=5, max_steps=300)
    change = apply_student(student, inputs).astype(float) - inputs
    inside = change[:, 20:28, 10:22].mean()
    assert inside > 15 and inside > 5 * abs(change[:, :16].mean())
