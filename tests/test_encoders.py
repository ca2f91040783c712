"""Encoders: e4e / pSp against the reference outputs, the factory, and the demo pack's DemoEncoder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.errors import CheckpointError
from engines.nets.encoders import DemoEncoder, Encoder4Editing, GradualStyleEncoder, build_e4e_encoder
from tests.reference_weights import REFERENCE, manifest_state_dict, relative_l2, require

MANIFEST = "e4e_encoder_manifest.json"
E4E_CLASSES = [Encoder4Editing, GradualStyleEncoder]


def _on_meta(cls: type[torch.nn.Module], **kwargs: object) -> torch.nn.Module:
    """Build without allocating or initialising ~270M parameters (shapes only)."""
    with torch.device("meta"):
        return cls(**kwargs)


@pytest.mark.parametrize("cls", E4E_CLASSES, ids=lambda c: c.__name__)
def test_state_dict_equals_e4e_manifest(cls: type[torch.nn.Module]) -> None:
    manifest = json.loads(require(REFERENCE / MANIFEST).read_text())[cls.__name__]
    state = _on_meta(cls, num_layers=50, mode="ir_se", stylegan_size=1024).state_dict()
    assert list(state) == list(manifest)
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in manifest.items()}


@pytest.mark.slow
@pytest.mark.parametrize("cls", E4E_CLASSES, ids=lambda c: c.__name__)
def test_manifest_weights_match_reference_codes(cls: type[torch.nn.Module]) -> None:
    ref = np.load(require(REFERENCE / f"e4e_{cls.__name__}_ref.npz"))
    model = _on_meta(cls, num_layers=50, mode="ir_se", stylegan_size=1024)
    model.load_state_dict(manifest_state_dict(MANIFEST, cls.__name__), strict=True, assign=True)
    with torch.inference_mode():
        codes = model.eval()(torch.from_numpy(ref["image"])).numpy()
    assert codes.shape == ref["codes"].shape == (1, 18, 512)
    assert relative_l2(codes, ref["codes"]) <= 1e-4


@pytest.mark.parametrize("opts,cls,num_ws", [
    ({"encoder_type": "Encoder4Editing", "stylegan_size": 1024}, Encoder4Editing, 18),
    ({"encoder_type": "GradualStyleEncoder", "output_size": 256}, GradualStyleEncoder, 14),
    ({"encoder_type": "GradualStyleEncoder"}, GradualStyleEncoder, 18),
])
def test_factory_maps_opts_to_class(opts: dict, cls: type, num_ws: int) -> None:
    with torch.device("meta"):
        model = build_e4e_encoder(opts)
    assert type(model) is cls and model.num_ws == num_ws and len(model.styles) == num_ws


def test_factory_refuses_unknown_encoder_type_naming_the_file() -> None:
    with pytest.raises(CheckpointError, match="e4e_ffhq.pt.*'SingleStyleCodeEncoder'"):
        build_e4e_encoder({"encoder_type": "SingleStyleCodeEncoder"}, source="e4e_ffhq.pt")
    with pytest.raises(CheckpointError, match="e4e_ffhq.pt: malformed"):
        build_e4e_encoder({"encoder_type": "Encoder4Editing", "stylegan_size": "big"}, source="e4e_ffhq.pt")


@pytest.mark.parametrize("size,num_ws", [(64, 10), (96, 10), (128, 12)])
def test_demo_encoder_shapes_and_config_round_trip(size: int, num_ws: int) -> None:
    encoder = DemoEncoder(size=size, num_ws=num_ws, style_dim=64).eval()
    with torch.inference_mode():
        codes = encoder(torch.rand(2, 3, size, size) * 2 - 1)
    assert codes.shape == (2, num_ws, 64) and torch.isfinite(codes).all()
    clone = DemoEncoder(**json.loads(json.dumps(encoder.config)))
    assert {k: v.shape for k, v in clone.state_dict().items()} == \
        {k: v.shape for k, v in encoder.state_dict().items()}


def test_demo_encoder_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="size"):
        DemoEncoder(size=100, num_ws=10)
    with pytest.raises(ValueError, match="middle_end"):
        DemoEncoder(size=64, num_ws=6)


def test_demo_encoder_exports_to_onnx_and_matches_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = DemoEncoder(size=64, num_ws=10).eval()
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    path = tmp_path / "demo_encoder.onnx"
    torch.onnx.export(encoder, (img,), str(path), input_names=["img"], output_names=["codes"], dynamo=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ours = session.run(None, {"img": img.numpy()})[0]
    with torch.inference_mode():
        ref = encoder(img).numpy()
    assert ours.shape == (1, 10, 512)
    assert relative_l2(ours, ref) <= 1e-4
