"""How close is a distilled student to its teacher, does it carry the edit, and how much faster is it?"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from engines.nets.student import ResidualStudent
from engines.nets.stylegan2 import Generator
from stream.edits.attributes import ATTRIBUTE_NAMES
from stream.edits.directions import Direction
from stream.edits.editor import LatentEdit, edit_offset
from stream.faces.detect import DlibLandmarker
from stream.types import ResidualColour
from training.data import Split
from training.distill import DistillConfig, apply_student, cpu_speed
from training.edit_metrics import measure
from training.losses import psnr_uint8
from training.sheets import grid, save_png

log = logging.getLogger(__name__)


def _subsample(idx: npt.NDArray[np.int64], count: int) -> npt.NDArray[np.int64]:
    return idx[np.linspace(0, len(idx) - 1, min(count, len(idx))).round().astype(int)]


def evaluate_student(student: ResidualStudent, config: DistillConfig, generator: Generator, encoder: torch.nn.Module,
                     direction: Direction, crops: npt.NDArray[np.uint8], targets: npt.NDArray[np.uint8],
                     landmarks: npt.NDArray[np.float32], split: Split, colour: ResidualColour = "rgb") -> dict:
    """PSNR student vs teacher, attribute change of both, and CPU ms of both at batch 1."""
    k = ATTRIBUTE_NAMES.index(direction.name) if direction.name in ATTRIBUTE_NAMES else None
    landmarker = DlibLandmarker()
    out: dict = {"edit": config.edit, "strength": config.strength, "config": student.config,
                 "params": sum(p.numel() for p in student.parameters())}
    for name, idx in (("heldout_frames", split.heldout_frames), ("heldout_clip", split.heldout_clip)):
        predicted = apply_student(student, crops[idx])
        out[f"psnr_{name}"] = psnr_uint8(predicted, targets[idx])
        out[f"psnr_identity_{name}"] = psnr_uint8(crops[idx], targets[idx])
        if k is not None:
            sub = np.searchsorted(idx, _subsample(idx, 60))
            base, _ = measure(landmarker, crops[idx][sub], landmarks[idx][sub])
            teach, _ = measure(landmarker, targets[idx][sub], landmarks[idx][sub])
            stud, _ = measure(landmarker, predicted[sub], landmarks[idx][sub])
            out[f"teacher_change_{name}"] = float((teach - base)[:, k].mean())
            out[f"student_change_{name}"] = float((stud - base)[:, k].mean())
    offset = edit_offset([LatentEdit(direction, config.strength * direction.default_strength)], direction.num_ws, direction.vector.shape[1])
    out["teacher_ms"], out["student_ms"] = cpu_speed(student, generator, encoder, crops[split.heldout_clip[0]], offset,
                                                     colour=colour)
    out["threads"] = torch.get_num_threads()
    log.info("student: %s", {k: v for k, v in out.items() if k != "config"})
    return out


def student_sheet(student: ResidualStudent, crops: npt.NDArray[np.uint8], targets: npt.NDArray[np.uint8],
                  split: Split, strength: float, path: Path) -> Path:
    """Rows: held-out faces; columns: input, teacher, student, 4x |teacher - student|, student at half and
    1.5x the change."""
    rows = np.concatenate([_subsample(split.heldout_frames, 5), _subsample(split.heldout_clip, 2)])
    predicted = apply_student(student, crops[rows])
    diff = np.clip(np.abs(predicted.astype(np.int16) - targets[rows].astype(np.int16)) * 4, 0, 255).astype(np.uint8)
    half, more = apply_student(student, crops[rows], 0.5), apply_student(student, crops[rows], 1.5)
    cells = [[crops[i], targets[i], predicted[j], diff[j], half[j], more[j]] for j, i in enumerate(rows)]
    labels = [f"{split.clip_names[split.clip_id[i]]} #{i}" for i in rows]
    cols = ["input", f"teacher {strength:g}", f"student {strength:g}", "4x |t - s|", "student x0.5", "student x1.5"]
    return save_png(grid(cells, cols, labels, title="distilled student vs teacher (held-out faces)"), path)
