import argparse

import numpy as np
import pytest
import torch

from engines.errors import UserError
from engines.nets.stylegan2 import Generator, small_generator_config
from stream.edits.attributes import ATTRIBUTE_NAMES
from stream.edits.directions import (
    Direction,
    discover_mean_difference,
    layer_mask,
    layers_from_norm,
    load_direction,
    load_directions,
    load_ganspace,
    save_directions,
    sefa_directions,
)
from stream.edits.discover import contrast_extremes, discover_direction, quantile_bins, sample_generator
from stream.edits.editor import LatentEdit, apply_edits
from tests.reference_weights import DIRECTIONS, require
from tests.synthetic_face import WarpFaceGenerator, load_bases


# ------------------------------------------------------------------------------------------ layer masks
def test_named_layer_ranges_on_18_and_scaled_to_10():
    assert layer_mask("coarse", 18) == [0, 1, 2, 3]
    assert layer_mask("middle", 18) == [4, 5, 6, 7]
    assert layer_mask("fine", 18) == list(range(8, 18))
    assert layer_mask("0-3,8", 18) == [0, 1, 2, 3, 8]
    assert layer_mask("coarse,fine", 18) == [0, 1, 2, 3] + list(range(8, 18))
    # 64 px generator: 10 entries; the ranges keep their share of the network and tile it
    ranges = [layer_mask(name, 10) for name in ("coarse", "middle", "fine")]
    assert [i for r in ranges for i in r] == list(range(10)) and all(ranges)
    assert layer_mask("8-", 10) == [8, 9]
    assert layer_mask(None, 4) == layer_mask("all", 4) == [0, 1, 2, 3]
    assert layer_mask([3, 1, 1], 4) == [1, 3]


@pytest.mark.parametrize("spec", ["18", "3-1", "eyes", "0-18", [0, 18]])
def test_bad_layer_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        layer_mask(spec, 18)


def test_layers_from_norm_finds_where_the_norm_lies():
    v = np.zeros((18, 512), np.float32)
    v[7:11] = 1.0
    v[2] = 0.2
    assert layers_from_norm(v, 0.9) == [7, 8, 9, 10]
    assert layers_from_norm(v, 1.0) == [2, 7, 8, 9, 10]
    assert layers_from_norm(np.ones((18, 512)), 0.5) == list(range(18))  # a W direction: every layer


# ----------------------------------------------------------------------------------- published files
def test_interfacegan_directions_load_with_their_documented_shapes():
    for name in ("age", "smile"):
        raw = torch.load(require(DIRECTIONS / f"{name}.pt"), weights_only=True, map_location="cpu")
        assert tuple(raw.shape) == (1, 512)
        d = load_direction(DIRECTIONS / f"{name}.pt", 18)
        assert d.name == name and d.vector.shape == (18, 512) and d.layers == list(range(18))
        np.testing.assert_allclose(d.vector, np.repeat(raw.numpy(), 18, axis=0))
        np.testing.assert_allclose(np.linalg.norm(d.vector, axis=1), 1.0, atol=1e-5)
    # pose.pt is [1, 18, 512] and was saved from a GPU: it loads on the CPU
    pose = load_direction(require(DIRECTIONS / "pose.pt"), 18)
    assert pose.vector.shape == (18, 512)
    # W directions (one row, or W+ rows that are all equal) fit any generator size
    assert load_direction(DIRECTIONS / "smile.pt", 10).vector.shape == (10, 512)
    assert load_direction(DIRECTIONS / "pose.pt", 14).vector.shape == (14, 512)


def test_npy_direction_and_wplus_row_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    per_layer = rng.standard_normal((1, 18, 512)).astype(np.float32)
    np.save(tmp_path / "d.npy", per_layer)
    d = load_direction(tmp_path / "d.npy", 18, layers="middle")
    np.testing.assert_array_equal(d.vector, per_layer[0])
    assert d.layers == [4, 5, 6, 7]
    with pytest.raises(UserError, match="18 W\\+ rows"):
        load_direction(tmp_path / "d.npy", 10)
    with pytest.raises(UserError, match="not found"):
        load_direction(tmp_path / "missing.pt", 18)
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(UserError, match="unknown direction file type"):
        load_direction(tmp_path / "x.txt", 18)


