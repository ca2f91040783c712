"""PyTorch engine: the reference backend. float32 or float16, channels-last and CUDA graphs on GPU."""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from engines.backends.base import Device, Precision, TensorSpec, as_specs, check_inputs
from engines.errors import UserError

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
CUDA_GRAPH_WARMUP = 3  # iterations on a side stream before capture, as torch.cuda.graphs advises


class TorchEngine:
    """Runs an nn.Module at fixed input specs. Inputs and outputs stay float32 at the edges.

    On CUDA, channels_last and cuda_graphs default to on: the whole forward is captured once into a
    CUDA graph over static input buffers and replayed, which removes per-kernel launch overhead (the
    1024 generator launches hundreds of small kernels at batch 1).
    """

    name = "torch"

    def __init__(self, module: nn.Module, input_specs: Mapping[str, tuple],
                 output_names: Sequence[str] = ("output",), precision: Precision = "fp32",
                 device: Device = "cpu", threads: int | None = None, channels_last: bool | None = None,
                 cuda_graphs: bool | None = None) -> None:
        if precision not in _DTYPES:
            raise UserError(f"torch backend: precision {precision!r} is not supported (use fp32 or fp16; "
                            "INT8 runs from a calibrated Q/DQ graph on onnxruntime or tensorrt)")
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("torch backend: device cuda requested but torch sees no CUDA GPU")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide in torch; stated so benchmarks report it
        self.precision = precision
        self.device = device
        self.input_specs: dict[str, TensorSpec] = as_specs(input_specs)
        self.output_names = tuple(output_names)
        self.channels_last = device == "cuda" if channels_last is None else channels_last
        self.use_cuda_graphs = device == "cuda" if cuda_graphs is None else cuda_graphs
        if self.use_cuda_graphs and device != "cuda":
            raise UserError("torch backend: CUDA graphs need device cuda")
        self.dtype = _DTYPES[precision]
        if precision != "fp32" or device != "cpu" or self.channels_last:
            # .to() converts in place: the caller's module (e.g. a LoadedGenerator's synthesis) stays as it was
            module = copy.deepcopy(module)
        module = module.eval().to(device=device, dtype=self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: dict[str, torch.Tensor] = {}
        self._static_out: tuple[torch.Tensor, ...] = ()

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        if self.channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = self.module(*(inputs[name] for name in self.input_specs))
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self.output_names):
            raise UserError(f"torch backend: module returned {len(outs)} outputs, expected {self.output_names}")
        return outs

    def _capture(self, inputs: Mapping[str, torch.Tensor]) -> None:
        self._static_in = {name: tensor.clone() for name, tensor in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CUDA_GRAPH_WARMUP):
                self._forward(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._forward(self._static_in)
        log.debug("torch backend: captured a CUDA graph")

    @torch.inference_mode()
    def run_device(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on tensors (any device); returns float32 tensors on self.device, owned by the caller."""
        prepared = {name: self._prepare(inputs[name]) for name in self.input_specs}
        if not self.use_cuda_graphs:
            outs = self._forward(prepared)
        else:
            if self._graph is None:
                self._capture(prepared)
            for name, tensor in prepared.items():
                self._static_in[name].copy_(tensor)
            self._graph.replay()
            outs = tuple(t.clone() for t in self._static_out)
        return {name: out.float().contiguous() for name, out in zip(self.output_names, outs)}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = check_inputs(inputs, self.input_specs, "torch engine")
        outs = self.run_device({name: torch.from_numpy(array) for name, array in feeds.items()})
        return {name: out.cpu().numpy() for name, out in outs.items()}
