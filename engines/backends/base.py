"""The Engine protocol every backend implements, and the small types it speaks in.

An engine runs one network at static shapes. Inputs and outputs are float32 (or the graph's own
integer types) whatever the precision inside: an FP16 or INT8 engine converts at its edges, so callers
never care which backend or precision they got.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

from engines.errors import UserError

BackendName = Literal["tensorrt", "onnxruntime", "torch"]
BackendChoice = Literal["auto", "tensorrt", "onnxruntime", "torch"]
Precision = Literal["fp32", "fp16", "int8"]
Device = Literal["cpu", "cuda"]


class TensorSpec(NamedTuple):
    """Static shape and numpy dtype name of one named input or output; unpacks as (shape, dtype)."""

    shape: tuple[int, ...]
    dtype: str = "float32"


@runtime_checkable
class Engine(Protocol):
    """One network compiled for one backend, precision and device."""

    name: BackendName
    precision: Precision
    device: Device
    input_specs: Mapping[str, TensorSpec]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on host arrays; returns host arrays keyed by output name."""
        ...


def as_specs(specs: Mapping[str, tuple]) -> dict[str, TensorSpec]:
    """Normalise {name: (shape, dtype)} (dtype may be a numpy dtype or its name) to TensorSpecs."""
    out = {}
    for name, spec in specs.items():
        # a bare shape (ints, numpy's included) or a (shape, dtype) pair
        shape, dtype = (spec, "float32") if spec and isinstance(spec[0], (int, np.integer)) else spec
        out[name] = TensorSpec(tuple(int(d) for d in shape), np.dtype(dtype).name)
    return out


def check_inputs(inputs: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec],
                 engine: str) -> dict[str, np.ndarray]:
    """Inputs as contiguous arrays of the spec'd dtype; a missing name or wrong shape is a UserError."""
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise UserError(f"{engine}: missing input(s) {missing}; the engine takes {sorted(specs)}")
    feeds = {}
    for name, spec in specs.items():
        array = np.asarray(inputs[name])
        if tuple(array.shape) != spec.shape:
            raise UserError(
                f"{engine}: input {name!r} has shape {tuple(array.shape)}, the engine was built for "
                f"{spec.shape}; build an engine for this shape (engines use static shapes)"
            )
        feeds[name] = np.ascontiguousarray(array, dtype=spec.dtype)
    return feeds
