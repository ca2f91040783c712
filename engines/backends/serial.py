"""Engines shared by several streams: one call at a time where the backend cannot take two at once.

onnxruntime documents InferenceSession.run as safe to call from several threads at once; TensorRT runs on
buffers bound to its execution context and torch's CUDA path on one stream, so their runs must not overlap.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from engines.backends.base import Engine

_CONCURRENT_BACKENDS = ("onnxruntime",)


class SerialEngine:
    """An engine whose runs are serialised by a lock; otherwise the engine it wraps."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.name, self.precision, self.device = engine.name, engine.precision, engine.device
        self.input_specs, self.output_names = engine.input_specs, engine.output_names

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._engine.run(inputs)


def shareable(engine: Engine) -> Engine:
    """`engine` itself where its backend runs concurrent calls safely, else a SerialEngine around it."""
    return engine if engine.name in _CONCURRENT_BACKENDS else SerialEngine(engine)  # type: ignore[return-value]
