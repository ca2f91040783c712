"""LPIPS-VGG from the user's files (engines/nets/lpips.py) and its use in per-video tuning.

No LPIPS weights can be downloaded here: the files are written in the two published layouts (torchvision's
VGG16 state dict, LPIPS' vgg.pth heads) from seeded random weights, which is what the loader reads."""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engines.errors import CheckpointError
from engines.nets.lpips import LPIPS, load_lpips
from stream import cli
from stream.config import FaceConfig, ModelConfig, PerceptualFiles
from stream.tuning import ClipNetworks, tune_for_video, tuned_cache, tuning_key
from tests.test_tuning import TINY, clip, random_pack  # noqa: F401  (fixtures)


def write_lpips_files(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(heads, backbone) in LPIPS' and torchvision's key layouts, from seeded random weights."""
    torch.manual_seed(seed)
    model = LPIPS()
    backbone = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    heads = {f"lin{i}.model.1.weight": lin.weight.detach().abs() for i, lin in enumerate(model.lins)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(backbone, folder / "vgg16.pth")
    torch.save(heads, folder / "vgg.pth")
    return folder / "vgg.pth", folder / "vgg16.pth"


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_lpips_files(tmp_path_factory.mktemp("lpips"))


def test_distance_is_zero_for_the_same_image_and_grows_with_the_difference(lpips_files) -> None:
    lpips = load_lpips(*lpips_files)
    torch.manual_seed(1)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    noise = torch.randn_like(image)
    same, small, large = (lpips(image, image + s * noise) for s in (0.0, 0.05, 0.3))
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    assert (small > 0).all() and (large > small).all()
    assert torch.allclose(lpips(image, image + 0.3 * noise), lpips(image + 0.3 * noise, image), rtol=1e-4)


def test_every_head_and_the_backbone_are_read_from_the_files(lpips_files, tmp_path: Path) -> None:
    heads, backbone = lpips_files
    torch.manual_seed(2)
    a, b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    reference = load_lpips(heads, backbone)(a, b)
    state = torch.load(heads, weights_only=True)
    state["lin0.model.1.weight"] = state["lin0.model.1.weight"] * 3
    torch.save(state, tmp_path / "heads.pth")
    assert not torch.allclose(load_lpips(tmp_path / "heads.pth", backbone)(a, b), reference)
    assert not torch.allclose(load_lpips(*write_lpips_files(tmp_path / "other", seed=5))(a, b), reference)
    # (random deep features barely differ, so the last heads' share is below float32's resolution here:
    # that every head is read is checked by refusing a file without one)
    del state["lin4.model.1.weight"]
    torch.save(state, tmp_path / "four_heads.pth")
    with pytest.raises(CheckpointError, match="no 'lin4.model.1.weight'"):
        load_lpips(tmp_path / "four_heads.pth", backbone)


def test_wrong_or_unsafe_files_are_refused_in_one_line(lpips_files, tmp_path: Path) -> None:
    heads, backbone = lpips_files
    with pytest.raises(CheckpointError, match="no 'lin0.model.1.weight'"):
        load_lpips(backbone, backbone)  # the backbone given twice: no heads
    state = torch.load(backbone, weights_only=True)
    state["features.0.weight"] = state["features.0.weight"][:32]
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match="features.0.weight: shape"):
        load_lpips(heads, tmp_path / "narrow.pth")
    (tmp_path / "code.pth").write_bytes(pickle.dumps(print))  # a pickle that would call a function
    with pytest.raises(CheckpointError, match="refused"):
        load_lpips(tmp_path / "code.pth", backbone)


def test_tuning_with_lpips_runs_and_is_its_own_cache_entry(clip: Path, random_pack: Path,  # noqa: F811
                                                           lpips_files, tmp_path: Path) -> None:
    cache = tuned_cache(tmp_path / "cache")
    model, face = ModelConfig(pack=random_pack), FaceConfig()
    settings = replace(TINY, perceptual=PerceptualFiles(*lpips_files))
    plain = tune_for_video(clip, model, face, TINY, cache=cache)
    perceptual = tune_for_video(clip, model, face, settings, cache=cache)
    assert perceptual.tuning is not None and perceptual.path != plain.path
    assert tune_for_video(clip, model, face, settings, cache=cache).tuning is None  # reused
    networks = ClipNetworks.from_model(model)
    other = replace(TINY, perceptual=PerceptualFiles(*write_lpips_files(tmp_path / "other", seed=3)))
    assert tuning_key(clip, networks, "dlib", other).digest() != tuning_key(clip, networks, "dlib", settings).digest()


def test_lpips_options_need_each_other(clip: Path, tmp_path: Path, capsys, lpips_files) -> None:  # noqa: F811
    out = tmp_path / "out.mp4"
    assert cli.main(["file", str(clip), "-o", str(out), "--tune", "--model", "gan", "--lpips", str(lpips_files[0])]) == 2
    assert "--lpips and --lpips-backbone go together" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["file", str(clip), "-o", str(out), "--tune", "--model", "gan", "--lpips", str(tmp_path / "none.pth"),
                     "--lpips-backbone", str(lpips_files[1])]) == 2
    assert "--lpips" in capsys.readouterr().err and not out.exists()
