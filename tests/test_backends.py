"""Backends behind one Engine protocol: parity between them, backend choice, TensorRT's pure-Python parts."""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from engines.backends import Engine, create_engine, default_precision, resolve_backend
from engines.backends import tensorrt_backend as trt_backend
from engines.backends.onnxruntime_backend import OnnxRuntimeEngine
from engines.backends.timing import random_inputs, time_engine
from engines.backends.torch_backend import TorchEngine
from engines.cache import EngineCache
from engines.errors import MissingDependency, UserError
from engines.export import export_onnx
from tests.test_export import TinyNet, relative_l2, tiny_inputs

SPECS = {"img": ((1, 3, 16, 16), "float32"), "code": ((1, 16), "float32")}
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_GPU_REASON = "needs an NVIDIA GPU and TensorRT (pip install '.[gpu]'); this machine has neither"


@pytest.fixture
def cache(tmp_path) -> EngineCache:
    return EngineCache(tmp_path / "engines")


@pytest.fixture
def feeds() -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in tiny_inputs().items()}


def test_onnxruntime_matches_torch_through_create_engine(feeds, cache):
    module = TinyNet()
    reference = create_engine(module, "torch", SPECS, threads=1, output_names=["out"], device="cpu")
    ort_engine = create_engine(module, "onnxruntime", SPECS, threads=1, output_names=["out"], device="cpu",
                               cache=cache)
    for engine in (reference, ort_engine):
        assert isinstance(engine, Engine) and engine.output_names == ("out",)
        assert engine.input_specs["img"] == ((1, 3, 16, 16), "float32")
    assert ort_engine.threads == 1
    assert relative_l2(ort_engine.run(feeds)["out"], reference.run(feeds)["out"]) <= 1e-4


def test_auto_without_tensorrt_picks_onnxruntime_and_says_why(feeds, cache, caplog):
    with caplog.at_level(logging.INFO, logger="engines.backends"):
        engine = create_engine(TinyNet(), "auto", SPECS, threads=1, output_names=["out"], cache=cache)
    expected = "onnxruntime" if not (HAS_TENSORRT and torch.cuda.is_available()) else "tensorrt"
    assert engine.name == expected
    assert f"backend: {expected}" in caplog.text and "(" in caplog.text
    # no precision given: the rule build-engines uses, so engines it built are the ones looked up
    assert engine.precision == default_precision(expected)


def test_default_precision_is_fp16_only_on_tensorrt():
    assert default_precision("tensorrt") == "fp16"
    assert default_precision("onnxruntime") == default_precision("torch") == "fp32"


def test_resolve_backend_explains_each_fallback(monkeypatch):
    real_find_spec = importlib.util.find_spec
    present = {"tensorrt": True, "onnxruntime": True}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if present.get(name) else None if name in present
                        else real_find_spec(name, *a))
    monkeypatch.setattr("engines.backends._cuda_available", lambda: False)
    assert resolve_backend("auto", True, "fp32") == (
        "onnxruntime", "tensorrt installed but no CUDA GPU -> onnxruntime")
    monkeypatch.setattr("engines.backends._cuda_available", lambda: True)
    assert resolve_backend("auto", True, "fp16")[0] == "tensorrt"
    present.update(tensorrt=False, onnxruntime=False)
    assert resolve_backend("auto", True, "fp32") == (
        "torch", "tensorrt not installed; onnxruntime not installed -> torch")
    with pytest.raises(MissingDependency, match="no backend can run this"):
        resolve_backend("auto", False, "fp32")
    with pytest.raises(UserError, match="unknown backend"):
        resolve_backend("cuda", True, "fp32")  # type: ignore[arg-type]


def test_torch_backend_refuses_onnx_files_and_int8(tmp_path):
    path = export_onnx(TinyNet(), tiny_inputs(), tmp_path / "t.onnx", output_names=["out"])
    with pytest.raises(UserError, match="runs an nn.Module"):
        create_engine(path, "torch")
    with pytest.raises(UserError, match="precision 'int8'"):
        TorchEngine(TinyNet(), SPECS, precision="int8")


def test_int8_needs_a_qdq_graph(tmp_path):
    path = export_onnx(TinyNet(), tiny_inputs(), tmp_path / "t.onnx", output_names=["out"])
    with pytest.raises(UserError, match="INT8 needs a Q/DQ graph.*calibrate"):
        OnnxRuntimeEngine(path, "int8", threads=1)


def test_fp16_graph_keeps_float32_io(tmp_path, feeds):
    path = export_onnx(TinyNet(), tiny_inputs(), tmp_path / "t.onnx", output_names=["out"])
    fp32 = OnnxRuntimeEngine(path, "fp32", threads=1)
    fp16 = OnnxRuntimeEngine(path, "fp16", threads=1)
    assert fp16.input_specs["img"].dtype == "float32"
    out16 = fp16.run(feeds)["out"]
    assert out16.dtype == np.float32
    assert relative_l2(out16, fp32.run(feeds)["out"]) < 1e-2


def test_torch_fp16_on_cpu_runs_and_returns_float32(feeds):
    out = TorchEngine(TinyNet(), SPECS, ["out"], precision="fp16").run(feeds)["out"]
    assert out.dtype == np.float32


