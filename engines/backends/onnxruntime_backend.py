"""ONNX Runtime engine: CPU or CUDA execution provider, thread count always set explicitly."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from engines.backends.base import Device, Precision, TensorSpec, check_inputs
from engines.errors import MissingDependency, UserError

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def is_qdq_graph(model: onnx.ModelProto) -> bool:
    """True when the graph carries explicit quantisation (QuantizeLinear/DequantizeLinear pairs)."""
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 copy of an FP32 graph with float32 inputs/outputs kept (casts at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def graph_for_precision(onnx_path: Path, precision: Precision) -> onnx.ModelProto:
    """The graph to compile at `precision`: as is (fp32), converted (fp16), or a Q/DQ graph (int8)."""
    model = onnx.load(str(onnx_path))
    if precision == "int8" and not is_qdq_graph(model):
        raise UserError(f"{onnx_path}: INT8 needs a Q/DQ graph; make one with `python run_stream.py calibrate` "
                        "and pass the .int8.onnx file it writes")
    if precision == "fp16":
        return to_fp16(model)
    return model


class OnnxRuntimeEngine:
    """An InferenceSession over one ONNX file; `threads` intra-op threads (default: all cores)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, precision: Precision = "fp32", device: Device = "cpu",
                 threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingDependency(f"onnxruntime is not importable ({err}); pip install onnxruntime") from err
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        self.device = device
        self.threads = threads or os.cpu_count() or 1
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingDependency("onnxruntime has no CUDAExecutionProvider here; "
                                        "on an NVIDIA machine: pip install '.[gpu]' (onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1  # one network, one stream of nodes: parallelism is intra-op
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = graph_for_precision(self.onnx_path, precision)
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        self.input_specs: dict[str, TensorSpec] = {
            i.name: TensorSpec(tuple(i.shape), _ORT_TYPES.get(i.type, "float32")) for i in self.session.get_inputs()
        }
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        log.debug("onnxruntime session %s: %s, %s, %d threads", self.onnx_path.name, precision,
                  self.session.get_providers()[0], self.threads)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = check_inputs(inputs, self.input_specs, f"onnxruntime engine {self.onnx_path.name}")
        outputs = self.session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, outputs))
