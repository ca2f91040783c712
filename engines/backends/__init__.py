"""Engines behind one protocol, and `create_engine`, which picks a backend and says why.

`auto` tries TensorRT (needs the tensorrt package and a CUDA GPU), then ONNX Runtime, then PyTorch
(which needs the nn.Module, not just an ONNX file). Each backend's heavy imports happen inside it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from engines.backends.base import (
    BackendChoice,
    BackendName,
    Device,
    Engine,
    Precision,
    TensorSpec,
    as_specs,
    check_inputs,
)
from engines.cache import EngineCache
from engines.errors import MissingDependency, UserError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "BACKEND_CHOICES",
    "PRECISIONS",
    "BackendChoice",
    "BackendName",
    "Device",
    "Engine",
    "Precision",
    "TensorSpec",
    "as_specs",
    "check_inputs",
    "create_engine",
    "resolve_backend",
]

BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)
PRECISIONS: tuple[str, ...] = get_args(Precision)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _default_device(backend: BackendName) -> Device:
    """cuda when this backend can use the visible GPU, else cpu."""
    if backend == "tensorrt":
        return "cuda"
    if not _cuda_available():
        return "cpu"
    if backend == "onnxruntime":
        import onnxruntime

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    return "cuda"


def default_precision(backend: BackendName) -> Precision:
    """fp16 on TensorRT (tensor cores), fp32 elsewhere (fp16 is slower than fp32 on CPUs). build-engines
    and the pipeline share this rule, so engines built ahead are the ones the pipeline looks up."""
    return "fp16" if backend == "tensorrt" else "fp32"


def resolve_backend(choice: BackendChoice, have_module: bool, precision: Precision) -> tuple[BackendName, str]:
    """(backend, reason) for a --backend choice on this machine; raises when an explicit choice cannot run."""
    if choice not in BACKEND_CHOICES:
        raise UserError(f"unknown backend {choice!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if choice != "auto":
        return choice, "requested"
    reasons = []
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append("tensorrt not installed")
    elif not _cuda_available():
        reasons.append("tensorrt installed but no CUDA GPU")
    else:
        return "tensorrt", "TensorRT and a CUDA GPU are available"
    if importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime", "; ".join(reasons) + " -> onnxruntime"
    reasons.append("onnxruntime not installed")
    if have_module and precision != "int8":
        return "torch", "; ".join(reasons) + " -> torch"
    raise MissingDependency("no backend can run this: " + "; ".join(reasons)
                            + " (pip install onnxruntime, or pass the torch module)")


def create_engine(model: nn.Module | str | Path, backend: BackendChoice = "auto",
                  input_specs: Mapping[str, tuple] | None = None, precision: Precision | None = None,
                  threads: int | None = None, *, output_names: Sequence[str] | None = None,
                  device: Device | None = None, cache: EngineCache | None = None) -> Engine:
    """An Engine for model (an nn.Module or an .onnx path) on the chosen backend.

    input_specs ({name: (shape, dtype)}) is required for a module and read from the file for ONNX.
    A module bound for onnxruntime/tensorrt is exported once (cached by its weights and shapes).
    device defaults to cuda when the backend can use a visible GPU, else cpu. threads sets CPU intra-op
    threads (onnxruntime: per session; torch: process-wide). precision None: default_precision.
    """
    from torch import nn  # here: importing the protocol (engines.backends.base) stays free of torch

    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    is_module = isinstance(model, nn.Module)
    chosen, reason = resolve_backend(backend, is_module, precision or "fp32")
    precision = precision or default_precision(chosen)
    device = device or _default_device(chosen)
    log.info("backend: %s %s on %s (%s)", chosen, precision, device, reason)
    if chosen == "torch":
        if not is_module:
            raise UserError(f"{model}: the torch backend runs an nn.Module, not an ONNX file; "
                            "use --backend onnxruntime or tensorrt")
        if input_specs is None:
            raise UserError("create_engine: input_specs are required for a torch module")
        from engines.backends.torch_backend import TorchEngine

        return TorchEngine(model, input_specs, output_names or ("output",), precision, device, threads)
    onnx_path = _onnx_for(model, input_specs, output_names, cache)
    if chosen == "tensorrt":
        from engines.backends.tensorrt_backend import TensorRTEngine

        return TensorRTEngine(onnx_path, precision, cache=cache)
    from engines.backends.onnxruntime_backend import OnnxRuntimeEngine

    return OnnxRuntimeEngine(onnx_path, precision, device, threads)


def _onnx_for(model: nn.Module | str | Path, input_specs: Mapping[str, tuple] | None,
              output_names: Sequence[str] | None, cache: EngineCache | None) -> Path:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise UserError(f"{path}: ONNX file not found; export it with `python run_stream.py build-engines`")
        return path
    if input_specs is None:
        raise UserError("create_engine: input_specs are required to export a torch module")
    from engines.export import export_cached

    onnx_dir = cache.root.parent / "onnx" if cache is not None else None
    return export_cached(model, input_specs, output_names or ("output",), onnx_dir)
