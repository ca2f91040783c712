"""The demo's sample clip, built on the spot from a photo that scikit-image ships (no download).

skimage.data.astronaut() (Eileen Collins, public domain, NASA) is animated with a slow pan and zoom
towards her face, and a quiet two-tone AAC track is added so the output shows the audio copied through.
"""
from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from engines.atomic import atomic_output
from stream.types import Frame

log = logging.getLogger(__name__)

# where the face sits in astronaut.png (x, y of its centre, pixels), measured with dlib's detector
_FACE_CENTRE = (222.0, 126.0)
AUDIO_RATE = 44100


def sample_frame(image: Frame, index: int, count: int, size: int) -> Frame:
    """Frame `index` of `count`: the view eases from the whole photo to 1.6x on the face, with a slight sway."""
    progress = 0.5 - 0.5 * math.cos(math.pi * index / max(count - 1, 1))  # ease in and out, 0 -> 1
    zoom = 1.0 + 0.6 * progress
    height, width = image.shape[:2]
    centre_x = width / 2 + (_FACE_CENTRE[0] - width / 2) * progress + 6.0 * math.sin(2 * math.pi * index / count)
    centre_y = height / 2 + (_FACE_CENTRE[1] - height / 2) * progress
    # keep the view inside the photo (no mirrored borders)
    half_w, half_h = width / zoom / 2, height / zoom / 2
    centre_x = min(max(centre_x, half_w), width - half_w)
    centre_y = min(max(centre_y, half_h), height - half_h)
    scale = zoom * size / width
    # frame -> output: scale about the view centre, which lands in the middle of the output
    affine = np.array([[scale, 0.0, size / 2 - scale * centre_x],
                       [0.0, scale, size / 2 - scale * centre_y]])
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def _tone(start: int, count: int) -> np.ndarray:
    """Mono float32 samples [1, count] of a soft A3 + E4 chord, from sample `start` on."""
    t = (start + np.arange(count)) / AUDIO_RATE
    wave = 0.12 * np.sin(2 * math.pi * 220.0 * t) + 0.06 * np.sin(2 * math.pi * 329.63 * t)
    return wave.astype(np.float32)[None]


def build_sample_clip(path: Path | str, seconds: float = 3.0, fps: int = 25, size: int = 512) -> Path:
    """Write the sample clip (H.264 + AAC, `size`x`size`, `fps`) to `path`, atomically; returns the path."""
    from skimage.data import astronaut

    path = Path(path)
    image = astronaut()
    count = round(seconds * fps)
    with atomic_output(path, suffix=f".part{path.suffix}") as temp, av.open(str(temp), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "18", "preset": "veryfast"}
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "mono"
        audio.format = "fltp"
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(sample_frame(image, index, count, size), format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        samples_per_chunk = 1024
        total = int(seconds * AUDIO_RATE)
        for start in range(0, total, samples_per_chunk):
            chunk = av.AudioFrame.from_ndarray(_tone(start, min(samples_per_chunk, total - start)),
                                               format="fltp", layout="mono")
            chunk.sample_rate = AUDIO_RATE
            chunk.pts = start
            chunk.time_base = Fraction(1, AUDIO_RATE)
            container.mux(audio.encode(chunk))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    log.debug("sample clip %s: %d frames at %d fps", path, count, fps)
    return path
