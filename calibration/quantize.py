"""Q/DQ INT8 graphs from ONNX Runtime static quantisation, with ranges cached beside the output.

The graph is quantised symmetric int8 (weights per channel, activations per tensor, zero points 0),
the only form TensorRT builds as an explicitly quantised engine; ONNX Runtime runs the same file on the
CPU. Ranges depend on the graph and the calibration set only, so they are cached under a name made of
both hashes and the method: a second run with the same inputs skips the (slow) calibration pass.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from calibration.datasets import fingerprint_feeds, materialise
from engines.atomic import atomic_output
from engines.cache import sha256_file
from engines.errors import UserError
from engines.export import find_tensorrt_problems, graph_io_specs

log = logging.getLogger(__name__)

CalibrationMethod = Literal["entropy", "percentile", "minmax"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)
PERCENTILE = 99.999


@dataclass(frozen=True)
class QuantizeResult:
    onnx_path: Path
    range_cache: Path
    ranges_reused: bool
    samples: int


def default_output(onnx_path: Path) -> Path:
    return onnx_path.with_name(f"{onnx_path.stem}.int8.onnx")


def range_cache_path(directory: Path, onnx_sha256: str, set_fingerprint: str, method: str, stem: str) -> Path:
    return directory / f"{stem}.ranges-{onnx_sha256[:12]}-{set_fingerprint[:12]}-{method}.json"


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        """ORT's pull interface over a list of feed dicts."""

        def __init__(self) -> None:
            self._index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._index >= len(feeds):
                return None
            self._index += 1
            return feeds[self._index - 1]

        def rewind(self) -> None:
            self._index = 0

    return FeedReader()


def quantize_qdq(onnx_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]],
                 output_path: str | Path | None = None, method: CalibrationMethod = "entropy",
                 range_cache_dir: str | Path | None = None, per_channel: bool = True) -> QuantizeResult:
    """Write a symmetric-int8 Q/DQ copy of onnx_path calibrated on feeds (static shapes of the graph)."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: ONNX file not found; export it first with `python run_stream.py build-engines`")
    output_path = Path(output_path) if output_path is not None else default_output(onnx_path)
    specs, _ = graph_io_specs(onnx_path)
    samples = materialise(feeds, specs, f"calibration set for {onnx_path.name}")
    cache = range_cache_path(Path(range_cache_dir) if range_cache_dir else output_path.parent,
                             sha256_file(onnx_path), fingerprint_feeds(samples), method, onnx_path.stem)
    reused = cache.is_file()
    log.info("calibrating %s: %d batches, %s ranges%s", onnx_path.name, len(samples), method,
             " (cached)" if reused else "")
    # biases stay float: TensorRT fuses them into the int8 convolution itself and takes only int8 Q/DQ
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    ort_method = {"entropy": OrtMethod.Entropy, "percentile": OrtMethod.Percentile, "minmax": OrtMethod.MinMax}
    with atomic_output(output_path) as tmp, tempfile.TemporaryDirectory(prefix="calibrate-") as work:
        # shape inference first, as ORT asks; its graph optimisation is skipped so no
        # ORT-only fused ops end up in a file TensorRT must parse
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_optimization=True)
        quantize_static(str(prepared), str(tmp), _reader(samples), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=ort_method[method],
                        calibration_cache_path=str(cache), extra_options=extra)
    import onnx

    problems = find_tensorrt_problems(onnx.load(str(output_path)))
    if problems:
        log.warning("%s: TensorRT may refuse this Q/DQ graph: %s", output_path, problems[0])
    return QuantizeResult(output_path, cache, reused, len(samples))