def test_wrong_shape_or_missing_input_is_a_user_error(tmp_path, feeds):
    path = export_onnx(TinyNet(), tiny_inputs(), tmp_path / "t.onnx", output_names=["out"])
    engine = OnnxRuntimeEngine(path, threads=1)
    with pytest.raises(UserError, match="built for"):
        engine.run({**feeds, "img": np.zeros((2, 3, 16, 16), np.float32)})
    with pytest.raises(UserError, match="missing input"):
        engine.run({"img": feeds["img"]})
    with pytest.raises(UserError, match="ONNX file not found"):
        create_engine(tmp_path / "nope.onnx", "onnxruntime")


def test_time_engine_reports_median(tmp_path):
    engine = TorchEngine(TinyNet(), SPECS, ["out"])
    timing = time_engine(engine, random_inputs(engine), runs=3, warmup=1)
    assert timing.runs == 3 and 0 < timing.min_ms <= timing.median_ms


# TensorRT: pure-Python parts run everywhere, the GPU parts skip here.

def test_trt_dtype_mapping():
    assert trt_backend.torch_dtype("FLOAT") is torch.float32
    assert trt_backend.torch_dtype("HALF") is torch.float16
    assert trt_backend.numpy_dtype_name("INT8") == "int8"
    assert trt_backend.numpy_dtype_name("BOOL") == "bool"
    with pytest.raises(UserError, match="FP8"):
        trt_backend.torch_dtype("FP8")
    with pytest.raises(UserError, match="bfloat16"):
        trt_backend.numpy_dtype_name("BF16")


@pytest.mark.parametrize("version, ok", [("10.0.1", True), ("10.13.3.9", True), ("11.2.0", True),
                                         ("9.3.0", False), ("8.6.1", False)])
def test_trt_version_compares_as_version(version, ok):
    if ok:
        trt_backend.check_version(version)
    else:
        with pytest.raises(MissingDependency, match=">= 10.0"):
            trt_backend.check_version(version)


def test_trt_engine_key_and_timing_cache(cache):
    shapes = {"wplus": (1, 18, 512)}
    key = trt_backend.engine_key(b"graph", "fp16", shapes, "10.7.0", "NVIDIA H100", "9.0")
    assert key.onnx_sha256 == trt_backend.sha256_bytes(b"graph")
    assert key != trt_backend.engine_key(b"graph2", "fp16", shapes, "10.7.0", "NVIDIA H100", "9.0")
    a = trt_backend.timing_cache_path(cache, "10.7.0", "NVIDIA H100", "9.0")
    b = trt_backend.timing_cache_path(cache, "10.7.0", "NVIDIA L4", "8.9")
    assert a != b and a.parent == cache.root


def test_tensorrt_missing_is_a_clear_error(tmp_path):
    if HAS_TENSORRT:
        pytest.skip("tensorrt is installed here")
    path = export_onnx(TinyNet(), tiny_inputs(), tmp_path / "t.onnx", output_names=["out"])
    with pytest.raises(MissingDependency, match=r"pip install '.\[gpu\]'"):
        create_engine(path, "tensorrt")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason=NO_GPU_REASON)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_torch(tmp_path, feeds, cache, precision):
    module = TinyNet()
    path = export_onnx(module, tiny_inputs(), tmp_path / "t.onnx", output_names=["out"])
    engine = create_engine(path, "tensorrt", precision=precision, cache=cache)
    reference = TorchEngine(module, SPECS, ["out"]).run(feeds)["out"]
    assert relative_l2(engine.run(feeds)["out"], reference) <= (1e-4 if precision == "fp32" else 1e-2)
    again = create_engine(path, "tensorrt", precision=precision, cache=cache)  # from the cache this time
    assert relative_l2(again.run(feeds)["out"], reference) <= (1e-4 if precision == "fp32" else 1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_torch_cuda_graphs_match_eager(feeds):
    module = TinyNet()
    eager = TorchEngine(module, SPECS, ["out"], device="cpu").run(feeds)["out"]
    graphed = TorchEngine(module, SPECS, ["out"], device="cuda", cuda_graphs=True)
    for _ in range(2):  # capture, then replay
        assert relative_l2(graphed.run(feeds)["out"], eager) <= 1e-4


def test_torch_engine_leaves_the_callers_module_alone(feeds):
    module = TinyNet()
    TorchEngine(module, SPECS, ["out"], precision="fp16", channels_last=True)
    assert module.conv1.weight.dtype == torch.float32
    assert module.conv1.weight.is_contiguous()


# The build-engines and bench commands on a tiny random pack.

def _command_args(module, argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_build_engines_and_bench_commands(tmp_path, monkeypatch, capsys):
    from stream.commands import bench, build_engines
    from tests.random_pack import make_random_pack

    monkeypatch.setenv("FACEEDIT_CACHE_DIR", str(tmp_path / "cache"))
    make_random_pack(tmp_path / "pack")
    args = _command_args(build_engines, ["--pack", str(tmp_path / "pack"), "--backend", "onnxruntime",
                                         "--threads", "1", "--batch", "1", "--out", str(tmp_path / "onnx")])
    assert build_engines.run(args) == 0
    table = capsys.readouterr().out
    for network in ("generator b1", "encoder b1", "student-smile b1"):
        assert network in table
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 3
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 3  # what the pipeline will reuse

    args = _command_args(bench, ["--pack", str(tmp_path / "pack"), "--networks", "generator",
                                 "--threads", "1", "--runs", "2"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "1 CPU threads" in out and out.count("generator") == 2  # torch and onnxruntime rows
