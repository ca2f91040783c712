"""Latency of an engine: median of repeated runs in one process (what bench and calibrate report)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engines.backends.base import Engine


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    runs: int


def time_engine(engine: Engine, inputs: Mapping[str, np.ndarray], runs: int = 10, warmup: int = 2) -> Timing:
    """Median wall time of engine.run over `runs` calls after `warmup` unmeasured ones (includes host copies)."""
    for _ in range(warmup):
        engine.run(inputs)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.run(inputs)
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing(statistics.median(samples), min(samples), runs)


def random_inputs(engine: Engine, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (zeros for integer inputs) matching engine.input_specs."""
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(spec.shape).astype(spec.dtype) if np.dtype(spec.dtype).kind == "f"
                   else np.zeros(spec.shape, dtype=spec.dtype))
            for name, spec in engine.input_specs.items()}
