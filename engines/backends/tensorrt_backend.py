"""TensorRT engine (TensorRT 10+ Python API), built from ONNX and cached per GPU and TensorRT version.

Precision lives in the graph, never in builder flags: networks are created strongly typed (the only
mode TensorRT 11 has), so FP16 means an FP16 ONNX graph (converted here with float32 I/O kept) and INT8
means a Q/DQ graph from `calibrate`. I/O goes through torch CUDA tensors allocated once per engine;
their addresses are bound to the execution context at load time and every run enqueues with
execute_async_v3 on the engine's own stream, ordered against the caller's current torch stream.

tensorrt imports lazily (it is the `gpu` extra); the helpers above the class are pure Python so that
tests cover them on machines without a GPU.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from packaging.version import Version

from engines.atomic import atomic_write_bytes
from engines.backends.base import Precision, TensorSpec, check_inputs
from engines.cache import EngineCache, EngineKey, sha256_bytes
from engines.errors import MissingDependency, UserError

log = logging.getLogger(__name__)

MIN_TENSORRT = Version("10.0")
DEFAULT_WORKSPACE_BYTES = 4 << 30
# tensorrt.DataType member name -> torch dtype for the preallocated I/O buffers
TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}


def torch_dtype(trt_dtype_name: str) -> torch.dtype:
    """torch dtype for a tensorrt.DataType member name ("FLOAT", "HALF", ...)."""
    try:
        return TRT_TO_TORCH[trt_dtype_name]
    except KeyError:
        raise UserError(f"tensorrt backend: engine I/O of type {trt_dtype_name} is not supported; "
                        "keep network inputs and outputs float32 (export with keep_io_types)") from None


def numpy_dtype_name(trt_dtype_name: str) -> str:
    """numpy dtype name for host-side specs (bfloat16 has no numpy twin: refused like other exotic I/O)."""
    dtype = torch_dtype(trt_dtype_name)
    if dtype == torch.bfloat16:
        raise UserError("tensorrt backend: bfloat16 engine I/O has no numpy type; keep I/O float32")
    return str(dtype).removeprefix("torch.")


def check_version(version: str) -> None:
    """Refuse TensorRT < 10 (versions compare as versions, never as strings: "9.3" > "10.0" as text)."""
    if Version(version) < MIN_TENSORRT:
        raise MissingDependency(f"TensorRT {version} is too old: this project needs TensorRT >= {MIN_TENSORRT} "
                                "(pip install '.[gpu]')")


def gpu_identity(device_index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of the device engines are built for."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return torch.cuda.get_device_name(device_index), f"{major}.{minor}"


def engine_key(onnx_bytes: bytes, precision: Precision, shapes: Mapping[str, tuple[int, ...]],
               trt_version: str, gpu_name: str, compute_capability: str) -> EngineKey:
    """Cache key of the engine built from onnx_bytes (the graph as handed to the parser)."""
    return EngineKey.create(sha256_bytes(onnx_bytes), precision, shapes, trt_version, gpu_name,
                            compute_capability)


def timing_cache_path(cache: EngineCache, trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU model, shared by all networks built there."""
    tag = sha256_bytes(f"{trt_version}|{gpu_name}|{compute_capability}".encode())[:16]
    return cache.root / f"timing-{tag}.cache"


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise MissingDependency(f"TensorRT is not installed ({err}); on an NVIDIA machine: pip install '.[gpu]'") from err
    check_version(trt.__version__)
    return trt