def test_ganspace_components_load_at_one_sigma_and_apply():
    path = require(DIRECTIONS / "ganspace_ffhq_pca.pt")
    pca = torch.load(path, weights_only=True, map_location="cpu")
    assert tuple(pca["mean"].shape) == (1, 512) and tuple(pca["comp"].shape) == (80, 1, 512)
    assert tuple(pca["std"].shape) == (80,)
    d = load_ganspace(path, 3, 18, layers="0-6")
    assert d.layers == list(range(7))
    np.testing.assert_allclose(np.linalg.norm(d.vector, axis=1), float(pca["std"][3]), rtol=1e-5)
    w = np.random.default_rng(1).standard_normal((2, 18, 512)).astype(np.float32)
    out = apply_edits(w, [LatentEdit(d, 2.0)])
    np.testing.assert_allclose(out[:, :7] - w[:, :7], np.broadcast_to(2.0 * d.vector[:7], (2, 7, 512)), atol=1e-5)
    np.testing.assert_array_equal(out[:, 7:], w[:, 7:])
    with pytest.raises(UserError, match="component 80"):
        load_ganspace(path, 80, 18)
    with pytest.raises(UserError, match="GANSpace"):
        load_direction(path, 18)


def test_real_directions_compose_on_chosen_layers():
    smile = load_direction(require(DIRECTIONS / "smile.pt"), 18)
    age = load_direction(DIRECTIONS / "age.pt", 18)
    w = np.zeros((18, 512), np.float32)
    out = apply_edits(w, [LatentEdit(smile, 3.0, "4-5"), LatentEdit(age, -2.0, "coarse")])
    np.testing.assert_allclose(out[4], 3.0 * smile.vector[4], atol=1e-6)
    np.testing.assert_allclose(out[0], -2.0 * age.vector[0], atol=1e-6)
    assert not out[6:].any()


# ---------------------------------------------------------------------------------------------- SeFa
def _tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(**small_generator_config(size=16, width=16, style_dim=32, n_mlp=1))


def test_sefa_recovers_a_direction_built_into_the_modulation_weights():
    g = _tiny_generator()
    rng = np.random.default_rng(0)
    u, v = np.linalg.qr(rng.standard_normal((32, 2)))[0].T
    with torch.no_grad():
        # every channel of conv1 (W+ entry 0) reads mostly u, the later convs mostly v
        for name, param in g.named_parameters():
            if name.endswith("modulation.weight"):
                main = u if name.startswith("conv1.") else v
                noise = 0.05 * rng.standard_normal(param.shape)
                signs = rng.choice([-1.0, 1.0], size=(param.shape[0], 1))
                param.copy_(torch.from_numpy(signs * main[None] + noise).float())
    first = sefa_directions(g, k=2, layers=[0])[0]
    assert first.layers == [0] and first.vector.shape == (g.num_ws, 32)
    assert abs(first.vector[0] @ u) > 0.99
    assert abs(sefa_directions(g, k=1)[0].vector[0] @ v) > 0.99


def test_sefa_directions_are_orthonormal_and_match_an_svd():
    g = _tiny_generator()
    dirs = sefa_directions(g, k=4, layers="all")
    basis = np.stack([d.vector[0] for d in dirs])
    np.testing.assert_allclose(basis @ basis.T, np.eye(4), atol=1e-5)
    weights = [p.detach().double() for n, p in g.named_parameters()
               if n.endswith("modulation.weight") and "rgb" not in n]
    a = torch.cat(weights)
    a = a / a.norm(dim=1, keepdim=True)
    top = torch.linalg.svd(a, full_matrices=False).Vh[0].numpy()
    assert abs(top @ basis[0]) > 0.999
    with pytest.raises(UserError, match="modulation"):
        sefa_directions(_NoModulation(), k=1)


class _NoModulation(torch.nn.Module):
    """A module with num_ws but no modulation weights."""

    num_ws = 4

    def __init__(self) -> None:
        super().__init__()


