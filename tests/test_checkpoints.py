"""Checkpoints: public formats built from the reference manifests, matched against stored outputs."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import engines
from engines.checkpoints import convert_checkpoint, file_sha256, load_checkpoint, save_safetensors
from engines.errors import CheckpointError
from engines.nets.encoders import DemoEncoder
from engines.nets.student import ResidualStudent
from engines.nets.stylegan2 import Generator, small_generator_config
from tests.reference_weights import REFERENCE, manifest_state_dict, relative_l2, require

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4


def _pool8(img: np.ndarray) -> np.ndarray:
    n, c, h, w = img.shape
    return img.reshape(n, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))


def _small_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(**small_generator_config(32, width=16, style_dim=32)).eval()


# ------------------------------------------------------------------------------------------- rosinality
def test_rosinality_1024_matches_reference(tmp_path: Path) -> None:
    ref = np.load(require(REFERENCE / "rosinality_g1024_ref.npz"))
    state = manifest_state_dict("rosinality_generator_manifest.json", "g_ema@1024")
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    torch.save({"g_ema": state, "latent_avg": torch.zeros(512)}, path)

    g = engines.load_generator(path)
    assert (g.resolution, g.num_ws) == (1024, 18)
    assert g.latent_avg is not None and g.latent_avg.shape == (512,)
    assert relative_l2(g.mapping(ref["z"]), ref["w_from_z"]) <= TOL
    img = g.synthesis(ref["wplus"])
    assert img.shape == (1, 3, 1024, 1024)
    assert relative_l2(_pool8(img), ref["img_pool8"]) <= TOL
    assert relative_l2(img[:, :, 480:544, 480:544], ref["img_crop"]) <= TOL


def test_rosinality_training_checkpoint_with_args_and_optimisers(tmp_path: Path) -> None:
    state = manifest_state_dict("rosinality_generator_manifest.json", "g_ema@256")
    param = torch.nn.Parameter(torch.randn(4, 4))
    optim = torch.optim.Adam([param], lr=0.002, betas=(0.0, 0.99))
    param.sum().backward()
    optim.step()
    args = argparse.Namespace(size=256, latent=512, n_mlp=8, channel_multiplier=2, path="lmdb/ffhq", r1=10.0)
    path = tmp_path / "040000.pt"
    torch.save({"g": state, "d": {"convs.0.0.weight": torch.randn(8, 3, 1, 1)}, "g_ema": state,
                "g_optim": optim.state_dict(), "d_optim": optim.state_dict(), "args": args}, path)

    g = engines.load_generator(path)
    assert (g.resolution, g.num_ws, g.latent_avg) == (256, 14, None)
    for key, value in g.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert g.synthesis(np.zeros((1, 14, 512), np.float32)).shape == (1, 3, 256, 256)


# ---------------------------------------------------------------------------------------------- NVlabs
def test_nvlabs_tiny_pickle_matches_reference() -> None:
    ref = np.load(require(REFERENCE / "nvlabs_tiny64_ref.npz"))
    g = engines.load_generator(REFERENCE / "nvlabs_tiny64.pkl")
    assert (g.resolution, g.num_ws, g.style_dim) == (64, 10, 64)
    assert g.config["conv_clamp"] == 256
    w = g.mapping(ref["z"], truncation_psi=0.7)
    assert relative_l2(np.repeat(w[:, None], g.num_ws, axis=1), ref["ws_psi07"]) <= TOL
    assert relative_l2(g.synthesis(ref["ws_psi07"]), ref["img"]) <= TOL
    fused = g.module.synthesis(torch.from_numpy(ref["ws_psi07"])).detach().numpy()
    assert relative_l2(fused, ref["img"]) <= TOL


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name,writer", [
    ("evil.pkl", "pickle"),           # NVlabs path: restricted unpickler
    ("evil.pt", "pickle"),            # legacy raw pickle through torch.load(weights_only=True)
    ("evil_zip.pt", "torch.save"),    # zip torch file through torch.load(weights_only=True)
])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, name: str, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"G_ema": _RunsCode(marker), "g_ema": _RunsCode(marker)}
    path = tmp_path / name
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        engines.load_generator(path)
    message = str(info.value)
    assert str(path) in message and "refused" in message and "system" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.fixture
def nvlabs_persistent(monkeypatch: pytest.MonkeyPatch):
    """persistent(class_name, state, module_src) -> an object that pickles as NVlabs' persistence does:
    `torch_utils.persistence._reconstruct_persistent_obj(meta)` (a stand-in module, only its name is pickled)."""
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only pickled, never called")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)

    class Persistent:
        def __init__(self, meta: dict) -> None:
            self.meta = meta

        def __reduce__(self):  # type: ignore[override]
            return (_reconstruct_persistent_obj, (self.meta,))

    def persistent(class_name: str, state: dict, module_src: str = "# omitted") -> Persistent:
        return Persistent({"type": "class", "version": 6, "module_src": module_src, "class_name": class_name,
                           "state": state})

    return persistent


def test_nvlabs_module_src_never_runs_and_nested_calls_are_refused(tmp_path: Path, nvlabs_persistent) -> None:
    marker = tmp_path / "pwned"
    src_code = f"import os; os.system('touch {marker}')"
    harmless = tmp_path / "harmless_state.pkl"
    harmless.write_bytes(pickle.dumps({"G_ema": nvlabs_persistent("Generator", {"z_dim": 4}, src_code)}))
    nested = tmp_path / "nested_call.pkl"
    nested.write_bytes(pickle.dumps({"G_ema": nvlabs_persistent("Generator", {"x": _RunsCode(marker)}, src_code)}))
    del sys.modules["torch_utils.persistence"]  # the loader must not need it

    with pytest.raises(CheckpointError, match="NVlabs"):
        load_checkpoint(harmless)  # module_src ignored: the state alone is not a generator
    with pytest.raises(CheckpointError, match="refused.*system"):
        load_checkpoint(nested)
    assert not marker.exists()


def _nvlabs_tree(flat: dict[str, torch.Tensor], persistent, conv_clamp: float | None) -> object:
    """Nest a flat NVlabs G_ema state_dict into persistent modules with the attributes their classes set."""
    def node(prefix: str, class_name: str, attrs: dict) -> object:
        own = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        children = sorted({k[len(prefix):].split(".")[0] for k in flat if k.startswith(prefix)} - set(own))
        modules = {}
        for name in children:
            kind = ("MappingNetwork" if name == "mapping" else "SynthesisNetwork" if name == "synthesis"
                    else "SynthesisBlock" if name.startswith("b") else "ToRGBLayer" if name == "torgb"
                    else "FullyConnectedLayer" if name.startswith(("fc", "affine")) else "SynthesisLayer")
            if kind == "FullyConnectedLayer":
                sub = {"activation": "lrelu", "bias_gain": 0.01} if name.startswith("fc") else \
                    {"activation": "linear", "bias_gain": 1}
            elif kind == "SynthesisLayer":
                sub = {"activation": "lrelu", "up": 2 if name == "conv0" else 1, "conv_clamp": conv_clamp}
            elif kind == "ToRGBLayer":
                sub = {"conv_clamp": conv_clamp}
            elif kind == "SynthesisBlock":
                sub = {"architecture": "skip", "resolution": int(name[1:])}
            elif kind == "SynthesisNetwork":
                sub = {"block_resolutions": [2**i for i in range(2, 11)]}
            else:
                sub = {}
            modules[name] = node(f"{prefix}{name}.", kind, sub)
        params = {k: torch.nn.Parameter(v, requires_grad=False) for k, v in own.items()
                  if not k.endswith(("resample_filter", "noise_const", "w_avg"))}
        buffers = {k: v for k, v in own.items() if k not in params}
        return persistent(class_name, {"_parameters": params, "_buffers": buffers, "_modules": modules, **attrs})

    return node("", "Generator", {"z_dim": 512, "w_dim": 512, "c_dim": 0, "img_resolution": 1024, "img_channels": 3})


def test_nvlabs_1024_layout_converts_onto_rosinality_layout(tmp_path: Path, nvlabs_persistent) -> None:
    flat = manifest_state_dict("nvlabs_generator_manifest.json", "G_ema@1024")
    path = tmp_path / "ffhq.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _nvlabs_tree(flat, nvlabs_persistent, 256.0)}, protocol=4))
    g = engines.load_generator(path)
    assert (g.resolution, g.num_ws, g.config["conv_clamp"]) == (1024, 18, 256.0)
    rosinality = json.loads((REFERENCE / "rosinality_generator_manifest.json").read_text())["g_ema@1024"]
    state = g.module.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in rosinality.items()}
    torch.testing.assert_close(state["convs.15.conv.weight"][0], flat["synthesis.b1024.conv1.weight"])
    torch.testing.assert_close(state["noises.noise_16"][0, 0], flat["synthesis.b1024.conv1.noise_const"])
    torch.testing.assert_close(state["to_rgbs.7.upsample.kernel"], flat["synthesis.b1024.resample_filter"] * 4)
    torch.testing.assert_close(g.latent_avg, flat["mapping.w_avg"])


# ------------------------------------------------------------------------------------------ safetensors
def test_safetensors_round_trip_keeps_function_and_metadata(tmp_path: Path) -> None:
    g = _small_generator()
    src = tmp_path / "small.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.mean_latent(64)[0]}, src)
    dst = tmp_path / "small.safetensors"
    ckpt = convert_checkpoint(src, dst)
    assert ckpt.architecture == "stylegan2-generator"
    with safe_open(str(dst), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["architecture"] == "stylegan2-generator"
    assert meta["source_sha256"] == file_sha256(src)
    assert json.loads(meta["config"])["size"] == 32

    a, b = engines.load_generator(src), engines.load_generator(dst)
    wplus = np.random.default_rng(0).standard_normal((2, a.num_ws, 32)).astype(np.float32)
    np.testing.assert_array_equal(a.synthesis(wplus), b.synthesis(wplus))
    torch.testing.assert_close(a.latent_avg, b.latent_avg)


def test_nvlabs_to_safetensors_keeps_conv_clamp_and_truncation(tmp_path: Path) -> None:
    ref = np.load(require(REFERENCE / "nvlabs_tiny64_ref.npz"))
    dst = tmp_path / "tiny.safetensors"
    convert_checkpoint(REFERENCE / "nvlabs_tiny64.pkl", dst)
    g = engines.load_generator(dst)
    assert g.config["conv_clamp"] == 256
    w = g.mapping(ref["z"], truncation_psi=0.7)
    assert relative_l2(np.repeat(w[:, None], g.num_ws, axis=1), ref["ws_psi07"]) <= TOL
    assert relative_l2(g.synthesis(ref["ws_psi07"]), ref["img"]) <= TOL


def test_save_safetensors_of_a_module_loads_back(tmp_path: Path) -> None:
    g = _small_generator(1)
    path = save_safetensors(g, tmp_path / "g.safetensors", "stylegan2-generator", g.config, source_sha256="abc")
    ckpt = load_checkpoint(path)
    assert ckpt.config["channels"] == {str(k): v for k, v in g.config["channels"].items()}
    for key, value in g.state_dict().items():
        assert torch.equal(ckpt.module.state_dict()[key], value)


def test_demo_encoder_and_student_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = DemoEncoder(size=64, num_ws=10, style_dim=32, width=16).eval()
    latent_avg = torch.randn(32)
    path = save_safetensors(enc, tmp_path / "enc.safetensors", "demo-encoder", enc.config,
                            extra_tensors={"latent_avg": latent_avg})
    loaded = engines.load_encoder(path)
    assert (loaded.input_size, loaded.architecture) == (64, "demo-encoder")
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(img), enc(img) + latent_avg)

    student = ResidualStudent(width=8, depth=1, levels=2).eval()
    with torch.no_grad():
        for p in student.parameters():
            p.normal_(0, 0.1)
    path = save_safetensors(student, tmp_path / "student.safetensors", "student", student.config)
    ckpt = load_checkpoint(path)
    assert ckpt.architecture == "student"
    with torch.no_grad():
        torch.testing.assert_close(ckpt.module(img), student(img))
    with pytest.raises(CheckpointError, match="not a StyleGAN2 generator"):
        engines.load_generator(path)


# ----------------------------------------------------------------------------------------------- errors
def test_clear_errors_for_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(text)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)

    g = _small_generator()
    good = tmp_path / "g.pt"
    torch.save({"g_ema": g.state_dict()}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)

    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(CheckpointError, match="unknown checkpoint contents"):
        load_checkpoint(other)

    st = save_safetensors(g, tmp_path / "g.safetensors", "stylegan2-generator", g.config)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(st.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(broken)

    wrong = tmp_path / "wrong.pt"
    bad_state = dict(g.state_dict())
    bad_state["conv1.conv.weight"] = torch.zeros(1, 16, 16, 5, 5)
    torch.save({"g_ema": bad_state}, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(wrong)
    with pytest.raises(CheckpointError, match="not an encoder"):
        engines.load_encoder(good)


def test_malformed_contents_and_metadata_are_one_line_errors(tmp_path: Path) -> None:
    g = _small_generator()
    cases = {
        "g_ema_tensor.pt": lambda p: torch.save({"g_ema": torch.zeros(3)}, p),
        "not_tensors.pt": lambda p: torch.save({"g_ema": {**g.state_dict(), "extra": 3}}, p),
        "bad_kwargs.safetensors": lambda p: save_safetensors(g, p, "stylegan2-generator", {**g.config, "bogus": 1}),
        "bad_size.safetensors": lambda p: save_safetensors({}, p, "demo-encoder", {"size": 100}),
        "no_encoder.safetensors": lambda p: save_safetensors({}, p, "e4e", {"decoder": None}),
        "opts_text.pt": lambda p: torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "opts": "text"}, p),
        "opts_size.pt": lambda p: torch.save({"state_dict": {"encoder.x": torch.zeros(1)},
                                              "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": "big"}}, p),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(str(path)) and "\n" not in message, message


# ------------------------------------------------------------------------------------------ e4e / pSp
@pytest.mark.slow  # IR-SE-50 + 18 style heads: about 1 GB of weights to fill, save and load
@pytest.mark.parametrize("encoder_type", ["Encoder4Editing", "GradualStyleEncoder"])
def test_e4e_psp_checkpoint_matches_reference(tmp_path: Path, encoder_type: str) -> None:
    ref = np.load(require(REFERENCE / f"e4e_{encoder_type}_ref.npz"))
    encoder_state = manifest_state_dict("e4e_encoder_manifest.json", encoder_type)
    latent_avg = torch.from_numpy(np.random.default_rng(5).standard_normal((18, 512)).astype(np.float32))
    opts = {"encoder_type": encoder_type, "stylegan_size": 1024, "start_from_latent_avg": True,
            "checkpoint_path": None, "lr": 0.0001}
    path = tmp_path / f"{encoder_type}.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder_state.items()}, "latent_avg": latent_avg,
                "opts": opts}, path)

    enc = engines.load_encoder(path)
    assert enc.input_size == 256
    wplus = enc.encode(ref["image"])
    assert wplus.shape == (1, 18, 512)
    assert relative_l2(wplus - latent_avg.numpy()[None], ref["codes"]) <= TOL


@pytest.mark.slow
def test_e4e_checkpoint_with_1024_decoder_through_safetensors(tmp_path: Path) -> None:
    ref = np.load(require(REFERENCE / "rosinality_g1024_ref.npz"))
    enc_ref = np.load(require(REFERENCE / "e4e_Encoder4Editing_ref.npz"))
    encoder_state = manifest_state_dict("e4e_encoder_manifest.json", "Encoder4Editing")
    decoder_state = manifest_state_dict("rosinality_generator_manifest.json", "g_ema@1024")
    state = {**{f"encoder.{k}": v for k, v in encoder_state.items()},
             **{f"decoder.{k}": v for k, v in decoder_state.items()}}
    path = tmp_path / "e4e_ffhq_encode.pt"
    torch.save({"state_dict": state, "latent_avg": torch.zeros(18, 512),
                "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 1024}}, path)
    dst = tmp_path / "e4e.safetensors"
    convert_checkpoint(path, dst)
    for source in (path, dst):
        g = engines.load_generator(source)
        assert (g.resolution, g.num_ws) == (1024, 18)
        assert relative_l2(g.mapping(ref["z"]), ref["w_from_z"]) <= TOL
    enc = engines.load_encoder(dst)
    assert enc.architecture == "e4e"
    assert relative_l2(enc.encode(enc_ref["image"]), enc_ref["codes"]) <= TOL  # latent_avg is zero here


# ---------------------------------------------------------------------------------------------- command
def test_convert_command(tmp_path: Path) -> None:
    src = tmp_path / "g.pt"
    torch.save({"g_ema": _small_generator().state_dict()}, src)
    out = tmp_path / "g.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "run_stream.py", "convert", str(src), "--out", str(out)], cwd=REPO,
                          check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "converted" in done.stdout and "stylegan2-generator" in done.stdout
    assert load_checkpoint(out).architecture == "stylegan2-generator"

    bad = subprocess.run([sys.executable, "run_stream.py", "convert", str(tmp_path / "nope.pt"), "--out", str(out)],
                         cwd=REPO, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr


def test_saved_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """safetensors' save_file leaves 0600 files; a model pack must be readable like any file the user writes."""
    from stream.edits.directions import Direction, save_directions

    reference = tmp_path / "reference"
    reference.write_bytes(b"")  # made the ordinary way: the mode the umask gives
    expected = reference.stat().st_mode & 0o777
    student = ResidualStudent(width=8, depth=1, levels=2, max_width=16)
    weights = save_safetensors(student, tmp_path / "s.safetensors", "student", student.config)
    directions = save_directions(tmp_path / "d.safetensors", [Direction("smile", np.ones((4, 8), np.float32), [1])])
    assert weights.stat().st_mode & 0o777 == expected
    assert directions.stat().st_mode & 0o777 == expected
    assert load_checkpoint(weights).architecture == "student"
