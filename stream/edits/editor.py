"""The latent editor: W+ codes moved along directions, each only in its layers, several edits composed.

Edits add: w' = w + sum_i strength_i * mask_i * vector_i, so their order does not matter and the offset
(w' - w) is the same for every face, which is what the temporal smoother and the residual paste-back
(crop + G(w') - G(w)) rely on.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.errors import UserError
from stream.edits.directions import Direction, FloatArray, layer_mask
from stream.types import WPlus


@dataclass
class LatentEdit:
    """One edit: `direction` at `strength`, on `layers` (a spec or list; None: the direction's own mask)."""

    direction: Direction
    strength: float
    layers: str | Sequence[int] | None = None

    def mask(self) -> list[int]:
        """The W+ indices this edit changes."""
        if self.layers is None:
            return list(self.direction.layers)
        return layer_mask(self.layers, self.direction.num_ws)

    def offset(self) -> FloatArray:
        """strength * vector on the masked layers, zero elsewhere: [num_ws, D] float32."""
        out = np.zeros_like(self.direction.vector)
        rows = self.mask()
        out[rows] = np.float32(self.strength) * self.direction.vector[rows]
        return out


def edit_offset(edits: Sequence[LatentEdit], num_ws: int, dim: int = 512) -> FloatArray:
    """The summed offset [num_ws, dim] of several edits (zeros when there are none)."""
    total = np.zeros((num_ws, dim), dtype=np.float32)
    for edit in edits:
        if edit.direction.vector.shape != total.shape:
            raise UserError(f"edit {edit.direction.name!r} is [{edit.direction.num_ws}, "
                            f"{edit.direction.vector.shape[1]}] but the codes are [{num_ws}, {dim}]: "
                            "load the direction for this generator")
        total += edit.offset()
    return total


def apply_edits(wplus: WPlus | Any, edits: Sequence[LatentEdit]) -> WPlus | Any:
    """wplus [num_ws, D] or [N, num_ws, D] (numpy or torch) plus every edit's offset; same type out."""
    shape = tuple(wplus.shape)
    if len(shape) not in (2, 3):
        raise UserError(f"W+ codes must be [num_ws, D] or [N, num_ws, D], got {list(shape)}")
    offset = edit_offset(edits, shape[-2], shape[-1])
    if isinstance(wplus, np.ndarray):
        return (wplus + offset).astype(wplus.dtype, copy=False)
    import torch  # a torch tensor came in: keep it on its device and dtype

    return wplus + torch.from_numpy(offset).to(device=wplus.device, dtype=wplus.dtype)
