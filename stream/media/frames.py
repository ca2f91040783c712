"""Frames with their timestamps, and the one place where decoded pictures become RGB arrays and back.

Colour: a decoded picture is converted to RGB with the matrix and range it declares, and an RGB array is
converted back with the matrix and range the output stream declares (the input's, carried over), so a
round trip through the pipeline keeps colours where they were.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from stream.types import Frame


@dataclass
class TimedFrame:
    """One picture of a video, upright, with its presentation timestamp in ticks of `time_base`."""

    image: Frame   # [H, W, 3] RGB uint8, upright (the display matrix already applied)
    pts: int
    time_base: Fraction

    @property
    def seconds(self) -> float:
        return float(self.pts * self.time_base)


def upright(image: Frame, rotation: int) -> Frame:
    """Apply a display rotation (degrees counter-clockwise, as FFmpeg's display matrix states it)."""
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns == 0:
        return image
    # np.rot90 turns counter-clockwise as seen on screen; copy so the array is contiguous for later stages
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns))


def decoded_to_rgb(frame: av.VideoFrame) -> Frame:
    """RGB of a decoded picture, converted with the colour matrix and range the picture declares."""
    # the matrix defaults to the frame's own; the range must be passed (PyAV would assume limited range)
    return frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)


def rgb_to_encoder(image: Frame, pix_fmt: str, colorspace: int, color_range: int) -> av.VideoFrame:
    """An RGB array as a picture in the encoder's pixel format, with the output's matrix and range."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    if pix_fmt == "rgb24":
        return frame
    return frame.reformat(format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range)