# ----------------------------------------------------------------------------------- mean difference
def test_within_group_contrast_cancels_an_identity_confound():
    """Two people, one smiles in most frames, the other rarely, and they differ a lot in code: the plain
    mean difference mostly points from one person to the other; the within-person contrast finds smile."""
    rng = np.random.default_rng(0)
    num_ws, dim, n = 4, 16, 400
    smile = np.zeros((num_ws, dim))
    smile[2, 0] = 1.0
    identity = np.zeros((num_ws, dim))
    identity[1, 1] = 3.0  # who it is (and how the clip is lit) lives elsewhere in the code
    groups = rng.integers(0, 2, n)
    labels = rng.random(n) < np.where(groups == 1, 0.9, 0.1)
    codes = (groups[:, None, None] * identity + labels[:, None, None] * smile
             + 0.15 * rng.standard_normal((n, num_ws, dim)))

    def cos(d):
        return float((d * smile).sum() / np.linalg.norm(d))

    plain = discover_mean_difference(codes, labels)
    within = discover_mean_difference(codes, labels, groups)
    weighted = discover_mean_difference(codes, labels, groups, balanced=False)
    assert cos(plain) < 0.5
    assert cos(within) > 0.9
    assert cos(weighted) > 0.9
    assert layers_from_norm(within, 0.5) == [2]
    assert 1 in layers_from_norm(plain, 0.5)


def test_mean_difference_skips_groups_without_both_sides_and_reports_none():
    codes = np.arange(6 * 2, dtype=np.float32).reshape(6, 1, 2)
    labels = np.array([1, 0, 1, 1, 0, 0], bool)
    groups = np.array([0, 0, 1, 1, 2, 2])
    # only group 0 has both: code 0 - code 1
    np.testing.assert_allclose(discover_mean_difference(codes, labels, groups), codes[0] - codes[1])
    with pytest.raises(UserError, match="no group"):
        discover_mean_difference(codes, labels, groups, min_per_side=2)
    with pytest.raises(UserError, match="with and"):
        discover_mean_difference(codes, np.ones(6, bool))


# ------------------------------------------------------------------------------- directions file
def test_directions_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    dirs = [Direction("smile", rng.standard_normal((10, 512)), [7, 8, 9], 2.5, "within-clip smile"),
            Direction("eyes", rng.standard_normal((10, 512)), [4, 5])]
    path = save_directions(tmp_path / "d.safetensors", dirs, metadata={"generator_sha256": "abc"})
    loaded = load_directions(path, 10)
    assert set(loaded) == {"eyes", "smile"}
    s = loaded["smile"]
    np.testing.assert_array_equal(s.vector, dirs[0].vector)
    assert (s.layers, s.default_strength, s.description) == ([7, 8, 9], 2.5, "within-clip smile")
    with pytest.raises(UserError, match="10 W\\+ rows"):
        load_directions(path, 18)
    with pytest.raises(UserError, match="distinct names"):
        save_directions(tmp_path / "e.safetensors", [dirs[0], dirs[0]])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError):
        load_directions(tmp_path / "bad.safetensors")
    assert not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------ discovery on a generator known by construction
@pytest.fixture(scope="module")
def generator():
    return WarpFaceGenerator(load_bases())


@pytest.fixture(scope="module")
def population(generator):
    """Sampled codes, their dlib-measured scores [N, 5] and who each face is."""
    codes = np.random.default_rng(0).standard_normal((128, generator.num_ws, generator.dim)).astype(np.float32)
    return codes, generator.attributes(codes), generator.person(codes)


# median over the nine shared clips of each landmark score's standard deviation within the clip
CLIP_SPREAD = np.array([0.16, 0.08, 0.05, 0.05, 0.02])


