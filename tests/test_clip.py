"""CLIP: tokenizer and network against ../shared/reference, the three checkpoint formats, and the
TorchScript reader refusing an archive that would run code."""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import engines
from engines.errors import CheckpointError
from engines.nets.clip import ClipModel
from engines.nets.clip_tokenizer import ClipTokenizer
from tests.reference_weights import REFERENCE, manifest_state_dict, relative_l2, require

# torch.jit writes the OpenAI-like fixtures (never reads them); it warns that it is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

MANIFEST = "clip_manifest.json"
TOL = 1e-4
TINY = {"embed_dim": 32, "image_size": 32, "patch_size": 16, "vision_width": 64, "vision_layers": 2,
        "vision_mlp_width": 96, "text_width": 64, "text_layers": 2, "text_mlp_width": 128}
# config -> (activation, suffix of its outputs in the reference npz)
CONFIGS = {"ViT-B-32-quickgelu": ("quickgelu", ""), "ViT-B-32": ("gelu", "_gelu")}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(require(REFERENCE / "clip_ViT-B-32_ref.npz")))


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = ClipModel(**TINY)
    with torch.no_grad():  # LayerNorms away from the identity, so a swapped key would show
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                p.add_(0.1 * torch.randn_like(p))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _features(model: ClipModel, image: torch.Tensor, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        return model.encode_image(image).numpy(), model.encode_text(model.tokenize(prompts)).numpy()


def _direct(state: dict[str, torch.Tensor], activation: str, **config: object) -> ClipModel:
    model = ClipModel(**{**TINY, **config, "activation": activation})
    model.load_state_dict(state, strict=True)
    return model.eval()


def _to_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip keys -> transformers CLIPModel keys (the reference README's table, inverted)."""
    names = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
             "positional_embedding": "text_model.embeddings.position_embedding.weight",
             "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
             "visual.class_embedding": "vision_model.embeddings.class_embedding",
             "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
             "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
             "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
             "visual.ln_post.weight": "vision_model.post_layernorm.weight",
             "visual.ln_post.bias": "vision_model.post_layernorm.bias", "logit_scale": "logit_scale"}
    parts = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    out: dict[str, torch.Tensor] = {"text_projection.weight": sd["text_projection"].t().contiguous(),
                                    "visual_projection.weight": sd["visual.proj"].t().contiguous(),
                                    "text_model.embeddings.position_ids": torch.arange(77)[None]}
    for key, value in sd.items():
        if key in names:
            out[names[key]] = value
            continue
        if "resblocks" not in key:
            continue
        tower = "vision_model" if key.startswith("visual.") else "text_model"
        index, rest = key.split("resblocks.")[1].split(".", 1)
        prefix = f"{tower}.encoder.layers.{index}."
        if rest.startswith("attn.in_proj_"):
            kind = rest.rsplit("_", 1)[1]
            for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{name}_proj.{kind}"] = chunk.contiguous()
        else:
            part, leaf = rest.rsplit(".", 1)
            out[f"{prefix}{parts[part]}.{leaf}"] = value
    return out


class _Tree(nn.Module):
    """A module tree holding tensors by state_dict key, to be scripted into an OpenAI-like archive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _write_torchscript(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """A TorchScript archive laid out like OpenAI's: the module tree, plus its three int64 scalars.
    (torch.jit writes the fixture; the loader under test never uses torch.jit.)"""
    root = _Tree()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Tree())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value.to(dtype), requires_grad=False))
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(name, torch.tensor(value))
    torch.jit.save(torch.jit.script(root), str(path))


# ------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_matches_reference_tokens(ref: dict[str, np.ndarray]) -> None:
    tokenizer = ClipTokenizer()
    prompts = [str(p) for p in ref["prompts"]]
    assert np.array_equal(tokenizer(prompts).numpy(), ref["tokens"])
    assert [len(tokenizer.encode(p)) + 2 for p in prompts] == list(ref["token_lengths"])
    # open_clip's quirk: the special names typed in a prompt become the special ids
    assert tokenizer.encode("<end_of_text>") == [tokenizer.end_id]


def test_preprocess_matches_reference_normalisation(ref: dict[str, np.ndarray]) -> None:
    with torch.device("meta"):
        model = ClipModel()
    model.mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    model.std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = model.preprocess(torch.from_numpy(ref["image_u8"]))
    assert np.abs(x.numpy() - ref["image"]).max() < 1e-5
    hwc = ref["image_u8"][0].transpose(1, 2, 0)  # one numpy image, height x width x RGB
    assert torch.equal(model.preprocess(hwc), x)
    big = model.preprocess(np.repeat(np.repeat(hwc, 2, axis=0), 3, axis=1))  # 448 x 672: resized, centre crop
    assert big.shape == (1, 3, 224, 224)


def test_state_dict_equals_manifest() -> None:
    manifest = json.loads(require(REFERENCE / MANIFEST).read_text())["ViT-B-32"]
    with torch.device("meta"):
        state = ClipModel().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in manifest.items()}


# ------------------------------------------------------------------------------------ reference parity
@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_open_clip_safetensors_matches_reference(tmp_path: Path, ref: dict[str, np.ndarray], config: str) -> None:
    activation, suffix = CONFIGS[config]
    save_file(manifest_state_dict(MANIFEST, config), str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 512, **({"quick_gelu": True} if activation == "quickgelu" else {})}}))
    model = engines.load_clip(tmp_path)  # the folder; the activation from open_clip_config.json
    assert model.config["activation"] == activation
    image, text = _features(model, torch.from_numpy(ref["image"]), [str(p) for p in ref["prompts"]])
    assert relative_l2(image, ref[f"image_features{suffix}"]) <= TOL
    assert relative_l2(text, ref[f"text_features{suffix}"]) <= TOL
    if not suffix:
        i, t = (torch.nn.functional.normalize(torch.from_numpy(a), dim=-1) for a in (image, text))
        assert relative_l2((model.logit_scale.exp() * i @ t.T).numpy(), ref["logits_per_image"]) <= TOL


@pytest.mark.slow
def test_transformers_folder_and_openai_archive_match_reference(tmp_path: Path, ref: dict[str, np.ndarray],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    state = manifest_state_dict(MANIFEST, "ViT-B-32-quickgelu")
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(_to_transformers(state), str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps({"text_config": {"hidden_act": "quick_gelu"},
                                                "vision_config": {"hidden_act": "quick_gelu"}}))
    archive = tmp_path / "ViT-B-32.pt"
    _write_torchscript(state, archive, torch.float32)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    image_in = torch.from_numpy(ref["image"])
    for path in (hf, archive):
        model = engines.load_clip(path)
        assert model.config["activation"] == "quickgelu"
        image, text = _features(model, image_in, [str(p) for p in ref["prompts"]])
        assert relative_l2(image, ref["image_features"]) <= TOL, path
        assert relative_l2(text, ref["text_features"]) <= TOL, path


# ---------------------------------------------------------------------------------- formats (tiny nets)
def test_formats_load_the_same_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _tiny_state()
    image = torch.randn(2, 3, 32, 32)
    expect = _features(_direct(state, "gelu"), image, ["a face", "a smiling face"])

    bare = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, bare)
    training = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {
        "module." + k: (v.reshape(1) if k == "logit_scale" else v) for k, v in state.items()}}, training)
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({k: v.half() for k, v in _to_transformers(state).items()}, str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps({"text_config": {"hidden_act": "gelu"},
                                                "vision_config": {"hidden_act": "gelu"}}))
    for path in (bare, training):
        model = engines.load_clip(path, activation="gelu")
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
        for got, want in zip(_features(model, image, ["a face", "a smiling face"]), expect):
            assert relative_l2(got, want) < 1e-6, path
    model = engines.load_clip(hf)  # float16 in the file: float32 after loading, rounded weights
    assert model.config["activation"] == "gelu" and model.text_projection.dtype == torch.float32
    for got, want in zip(_features(model, image, ["a face", "a smiling face"]), expect):
        assert 0 < relative_l2(got, want) < 5e-3

    archive = tmp_path / "ViT-B-32.pt"
    _write_torchscript(state, archive, torch.float16)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    model = engines.load_clip(archive)
    assert model.config["activation"] == "quickgelu"  # OpenAI's archives: QuickGELU
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].half().float()), key


def test_missing_activation_and_wrong_networks_are_one_line_errors(tmp_path: Path) -> None:
    state = _tiny_state()
    bare = tmp_path / "weights.safetensors"
    save_file(state, str(bare))
    with pytest.raises(CheckpointError, match=r"weights.safetensors: the file does not say which MLP activation") as err:
        engines.load_clip(bare)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="activation must be one of"):
        engines.load_clip(bare, activation="relu")  # type: ignore[arg-type]
    assert engines.load_clip(bare, activation="quickgelu").config["vision_layers"] == 2

    resnet = tmp_path / "rn50.safetensors"
    save_file({**state, "visual.layer1.0.conv1.weight": torch.zeros(1)}, str(resnet))
    with pytest.raises(CheckpointError, match="ResNet image tower"):
        engines.load_clip(resnet, activation="quickgelu")
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "visual.head.weight": torch.zeros(1)}, str(extra))
    with pytest.raises(CheckpointError, match="do not fit a ViT CLIP.*visual.head.weight"):
        engines.load_clip(extra, activation="gelu")
    with pytest.raises(CheckpointError, match="no CLIP weights in this folder"):
        engines.load_clip(tmp_path / "..")
    with pytest.raises(CheckpointError, match="not found"):
        engines.load_clip(tmp_path / "nope.pt")


# ------------------------------------------------------------------------------ hostile TorchScript zip
class _RunsCode:
    """Unpickling this calls os.system: what a malicious archive's data.pkl does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _archive_with(path: Path, data_pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ViT-B-32/data.pkl", data_pkl)
        archive.writestr("ViT-B-32/constants.pkl", pickle.dumps(()))
        archive.writestr("ViT-B-32/code/__torch__/model.py", "def forward(self): ...\n")
        archive.writestr("ViT-B-32/version", "4\n")


def test_malicious_torchscript_archive_is_refused_without_running(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    marker = tmp_path / "pwned"
    evil = tmp_path / "ViT-B-32.pt"
    _archive_with(evil, pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(CheckpointError, match=r"ViT-B-32.pt: refused: .*(posix|os)\.system.*nothing from it was run") as err:
        engines.load_clip(evil)
    assert "\n" not in str(err.value) and not marker.exists()

    # the call nested inside a container, not at the top
    buffer = io.BytesIO()
    pickle.Pickler(buffer, protocol=2).dump({"visual": [_RunsCode(marker)]})
    nested = tmp_path / "nested.pt"
    _archive_with(nested, buffer.getvalue())
    with pytest.raises(CheckpointError, match="refused"):
        engines.load_clip(nested)
    assert not marker.exists()

    # a real archive whose data.pkl was swapped for the hostile one, keeping every other entry
    real = tmp_path / "real.pt"
    _write_torchscript(_tiny_state(), real, torch.float32)
    swapped = tmp_path / "swapped.pt"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(swapped, "w") as dst:
        for info in src.infolist():
            data = pickle.dumps(_RunsCode(marker), protocol=2) if info.filename.endswith("/data.pkl") \
                else src.read(info)
            dst.writestr(info.filename, data)
    with pytest.raises(CheckpointError, match="refused"):
        engines.load_clip(swapped)
    assert not marker.exists()


def test_heads_and_options_from_the_config_beside_the_weights(tmp_path: Path) -> None:
    state = _tiny_state()
    image = torch.randn(1, 3, 32, 32)
    (tmp_path / "oc").mkdir()
    save_file(state, str(tmp_path / "oc" / "open_clip_model.safetensors"))
    config = {"model_cfg": {"quick_gelu": True, "vision_cfg": {"width": 64, "head_width": 16},
                            "text_cfg": {"width": 64, "heads": 2}},
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps(config))
    model = engines.load_clip(tmp_path / "oc")
    assert (model.config["vision_heads"], model.config["text_heads"]) == (4, 2)
    assert model.config["mean"] == [0.5] * 3 and model.config["std"] == [0.25] * 3
    expect = _features(_direct(state, "quickgelu", vision_heads=4, text_heads=2), image, ["a face"])
    plain = _features(_direct(state, "quickgelu"), image, ["a face"])  # 64-wide heads: one head each
    for got, want, other in zip(_features(model, image, ["a face"]), expect, plain):
        assert relative_l2(got, want) < 1e-6 and relative_l2(other, want) > 1e-3

    config["model_cfg"]["text_cfg"]["pool_type"] = "last"
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"text_cfg.pool_type='last' builds a CLIP this project does not have"):
        engines.load_clip(tmp_path / "oc")

    (tmp_path / "hf").mkdir()
    save_file(_to_transformers(state), str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text(json.dumps({
        "text_config": {"hidden_act": "gelu", "num_attention_heads": 2},
        "vision_config": {"hidden_act": "gelu", "num_attention_heads": 4}}))
    hf = engines.load_clip(tmp_path / "hf")
    assert (hf.config["activation"], hf.config["vision_heads"], hf.config["text_heads"]) == ("gelu", 4, 2)


@pytest.mark.parametrize("width,heads", [(768, 12), (1024, 16), (1280, 16), (1664, 16)])
def test_vision_heads_without_a_config_follow_open_clips_models(width: int, heads: int) -> None:
    """ViT-B and -L heads are 64 wide; open_clip's ViT-H / bigG ones 80 / 104 wide (16 heads)."""
    from engines.clip_checkpoints import clip_config

    with torch.device("meta"):
        model = ClipModel(vision_width=width, vision_layers=1, vision_mlp_width=4 * width, text_layers=1)
    config = clip_config(Path("weights.safetensors"), model.state_dict(), "gelu")
    assert (config["vision_heads"], config["text_heads"]) == (heads, 8)