def build_serialized(onnx_bytes: bytes, source: str, timing_cache: Path, precision: Precision,
                     workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> bytes:
    """Parse onnx_bytes into a strongly typed network and build a serialized engine (plan)."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{source}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":
        # TF32 is on by default and costs ~1e-3 relative error; an fp32 engine is the parity reference
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_blob = timing_cache.read_bytes() if timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a foreign cache only costs time, never correctness
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"{source}: TensorRT failed to build an engine (see the TensorRT log above)")
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine:
    """A deserialized TensorRT engine with preallocated CUDA I/O buffers."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, onnx_path: str | Path, precision: Precision = "fp32", cache: EngineCache | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
        from engines.backends.onnxruntime_backend import graph_for_precision
        from engines.export import check_tensorrt_compatible

        trt = _import_tensorrt()
        if not torch.cuda.is_available():
            raise MissingDependency("tensorrt backend: torch sees no CUDA GPU (a CUDA build of torch and a driver "
                                    "are needed for the I/O buffers)")
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        check_tensorrt_compatible(self.onnx_path)
        onnx_bytes = graph_for_precision(self.onnx_path, precision).SerializeToString()
        cache = cache or EngineCache()
        gpu_name, capability = gpu_identity()
        shapes = _onnx_input_shapes(onnx_bytes)
        key = engine_key(onnx_bytes, precision, shapes, trt.__version__, gpu_name, capability)
        timing = timing_cache_path(cache, trt.__version__, gpu_name, capability)

        def build() -> bytes:
            log.info("building TensorRT %s engine for %s on %s (minutes the first time)", precision,
                     self.onnx_path.name, gpu_name)
            return build_serialized(onnx_bytes, str(self.onnx_path), timing, precision, workspace_bytes)

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        plan = cache.get_or_build(key, build)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:  # verified bytes TensorRT still refuses: rebuild once, never loop
            log.warning("engine cache: %s did not deserialize; rebuilding", cache.path_for(key))
            cache.discard(key)
            self.engine = self._runtime.deserialize_cuda_engine(cache.get_or_build(key, build))
            if self.engine is None:
                raise UserError(f"{self.onnx_path}: TensorRT built an engine it cannot load; check the log")
        self.context = self.engine.create_execution_context()
        self.input_specs: dict[str, TensorSpec] = {}
        output_names = []
        self._buffers: dict[str, torch.Tensor] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype_name = self.engine.get_tensor_dtype(name).name
            buffer = torch.empty(shape, dtype=torch_dtype(dtype_name), device="cuda")
            self._buffers[name] = buffer
            self.context.set_tensor_address(name, buffer.data_ptr())
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_input_shape(name, shape)
                self.input_specs[name] = TensorSpec(shape, numpy_dtype_name(dtype_name))
            else:
                output_names.append(name)
        self.output_names = tuple(output_names)
        # TensorRT syncs extra on the legacy default stream; enqueue on a stream of our own instead
        self._stream = torch.cuda.Stream()

    def run_device(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy inputs (host or device tensors) into the bound buffers and run, ordered after the caller's
        current stream's work and before anything it enqueues next.

        Returns fresh device tensors (clones of the output buffers), so the caller may keep them across runs.
        """
        caller = torch.cuda.current_stream()
        for name, spec in self.input_specs.items():
            # copy_ would broadcast a wrong-sized input into the bound buffer without a word
            if tuple(inputs[name].shape) != spec.shape:
                raise UserError(f"tensorrt engine {self.onnx_path.name}: input {name!r} has shape "
                                f"{tuple(inputs[name].shape)}, the engine was built for {spec.shape}")
            self._buffers[name].copy_(inputs[name], non_blocking=True)
        self._stream.wait_stream(caller)  # inputs are in place before the engine reads them
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise UserError(f"{self.onnx_path}: TensorRT execution failed (see the TensorRT log)")
        caller.wait_stream(self._stream)  # and the caller sees the outputs only once they are written
        return {name: self._buffers[name].clone() for name in self.output_names}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = check_inputs(inputs, self.input_specs, f"tensorrt engine {self.onnx_path.name}")
        outs = self.run_device({name: torch.from_numpy(array) for name, array in feeds.items()})
        return {name: out.cpu().numpy() for name, out in outs.items()}


def _onnx_input_shapes(onnx_bytes: bytes) -> dict[str, tuple[int, ...]]:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    initializers = {t.name for t in model.graph.initializer}
    return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
            for v in model.graph.input if v.name not in initializers}
