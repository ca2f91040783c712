"""Names for the data that flows between stages (shapes in the names, see STYLE.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.uint8]          # [H, W, 3] RGB uint8
Crop = npt.NDArray[np.uint8]           # [S, S, 3] RGB uint8, an aligned face
Landmarks68 = npt.NDArray[np.float32]  # [68, 2] x, y in frame pixels
Landmarks5 = npt.NDArray[np.float32]   # [5, 2] eyes, nose, mouth corners (insightface order)
Affine2x3 = npt.NDArray[np.float64]    # [2, 3] maps frame pixels -> crop pixels
WPlus = npt.NDArray[np.float32]        # [num_ws, 512] (or [N, num_ws, 512] batched)
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
# how a generator's change G(w') - G(w) goes back onto the crop (stream.pipeline.residual_change)
ResidualColour = Literal["rgb", "luma"]
RESIDUAL_COLOURS: tuple[str, ...] = get_args(ResidualColour)


@dataclass
class Face:
    """One detected face in one frame."""

    box: Box
    score: float
    landmarks: npt.NDArray[np.float32]  # [68, 2] or [5, 2]
    track_id: int = -1


@dataclass
class StageTimes:
    """Milliseconds spent per stage, accumulated over frames."""

    totals_ms: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, ms: float) -> None:
        self.totals_ms[stage] = self.totals_ms.get(stage, 0.0) + ms
        self.counts[stage] = self.counts.get(stage, 0) + 1

    def mean_ms(self) -> dict[str, float]:
        return {k: self.totals_ms[k] / max(self.counts[k], 1) for k in self.totals_ms}
