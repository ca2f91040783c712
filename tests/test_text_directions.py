"""Text directions: CLIP scores in place of a classifier, on networks with random weights.

Random weights cannot show that "a smiling face" finds a smile; these tests check the computation
(template averaging, scores, grouping by score, the mask) and that the file it writes drives an edit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

import engines
from engines.errors import UserError
from stream.cli import main
from stream.edits.directions import load_direction_set, load_directions
from stream.edits.text import DEFAULT_TEMPLATES, direction_name, sample_codes, text_direction, text_embedding
from tests.random_pack import make_random_pack
from tests.test_clip import TINY, _tiny_state


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    save_file(_tiny_state(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    return folder


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tmp_path_factory.mktemp("pack")).root


def test_direction_names() -> None:
    assert direction_name("a smiling face") == "smiling_face"
    assert direction_name("The  Bald man, with a beard!") == "bald_man_with_a_beard"
    assert direction_name("3 day stubble") == "text_3_day_stubble"
    with pytest.raises(UserError):
        direction_name("!!!")


def test_text_embedding_is_the_renormalised_mean_over_templates(clip_file: Path) -> None:
    model = engines.load_clip(clip_file)
    got = text_embedding(model, "a smiling face")
    with torch.inference_mode():
        each = [F.normalize(model.encode_text(model.tokenize([t.format("a smiling face")]))[0], dim=0)
                for t in DEFAULT_TEMPLATES]
    mean = torch.stack(each).mean(0)
    assert torch.allclose(got, mean / mean.norm(), atol=1e-6) and abs(float(got.norm()) - 1) < 1e-6
    assert not torch.allclose(got, text_embedding(model, "a smiling face", ["{}"]), atol=1e-3)


def test_grouping_by_score_contrasts_within_each_group() -> None:
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((12, 4, 8)).astype(np.float32)
    codes[:6] += 5.0  # group 0 sits far from group 1: a pooled contrast would mix that in
    scores = np.concatenate([np.arange(6.0), np.arange(6.0) + 100])
    groups = np.repeat([0, 1], 6)
    d = text_direction(codes, scores, "x", "y", fraction=1 / 3, groups=groups, layers="all", name="x")
    expect = ((codes[[4, 5]].mean(0) - codes[[0, 1]].mean(0)) + (codes[[10, 11]].mean(0) - codes[[6, 7]].mean(0))) / 2
    np.testing.assert_allclose(d.vector, expect, rtol=1e-5, atol=1e-5)
    pooled = text_direction(codes, scores, "x", "y", fraction=1 / 3, layers="all", name="x")
    assert np.abs(pooled.vector - expect).max() > 1.0  # without groups the top third is all group 1
    with pytest.raises(UserError, match="at least 4"):
        text_direction(codes[:3], scores[:3], "x", "y")


def test_command_writes_directions_the_pipeline_takes(tmp_path: Path, clip_file: Path, pack: Path) -> None:
    out = tmp_path / "text"
    real = engines.load_generator(pack / "generator.safetensors")
    inverted = np.asarray(real.mapping(np.random.default_rng(5).standard_normal((6, 512)).astype(np.float32)))
    np.save(tmp_path / "clip_a.npy", np.repeat(inverted[:, None], real.num_ws, axis=1))
    args = ["directions", "text", "a smiling face", "--neutral", "a face", "--clip", str(clip_file),
            "--pack", str(pack), "--samples", "10", "--codes", str(tmp_path / "clip_a.npy"), "--out", str(out)]
    assert main(args) == 0
    written = load_directions(out / "directions.safetensors")
    direction = written["smiling_face"]
    assert direction.metadata["method"] == "clip-mean-difference" and direction.metadata["faces"] == 16
    assert direction.metadata["grouped"] and direction.metadata["score_spread"] > 0

    # the same direction from scores computed here, independently of stream.edits.text
    model = engines.load_clip(clip_file)
    generator = engines.load_generator(pack / "generator.safetensors")
    codes = np.concatenate([np.load(tmp_path / "clip_a.npy"), sample_codes(generator, 10)])

    def unit(text: str) -> torch.Tensor:
        with torch.inference_mode():
            f = F.normalize(model.encode_text(model.tokenize([t.format(text) for t in DEFAULT_TEMPLATES])), dim=-1)
        return F.normalize(f.mean(0), dim=0)

    with torch.inference_mode():
        images = torch.as_tensor(generator.synthesis(codes))
        x = F.interpolate(((images + 1) / 2).clamp(0, 1), size=(32, 32), mode="bicubic", align_corners=False,
                          antialias=True)
        features = F.normalize(model.encode_image((x - model.mean) / model.std), dim=-1)
    scores = (features @ (unit("a smiling face") - unit("a face"))).numpy()
    groups = np.repeat([0, 1], [6, 10])
    expect = []
    for g, k in ((0, 2), (1, 3)):  # 30% of 6 and of 10 faces, rounded
        member = np.flatnonzero(groups == g)
        order = member[np.argsort(scores[member], kind="stable")]
        expect.append(codes[order[-k:]].mean(0) - codes[order[:k]].mean(0))
    np.testing.assert_allclose(direction.vector, np.mean(expect, axis=0), rtol=1e-4, atol=1e-5)

    # what `file` / `serve` / `camera` do with --directions
    taken = load_direction_set([out / "directions.safetensors"], generator.num_ws, generator.style_dim)
    assert list(taken) == ["smiling_face"] and taken["smiling_face"].layers == direction.layers

    # a second prompt is added to the same file
    assert main(args[:2] + ["a bald man", "--clip", str(clip_file), "--pack", str(pack), "--samples", "8",
                            "--out", str(out)]) == 0
    assert sorted(load_directions(out / "directions.safetensors")) == ["bald_man", "smiling_face"]


def test_command_errors_are_one_line(tmp_path: Path, clip_file: Path, pack: Path, capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((3, 18, 512), np.float32))
    base = ["directions", "text", "a smiling face", "--clip", str(clip_file), "--pack", str(pack), "--out", str(tmp_path)]
    assert main(base + ["--codes", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.npy: shape [3, 18, 512]; expected [N, 8, 512]" in err and "\n" not in err
    save_file(_tiny_state(), str(tmp_path / "bare.safetensors"))
    assert main(base[:3] + ["--clip", str(tmp_path / "bare.safetensors"), "--pack", str(pack), "--out", str(tmp_path)]) == 2
    assert "--clip-activation on the command line" in capsys.readouterr().err
    assert TINY["image_size"] == 32  # the independent scoring above resizes to this
