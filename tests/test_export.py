"""ONNX export at static shapes, ORT-vs-torch parity, and the static TensorRT compatibility check."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from engines.errors import UserError
from engines.export import (
    TensorRTIncompatible,
    check_tensorrt_compatible,
    export_cached,
    export_onnx,
    find_tensorrt_problems,
    graph_io_specs,
    module_fingerprint,
)
from tests.reference_weights import relative_l2

PARITY_RTOL = 1e-4  # relative L2, float32


class TinyNet(nn.Module):
    """Conv -> modulation on activations -> conv, the shape of an export-safe styled conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.affine = nn.Linear(16, 8)
        self.conv2 = nn.Conv2d(8, 3, 3, padding=1)
        self.register_buffer("noise", torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)))

    def forward(self, img: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(img), 0.2)
        x = x * self.affine(code)[:, :, None, None] + 0.1 * self.noise
        return torch.tanh(self.conv2(x))


class DynamicWeightConv(nn.Module):
    """A StyleGAN2-style modulated conv done the TensorRT-hostile way: weights computed from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, img: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        weight = self.weight * style.view(1, 3, 1, 1)
        return F.conv2d(img, weight, padding=1)


def tiny_inputs(batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"img": torch.randn(batch, 3, 16, 16, generator=g), "code": torch.randn(batch, 16, generator=g)}


@pytest.mark.parametrize("batch", [1, 4])
def test_export_matches_torch_at_static_shapes(tmp_path, batch):
    import onnxruntime as ort

    module = TinyNet().eval()
    inputs = tiny_inputs(batch)
    path = export_onnx(module, inputs, tmp_path / "tiny.onnx", output_names=["out"])
    model = onnx.load(str(path))
    assert 17 <= model.opset_import[0].version <= 18
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)
    specs, outputs = graph_io_specs(path)
    assert specs == {"img": ((batch, 3, 16, 16), "float32"), "code": ((batch, 16), "float32")}
    assert outputs == ("out",)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        want = module(**inputs).numpy()
    assert relative_l2(got, want) <= PARITY_RTOL
    check_tensorrt_compatible(path)  # noise is a constant, convs have initializer weights


@pytest.mark.slow  # the first dynamo export in a process costs ~10 s of torch.export set-up
def test_dynamo_exporter_is_selectable(tmp_path):
    pytest.importorskip("onnxscript")
    path = export_onnx(TinyNet(), tiny_inputs(), tmp_path / "d.onnx", output_names=["out"], exporter="dynamo")
    check_tensorrt_compatible(path)


def test_sequence_inputs_need_names(tmp_path):
    with pytest.raises(UserError, match="one input name per example input"):
        export_onnx(TinyNet(), tuple(tiny_inputs().values()), tmp_path / "x.onnx", input_names=["img"])


def test_dynamic_weight_conv_is_refused_with_a_clear_message(tmp_path):
    path = export_onnx(DynamicWeightConv(), {"img": torch.randn(1, 3, 8, 8), "style": torch.randn(1, 3)},
                       tmp_path / "dyn.onnx")
    with pytest.raises(TensorRTIncompatible, match=r"takes its weight .* at run time.*export_safe"):
        check_tensorrt_compatible(path)


def _graph(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_unsupported_random_custom_and_dynamic_are_all_listed():
    nodes = [
        helper.make_node("RandomNormalLike", ["x"], ["n"]),
        helper.make_node("Unique", ["x"], ["u"]),
        helper.make_node("FusedConv", ["x"], ["f"], domain="com.microsoft"),
        helper.make_node("Add", ["n", "x"], ["y"]),
    ]
    model = _graph(nodes, [_value("x", ["batch", 4])], [_value("y", ["batch", 4])])
    problems = "\n".join(find_tensorrt_problems(model))
    assert "bake noise in" in problems
    assert "no importer for Unique" in problems
    assert "custom op of domain 'com.microsoft'" in problems
    assert "dynamic shape" in problems


def test_weight_through_constant_folding_chain_is_accepted():
    weight = onnx.numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    scale = onnx.numpy_helper.from_array(np.float32(2.0), "s")
    nodes = [helper.make_node("Mul", ["w", "s"], ["w2"]), helper.make_node("Conv", ["x", "w2"], ["y"])]
    model = _graph(nodes, [_value("x", [1, 1, 4, 4])], [_value("y", [1, 2, 4, 4])], [weight, scale])
    assert find_tensorrt_problems(model) == []


def test_asymmetric_quantisation_is_refused():
    zero = onnx.numpy_helper.from_array(np.uint8(128), "zp")
    scale = onnx.numpy_helper.from_array(np.float32(0.1), "sc")
    nodes = [helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"])]
    model = _graph(nodes, [_value("x", [1, 4])], [_value("y", [1, 4])], [zero, scale])
    problems = find_tensorrt_problems(model)
    assert len(problems) == 2 and "uint8 zero point" in problems[0]


def test_unreadable_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf \xff\xff")
    with pytest.raises(UserError, match="not a readable ONNX file"):
        check_tensorrt_compatible(bad)


def test_export_cache_reuses_by_weights(tmp_path):
    module = TinyNet()
    specs = {"img": (1, 3, 16, 16), "code": (1, 16)}
    first = export_cached(module, specs, ["out"], tmp_path)
    assert export_cached(module, specs, ["out"], tmp_path) == first
    with torch.no_grad():
        module.conv1.bias.add_(1.0)
    assert export_cached(module, specs, ["out"], tmp_path) != first
    assert module_fingerprint(module, specs, ["out"]) != module_fingerprint(module, {**specs, "code": (2, 16)}, ["out"])


def test_fingerprint_sees_settings_that_are_not_weights():
    """A generator with conv_clamp traces to another graph than the same weights without it."""
    from engines.nets.stylegan2 import Generator, small_generator_config

    plain = Generator(**small_generator_config(8, width=8))
    clamped = Generator(**small_generator_config(8, width=8), conv_clamp=256.0)
    clamped.load_state_dict(plain.state_dict())
    specs = {"wplus": ((1, plain.num_ws, plain.style_dim), "float32")}
    assert module_fingerprint(plain, specs, ["image"]) != module_fingerprint(clamped, specs, ["image"])


# The project's networks (random weights): export, TensorRT check, ONNX Runtime parity.

def _parity(module: nn.Module, inputs: dict[str, torch.Tensor], path) -> float:
    import onnxruntime as ort

    module = module.eval()
    export_onnx(module, inputs, path, output_names=["out"])
    check_tensorrt_compatible(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        want = module(*inputs.values()).numpy()
    return relative_l2(got, want)


class _Synthesis(nn.Module):
    """Generator.synthesis as a module: the training-time form with weight-modulated convolutions."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, wplus: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesis(wplus)


