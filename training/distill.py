"""Distil one edit of a pack into a ResidualStudent: crop -> crop + predicted change, no generator.

Pairs: every aligned crop at the pack's crop size, and its teacher edit: what the runtime's generator path
pastes back (training/edit_metrics.teacher_edit, in the pack's residual colour mode, with w the pack
encoder's code): by default the crop's own pixels moved by the motion from G(w) to G(w + s*d), plus the
rest of that change, in the edit's region (stream/motion.py); `motion=False`: `crop + up(G(w + s*d) - G(w))`.
The student (engines/nets/student.py, zero-initialised, so it starts as the identity) learns that change
at the crop's own resolution with an L1 loss. Same split as the pack: it never trains on held-out frames
or the held-out clip, which measure it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

from engines.nets.student import ResidualStudent
from engines.nets.stylegan2 import Generator
from stream.edits.directions import Direction
from stream.edits.editor import LatentEdit, edit_offset
from stream.pipeline import residual_change
from stream.pixels import images_to_uint8, to_images
from stream.regions import region_mask
from stream.types import ResidualColour
from training.directions import encode_all
from training.edit_metrics import teacher_edit
from training.pack import to_model_input

log = logging.getLogger(__name__)

HUBER_BETA = 0.05  # in [-1, 1] pixel units (~6/255): quadratic below, L1 above


@dataclass
class DistillConfig:
    edit: str
    strength: float
    width: int = 32
    depth: int = 2
    levels: int = 3
    max_width: int = 64
    batch: int = 8
    lr: float = 1e-3
    seed: int = 0


def make_pairs(generator: Generator, encoder: torch.nn.Module, crops: npt.NDArray[np.uint8], direction: Direction,
               strength: float, chunk: int = 128, colour: ResidualColour = "rgb",
               landmarks: npt.NDArray[np.float32] | None = None, motion: bool = True) -> npt.NDArray[np.uint8]:
    """Teacher-edited crops [N, S, S, 3] for crops [N, S, S, 3] (colour: the pack's residual_colour). With the
    crops' landmarks [N, 68, 2] (crop pixels) the change is confined to the direction's region, as the
    runtime confines it, so the student learns a local edit."""
    offset = edit_offset([LatentEdit(direction, strength)], direction.num_ws, direction.vector.shape[1])
    size = int(encoder.input_size)
    region = direction.metadata.get("region", "face")
    out = []
    for i in range(0, len(crops), chunk):
        part = crops[i:i + chunk]
        codes = encode_all(encoder, to_model_input(part, size))
        masks = None if landmarks is None else np.stack(
            [region_mask(region, lm, part.shape[1]) for lm in landmarks[i:i + chunk]])
        out.append(teacher_edit(generator, part, codes, offset, colour=colour, masks=masks, motion=motion))
    return np.concatenate(out)


def to_tensor(crops: npt.NDArray[np.uint8]) -> Tensor:
    return torch.from_numpy(to_images(crops))


def to_crops(images: Tensor) -> npt.NDArray[np.uint8]:
    return images_to_uint8(images.detach().cpu().numpy())


def train_student(config: DistillConfig, inputs: npt.NDArray[np.uint8], targets: npt.NDArray[np.uint8],
                  minutes: float, on_step: Callable[[int, float], None] | None = None,
                  max_steps: int | None = None) -> tuple[ResidualStudent, int, float]:
    """Train a fresh student on (input, target) crops for `minutes`; returns (student, steps, seconds)."""
    torch.manual_seed(config.seed)
    student = ResidualStudent(width=config.width, depth=config.depth, levels=config.levels, max_width=config.max_width)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(config.seed)
    start, step = time.monotonic(), 0
    budget = minutes * 60
    while time.monotonic() - start < budget and (max_steps is None or step < max_steps):
        pick = torch.randint(len(inputs), (config.batch,), generator=gen).numpy()
        x, y = to_tensor(inputs[pick]), to_tensor(targets[pick])
        if torch.rand(1, generator=gen).item() < 0.5:
            x, y = x.flip(3), y.flip(3)
        frac = (time.monotonic() - start) / budget  # cosine decay over the time budget
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0)))
        # Huber, not L1: the teacher pairs change only the edit's region, and L1's median pulled the zero-initialised
        # change head back to zero everywhere (a student that never edited); near zero Huber is quadratic
        loss = F.smooth_l1_loss(student(x), y, beta=HUBER_BETA)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return student.eval(), step, time.monotonic() - start


@torch.no_grad()
def apply_student(student: ResidualStudent, crops: npt.NDArray[np.uint8], scale: float = 1.0,
                  chunk: int = 16) -> npt.NDArray[np.uint8]:
    """Student edit of crops; `scale` multiplies the predicted change (another strength than distilled)."""
    out = []
    for i in range(0, len(crops), chunk):
        x = to_tensor(crops[i:i + chunk])
        out.append(to_crops(x + scale * student.delta(x)))
    return np.concatenate(out)


@torch.no_grad()
def cpu_speed(student: ResidualStudent, generator: Generator, encoder: torch.nn.Module, crop: npt.NDArray[np.uint8],
              offset: npt.NDArray[np.float32], repeats: int = 20, colour: ResidualColour = "rgb") -> tuple[float, float]:
    """Median ms per crop at batch 1 on the current torch threads: (teacher, student).

    Teacher: resize to the encoder's size, encode, synthesise w' and w together (export-safe form, as the
    runtime), up-sample the difference and add it. Student: one forward at the crop's size."""
    synthesis = generator.export_safe()
    size = int(encoder.input_size)
    off = torch.from_numpy(offset)[None]

    def teacher() -> None:
        w = encoder(to_model_input(crop[None], size))
        both = synthesis(torch.cat([w + off, w])).numpy()
        np.clip(crop.astype(np.float32) + residual_change(both[:1] - both[1:], crop.shape[0], colour)[0], 0, 255)

    def run_student() -> None:
        to_crops(student(to_tensor(crop[None])))

    def median_ms(fn: Callable[[], None]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        return float(np.median(times))

    return median_ms(teacher), median_ms(run_student)

