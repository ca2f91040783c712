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


# ------------------------------------------------------------------------ StyleCLIP global directions
def test_style_space_synthesis_draws_the_same_image_and_exports(tmp_path: Path, pack: Path) -> None:
    import onnxruntime as ort

    from engines.export import export_onnx
    from engines.nets.stylegan2 import StyleSpaceSynthesis

    generator = engines.load_generator(pack / "generator.safetensors")
    synthesis = generator.export_safe()
    wplus = torch.randn(2, generator.num_ws, 512)
    with torch.inference_mode():
        styles = synthesis.styles(wplus)
        flat = torch.cat(styles, dim=1)
        module = StyleSpaceSynthesis(synthesis)
        image = module(flat)
        assert torch.allclose(image, generator.module.synthesis(wplus), atol=1e-4)  # the training-style form
        moved = flat.clone()
        moved[:, 5] += 3.0  # one channel of conv1
        assert (module(moved) - image).abs().max() > 1e-3
    onnx = export_onnx(module, {"styles": flat}, tmp_path / "styles.onnx", output_names=("image",))
    got = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"styles": flat.numpy()})[0]
    assert np.abs(got - image.numpy()).max() < 1e-4


def test_style_change_reaches_every_conv_style_exactly_through_wplus(pack: Path) -> None:
    from stream.edits.global_directions import StyleRelevance, conv_style_layers, style_change_to_wplus

    generator = engines.load_generator(pack / "generator.safetensors")
    synthesis = generator.export_safe()
    rows = [(layer, c) for layer, width in conv_style_layers(synthesis) for c in range(width)]
    relevance = StyleRelevance(np.zeros((len(rows), 32), np.float32), np.ones(len(rows), np.float32),
                               np.array(rows), 1, 5.0)
    change = np.random.default_rng(0).standard_normal(len(rows)).astype(np.float32)
    change[np.random.default_rng(1).random(len(rows)) < 0.7] = 0  # sparse, as after the beta threshold
    dw, rgb = style_change_to_wplus(generator, relevance, change)
    w = torch.randn(1, generator.num_ws, 512)
    with torch.inference_mode():
        before, after = synthesis.styles(w), synthesis.styles(w + torch.from_numpy(dw))
    layers = synthesis.style_layers()
    got = np.concatenate([(after[i] - before[i])[0].numpy() for i, (_, _, is_rgb) in enumerate(layers) if not is_rgb])
    np.testing.assert_allclose(got, change, atol=1e-4)
    rgb_moved = np.concatenate([(after[i] - before[i])[0].numpy() for i, (_, _, is_rgb) in enumerate(layers) if is_rgb])
    assert rgb == pytest.approx(np.linalg.norm(rgb_moved) / np.linalg.norm(change), rel=1e-3)


def test_relevance_follows_its_definition_and_beta_picks_channels(clip_file: Path, pack: Path) -> None:
    from stream.edits.global_directions import compute_relevance, sample_styles, style_change

    model = engines.load_clip(clip_file)
    generator = engines.load_generator(pack / "generator.safetensors")
    relevance = compute_relevance(model, generator, samples=2, alpha=5.0, std_samples=200)
    assert relevance.delta_i.shape == (len(relevance.channels), 32)
    np.testing.assert_allclose(np.linalg.norm(relevance.delta_i, axis=1), 1.0, atol=1e-5)
    # one channel, measured here: the faces' styles moved by -+5 std, unit CLIP feature differences averaged
    row = 40
    layer, c = (int(v) for v in relevance.channels[row])
    synthesis = generator.export_safe()
    with torch.inference_mode():
        base = sample_styles(generator, 2, seed=0)
        std = sample_styles(generator, 200, seed=1)[layer][:, c].std()
        assert relevance.std[row] == pytest.approx(float(std), rel=1e-5)
        feats = []
        for sign in (-1, 1):
            styles = [s.clone() for s in base]
            styles[layer][:, c] += sign * 5.0 * std
            feats.append(F.normalize(model.encode_image(model.preprocess_generated(synthesis.from_styles(styles))), dim=-1))
        expect = F.normalize(F.normalize(feats[1] - feats[0], dim=-1).mean(0), dim=0)
    np.testing.assert_allclose(relevance.delta_i[row], expect.numpy(), atol=1e-4)

    delta_t = relevance.delta_i[row] + 0.01  # a text direction close to that channel's
    change = style_change(relevance, delta_t, beta=0.5)
    r = relevance.delta_i @ (delta_t / np.linalg.norm(delta_t))
    assert np.array_equal(change != 0, np.abs(r) >= 0.5) and change[row] != 0
    assert np.abs(change / relevance.std).max() == pytest.approx(1.0)
    with pytest.raises(UserError, match="no style channel reaches relevance 1.5"):
        style_change(relevance, delta_t, beta=1.5)


def test_global_method_writes_a_direction_and_caches_the_relevance(tmp_path: Path, clip_file: Path, pack: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["directions", "text", "a smiling face", "--method", "global", "--clip", str(clip_file), "--pack", str(pack),
            "--relevance-samples", "1", "--beta", "0.05", "--cache", str(cache), "--out", str(out)]
    assert main(args) == 0
    cached = list(cache.glob("style_relevance_*.safetensors"))
    assert len(cached) == 1
    first = load_directions(out / "directions.safetensors")["smiling_face"]
    assert first.metadata["method"] == "styleclip-global" and first.metadata["channels"] > 0
    assert first.default_strength == 3.0 and first.layers
    stamp = cached[0].stat().st_mtime_ns
    assert main(args + ["--name", "again"]) == 0  # measured once: the second run reads the cache
    assert cached[0].stat().st_mtime_ns == stamp and len(list(cache.iterdir())) == 1
    again = load_directions(out / "directions.safetensors")["again"]
    np.testing.assert_array_equal(again.vector, first.vector)
    generator = engines.load_generator(pack / "generator.safetensors")
    assert "again" in load_direction_set([out / "directions.safetensors"], generator.num_ws, generator.style_dim)