@pytest.mark.parametrize("batch", [1, 2])
def test_small_generator_parity(tmp_path, batch):
    from engines.nets.stylegan2 import Generator, small_generator_config

    torch.manual_seed(0)
    generator = Generator(**small_generator_config(64)).eval()
    wplus = torch.randn(batch, generator.num_ws, 512)
    assert _parity(generator.export_safe(), {"wplus": wplus}, tmp_path / "g.onnx") <= PARITY_RTOL
    with torch.no_grad():  # and the export-safe form is the generator's own function
        assert relative_l2(generator.export_safe()(wplus).numpy(), generator.synthesis(wplus).numpy()) <= 1e-5


@pytest.mark.slow  # the dynamo exporter takes ~20 s on two cores even for a 16 px generator
def test_training_form_synthesis_is_refused(tmp_path):
    from engines.nets.stylegan2 import Generator, small_generator_config

    generator = Generator(**small_generator_config(16, width=16)).eval()
    inputs = {"wplus": torch.randn(1, generator.num_ws, 512)}
    with pytest.raises(UserError, match="ONNX export of _Synthesis failed.*export_safe"):
        export_onnx(_Synthesis(generator), inputs, tmp_path / "s.onnx")  # TorchScript cannot trace it at all
    pytest.importorskip("onnxscript")
    path = export_onnx(_Synthesis(generator), inputs, tmp_path / "s.onnx", exporter="dynamo")
    with pytest.raises(TensorRTIncompatible, match="takes its weight .* at run time"):
        check_tensorrt_compatible(path)


def test_demo_encoder_and_student_parity(tmp_path):
    from engines.nets.encoders import DemoEncoder
    from engines.nets.student import ResidualStudent

    torch.manual_seed(0)
    student = ResidualStudent()
    with torch.no_grad():
        for parameter in student.parameters():  # its last conv starts at zero: make the delta non-trivial
            parameter.normal_(0, 0.05)
    assert _parity(DemoEncoder(), {"img": torch.rand(1, 3, 64, 64) * 2 - 1}, tmp_path / "e.onnx") <= PARITY_RTOL
    assert _parity(student, {"img": torch.rand(2, 3, 128, 128) * 2 - 1}, tmp_path / "s.onnx") <= PARITY_RTOL


@pytest.mark.slow
def test_rosinality_1024_generator_parity(tmp_path):
    from engines.nets.stylegan2 import Generator

    torch.manual_seed(0)
    generator = Generator(1024).eval()
    assert generator.num_ws == 18
    assert _parity(generator.export_safe(), {"wplus": torch.randn(1, 18, 512)}, tmp_path / "g.onnx") <= PARITY_RTOL


@pytest.mark.slow
def test_e4e_encoder_parity(tmp_path):
    from engines.nets.encoders import Encoder4Editing

    torch.manual_seed(0)
    encoder = Encoder4Editing()
    inputs = {"img": torch.rand(1, 3, 256, 256) * 2 - 1}
    assert _parity(encoder, inputs, tmp_path / "e4e.onnx") <= PARITY_RTOL
