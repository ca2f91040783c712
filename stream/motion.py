"""The motion an edit draws, moved onto the person's own pixels.

A generator that draws a face poorly still draws an edit's *motion* well: in G(w) -> G(w') an opening
mouth's lower lip and chin travel down. Adding the difference G(w') - G(w) to the crop instead paints the
generator's idea of the new mouth over the person's: on the demo pack's 128 px generator a darker, blurred
patch and a brown ring round the lips, not an opened mouth (bench/local_edits_sheet.png). So the change is
split in two:

    G(w') ~= warp(G(w), flow) + paint
    output  = warp(crop, flow) + paint

`flow` is the dense optical flow from G(w') back to G(w) (OpenCV's Farneback on their brightness), smoothed
to the scale a generator's motion has; `paint` is what the motion does not explain (the dark gap of an opened
mouth, teeth). With a perfect reconstruction (crop == G(w)) the output is G(w') exactly; otherwise the
person's own detail, which the generator misses, travels with the motion instead of staying put.
"""
from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from stream.pixels import to_uint8

Flow = npt.NDArray[np.float32]  # [S, S, 2]: for each output pixel, the (dx, dy) it is fetched from

# A generator's motion is smooth at the scale of a lip: the flow is blurred with a Gaussian of this
# fraction of the crop side (~11 px on a 256 crop). Farneback with a wide window (31 px on the crop) was
# chosen over DIS on the demo pack and four people (d19, lx01, sp04, which it never saw, and rr01): DIS's patch noise on
# blurred renders twisted turned heads' mouths, raised flicker to 1.11 and spread the change onto the chin.
FLOW_SMOOTHING = 1 / 24
FLOW_WINDOW = 31


def _grey(pixels: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    return cv2.cvtColor(to_uint8(pixels), cv2.COLOR_RGB2GRAY)


def edit_flow(before: npt.NDArray[np.floating], after: npt.NDArray[np.floating],
              smoothing: float = FLOW_SMOOTHING) -> Flow:
    """Backward flow [S, S, 2] with after(p) ~= before(p + flow(p)), for absolute pixels [S, S, 3] (0..255)."""
    flow = cv2.calcOpticalFlowFarneback(_grey(after), _grey(before), None, pyr_scale=0.5, levels=4,
                                        winsize=FLOW_WINDOW, iterations=5, poly_n=7, poly_sigma=1.5, flags=0)
    sigma = smoothing * before.shape[0]
    return np.stack([cv2.GaussianBlur(flow[..., k], (0, 0), sigma) for k in range(2)], -1).astype(np.float32)


def warp(image: npt.NDArray, flow: Flow) -> npt.NDArray[np.float32]:
    """`image` [S, S, C] resampled along a backward flow (bilinear, edges reflected), as float32."""
    size = flow.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return cv2.remap(np.asarray(image, np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def split_change(before: npt.NDArray[np.floating], after: npt.NDArray[np.floating]
                 ) -> tuple[Flow, npt.NDArray[np.float32]]:
    """(flow, paint) of a generator's edit, absolute pixels [S, S, 3]: after ~= warp(before, flow) + paint."""
    flow = edit_flow(before, after)
    return flow, np.asarray(after, np.float32) - warp(before, flow)


def confined_change(crop: npt.NDArray, paint: npt.NDArray[np.float32], flow: Flow | None,
                    mask: npt.NDArray[np.float32], paint_weight: float = 1.0) -> npt.NDArray[np.float32]:
    """One crop's change [S, S, 3] inside `mask` [S, S]: its own pixels moved along `flow` (fading with the
    mask to no motion where it is 0; None: no motion) plus `paint`, which alone `paint_weight` (the
    confidence gate) weighs. The runtime (stream/session.py) and the distillation teacher both use it."""
    change = paint * (mask * paint_weight)[..., None]
    if flow is not None:
        change += warp(crop, flow * mask[..., None]) - np.asarray(crop, np.float32)
    return change