def _within_person_labels(scores, groups, k):
    """Top half of each person's scores of attribute k: the classifier's verdict, per person."""
    labels = np.zeros(len(scores), bool)
    for g in np.unique(groups):
        member = groups == g
        labels[member] = scores[member, k] > np.median(scores[member, k])
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("attribute,truth", [("smile", "smile"), ("eyes_open", "eyes")])
def test_discovered_direction_moves_its_attribute_most_and_keeps_identity(generator, population, attribute, truth):
    """Sample codes, render, classify from dlib landmarks, contrast within each person: the found
    direction raises its score monotonically with strength, moves the other scores much less and keeps
    the person; a plain mean difference is pulled towards who is in the picture."""
    codes, scores, groups = population
    k = ATTRIBUTE_NAMES.index(attribute)
    within = discover_mean_difference(codes, _within_person_labels(scores, groups, k), groups)
    plain = discover_mean_difference(codes, scores[:, k] > np.median(scores[:, k]))
    true_vector = generator.directions[truth]
    cos = lambda d: float((d * true_vector).sum() / np.linalg.norm(d))
    assert cos(within) > 0.7 and cos(within) > cos(plain)

    direction = Direction(attribute, within, layers_from_norm(within, 0.8))
    assert int(np.flatnonzero(true_vector.any(axis=1))[0]) in direction.layers
    test_codes = np.random.default_rng(1).standard_normal((6, generator.num_ws, generator.dim)).astype(np.float32)
    # unit per score: its spread over the sample, at least its typical spread within a real talking-head clip
    # (so that a score the sample hardly varies, such as mouth_open here, is not judged by landmark noise)
    spread = np.maximum(scores.std(axis=0), CLIP_SPREAD)
    means, ids = [], []
    for strength in (0.0, 1.0, 2.0):
        edited = apply_edits(test_codes, [LatentEdit(direction, strength)])
        means.append(generator.attributes(edited).mean(axis=0) / spread)  # in population std units
        ids.append(generator.identity(edited))
    means = np.array(means)
    assert means[0, k] < means[1, k] < means[2, k]
    change = np.abs(means[2] - means[0])
    assert change[k] > 1.0
    assert all(change[k] > 3 * change[j] for j in range(len(ATTRIBUTE_NAMES)) if j != k), change
    # identity: the edited face stays the same person (dlib distance < 0.6), far closer than another person
    drift = np.linalg.norm(ids[2] - ids[0], axis=1)
    assert drift.max() < 0.6
    others = generator.base_identities
    assert drift.mean() < 0.5 * min(np.linalg.norm(others[i] - others[j]) for i, j in ((0, 1), (0, 2), (1, 2)))


