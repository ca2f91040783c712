"""Accuracy and speed of reduced-precision engines against an FP32 reference, per network."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engines.backends.base import Engine
from engines.backends.timing import time_engine


def relative_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    """||ours - ref|| / ||ref|| in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


def psnr(ours: np.ndarray, ref: np.ndarray, data_range: float = 2.0) -> float:
    """PSNR in dB for images in [-1, 1] (data_range 2); inf when identical."""
    mse = float(np.mean((np.asarray(ours, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def _is_image(array: np.ndarray) -> bool:
    return array.ndim == 4 and array.shape[1] in (1, 3)


@dataclass(frozen=True)
class ReportRow:
    network: str
    precision: str
    backend: str
    rel_l2: float
    psnr_db: float | None  # None for non-image outputs (codes)
    median_ms: float
    speedup: float  # reference median / this median


def compare_precisions(network: str, reference: Engine, candidates: Mapping[str, Engine],
                       feeds: Sequence[Mapping[str, np.ndarray]], runs: int = 10) -> list[ReportRow]:
    """Rows for the reference and each candidate: error of the first output averaged over feeds, and
    median latency on the first feed."""
    output = reference.output_names[0]
    references = [reference.run(feed)[output] for feed in feeds]
    ref_ms = time_engine(reference, feeds[0], runs).median_ms
    rows = [ReportRow(network, reference.precision, reference.name, 0.0,
                      float("inf") if _is_image(references[0]) else None, ref_ms, 1.0)]
    for label, engine in candidates.items():
        outs = [engine.run(feed)[engine.output_names[0]] for feed in feeds]
        errors = [relative_l2(o, r) for o, r in zip(outs, references)]
        psnrs = [psnr(o, r) for o, r in zip(outs, references)] if _is_image(references[0]) else None
        ms = time_engine(engine, feeds[0], runs).median_ms
        rows.append(ReportRow(network, label, engine.name, float(np.mean(errors)),
                              float(np.mean(psnrs)) if psnrs else None, ms, ref_ms / ms))
    return rows


def format_report(rows: Sequence[ReportRow]) -> str:
    """Markdown table of rows."""
    lines = ["| network | precision | backend | rel L2 vs FP32 | PSNR dB | median ms | speed vs FP32 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        psnr_text = "-" if r.psnr_db is None else ("inf" if np.isinf(r.psnr_db) else f"{r.psnr_db:.1f}")
        lines.append(f"| {r.network} | {r.precision} | {r.backend} | {r.rel_l2:.2e} | {psnr_text} | "
                     f"{r.median_ms:.2f} | {r.speedup:.2f}x |")
    return "\n".join(lines)
