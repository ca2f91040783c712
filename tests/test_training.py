"""training/: the fast form of synthesis, the split, balanced contrasts, and the train-pack / distill commands
end to end on a tiny synthetic crop cache (a few steps, a resume, an export, a student)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.nets.stylegan2 import Generator, small_generator_config
from training.data import CACHE_VERSION, ClipCrops, make_split
from training.directions import contrast_groups
from training.losses import psnr, ssim_map
from training.synthesis import synthesize


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
    split = make_split(clips, "b", holdout_frac=0.1)
    assert set(split.heldout_clip) == set(range(20, 30))
    assert set(split.heldout_frames) == {18, 19, 57, 58, 59}
    assert not set(split.train) & (set(split.heldout_frames) | set(split.heldout_clip))
    assert len(split.train) + len(split.heldout_frames) + len(split.heldout_clip) == 60


def test_contrast_groups_are_balanced_within_each_clip():
    scores = np.r_[np.arange(10.0), 100 + np.arange(20.0)]
    clip_id = np.r_[np.zeros(10, int), np.ones(20, int)]
    idx, labels, groups = contrast_groups(scores, clip_id, np.arange(30), frac=0.3)
    for g in (0, 1):
        assert (labels & (groups == g)).sum() == (~labels & (groups == g)).sum()
    # within clip 1, "high" means high for that clip, not high overall
    assert set(idx[(groups == 1) & ~labels]) == {10, 11, 12, 13, 14, 15}


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