# ------------------------------------------------------------------ sampling a generator, and the command
def test_contrast_extremes_and_quantile_bins():
    values = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0])
    labels, keep = contrast_extremes(values, 1 / 3)
    assert np.flatnonzero(labels).tolist() == [0, 4] and np.flatnonzero(keep & ~labels).tolist() == [1, 5]
    groups = np.array([0, 0, 0, 1, 1, 1])
    labels, keep = contrast_extremes(values, 1 / 3, groups)
    assert np.flatnonzero(labels).tolist() == [0, 4] and np.flatnonzero(keep & ~labels).tolist() == [1, 5]
    assert quantile_bins(np.arange(9), 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(UserError):
        contrast_extremes(values, 0.8)


class _WarpAsLoadedGenerator:
    """WarpFaceGenerator behind engines.LoadedGenerator's interface (mapping is the identity)."""

    latent_avg = None

    def __init__(self, warp: WarpFaceGenerator) -> None:
        self.warp = warp
        self.num_ws, self.style_dim = warp.num_ws, warp.dim

    def mapping(self, z):
        return z

    def synthesis(self, wplus):
        images = np.stack(self.warp.render(wplus)).astype(np.float32)
        return images.transpose(0, 3, 1, 2) / 127.5 - 1.0


@pytest.mark.slow
def test_discover_direction_by_sampling_a_generator(generator):
    samples = sample_generator(_WarpAsLoadedGenerator(generator), 48, truncation=1.0, batch=16)
    assert len(samples.codes) >= 40 and samples.scores.shape == (len(samples.codes), len(ATTRIBUTE_NAMES))
    d = discover_direction(samples, "smile", fraction=0.3, control=["eyes_open"], bins=2)
    row = d.vector[0] / np.linalg.norm(d.vector[0])  # W sampling: every row is the same
    smile_axis = generator.directions["smile"][generator.smile_layer]
    eyes_axis = generator.directions["eyes"][generator.eyes_layer]
    assert row @ smile_axis > 0.5 and row @ smile_axis > abs(row @ eyes_axis)
    assert d.metadata["control"] == ["eyes_open"] and "within 2-quantile bins of eyes_open" in d.description
    with pytest.raises(UserError, match="unknown attribute"):
        discover_direction(samples, "age")
    with pytest.raises(UserError, match="control"):
        discover_direction(samples, "smile", control=["smile"])


def test_directions_command_sefa_list_and_discover(tmp_path, capsys):
    from engines.checkpoints import save_safetensors
    from stream.commands import directions as command

    g = _tiny_generator()
    path = save_safetensors(g, tmp_path / "g.safetensors", "stylegan2-generator", g.config)
    out = tmp_path / "d.safetensors"
    assert command.run(argparse.Namespace(action="sefa", run_action=command._sefa, generator=path, out=out, k=2,
                                          layers="coarse")) == 0
    loaded = load_directions(out, g.num_ws)
    assert set(loaded) == {"sefa0", "sefa1"} and loaded["sefa0"].layers == layer_mask("coarse", g.num_ws)
    assert command.run(argparse.Namespace(action="list", run_action=command._list, file=out, pack=None, num_ws=18)) == 0
    assert "sefa1" in capsys.readouterr().out
    assert command.run(argparse.Namespace(action="list", run_action=command._list,
                                          file=require(DIRECTIONS / "smile.pt"), pack=None, num_ws=18)) == 0
    assert "[1, 512]" in capsys.readouterr().out
    from tests.random_pack import make_random_pack

    make_random_pack(tmp_path / "pack")
    assert command.run(argparse.Namespace(action="list", run_action=command._list, file=None,
                                          pack=tmp_path / "pack", num_ws=18)) == 0
    assert "smile" in capsys.readouterr().out
    # a random generator makes no faces dlib can find: a clear error, not an empty direction
    args = argparse.Namespace(action="discover", run_action=command._discover, generator=path, attribute="smile",
                              out=out, name=None, samples=4, fraction=0.3, control=[], bins=3, layers="auto",
                              truncation=0.7, seed=0)
    with pytest.raises(UserError, match="no face"):
        command.run(args)


def test_direction_set_mixes_published_files_and_project_files(tmp_path):
    from stream.edits.directions import Direction, load_direction_set, save_directions
    from tests.reference_weights import DIRECTIONS, require

    smile = require(DIRECTIONS / "smile.pt")
    own = Direction("mouth_open", np.ones((18, 512), np.float32), [4, 5], 2.0)
    project = save_directions(tmp_path / "own.safetensors", [own])
    found = load_direction_set([project, smile], num_ws=18)
    assert sorted(found) == ["mouth_open", "smile"]
    assert found["smile"].vector.shape == (18, 512)
    assert found["mouth_open"].layers == [4, 5]


def test_directions_list_of_a_dict_that_is_not_ganspace_is_a_user_error(tmp_path):
    """A .pt dict with 'comp' but no 'std' once raised KeyError from `directions list`."""
    from stream.commands import directions as command

    path = tmp_path / "half.pt"
    torch.save({"comp": torch.zeros(3, 1, 512)}, path)
    with pytest.raises(UserError, match="holds a dict"):
        command.run(argparse.Namespace(action="list", run_action=command._list, file=path, pack=None, num_ws=18))


def test_direction_set_refuses_a_direction_of_another_width(tmp_path):
    from stream.edits.directions import Direction, load_direction_set, save_directions

    narrow = save_directions(tmp_path / "narrow.safetensors", [Direction("smile", np.ones((10, 256), np.float32), [2])])
    assert load_direction_set([narrow], num_ws=10, style_dim=256)["smile"].vector.shape == (10, 256)
    with pytest.raises(UserError, match="256 wide but the generator's W is 512"):
        load_direction_set([narrow], num_ws=10, style_dim=512)
