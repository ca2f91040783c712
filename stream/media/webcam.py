"""Live sources for the `camera` command: a webcam, or a video file looped in real time for testing.

Both yield `TimedFrame`s at the rate the camera (or the file's timestamps) sets, with a monotonic pts, so
the live runner sees the same thing from either. A webcam's pts is its capture time in microseconds.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

from stream.errors import MediaError
from stream.media.frames import TimedFrame
from stream.media.source import FileSource

log = logging.getLogger(__name__)

MICROSECONDS = Fraction(1, 1_000_000)


class WebcamSource:
    """A V4L2 (or platform default) camera through OpenCV; `device` is an index or a path like /dev/video0."""

    def __init__(self, device: int | str, width: int = 640, height: int = 480, fps: int = 30) -> None:
        import cv2

        self.device = device
        api = cv2.CAP_V4L2 if isinstance(device, str) and device.startswith("/dev/") else cv2.CAP_ANY
        self._capture = cv2.VideoCapture(device, api)
        if not self._capture.isOpened():
            raise MediaError(
                f"camera {device}: cannot be opened; check that it exists, is not used by another program, "
                "and that you may read it (Linux: be in the 'video' group)"
            )
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._capture.set(cv2.CAP_PROP_FPS, fps)
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS)) or float(fps)
        log.info("camera %s: %dx%d at %.0f fps", device, self.width, self.height, self.fps)

    def frames(self) -> Iterator[TimedFrame]:
        import cv2

        start = time.monotonic()
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                raise MediaError(f"camera {self.device}: stopped delivering frames (unplugged or taken by another program)")
            pts = round((time.monotonic() - start) * 1_000_000)
            yield TimedFrame(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pts=pts, time_base=MICROSECONDS)

    def close(self) -> None:
        self._capture.release()

    __iter__ = frames


class LoopedFileSource:
    """A video file played at its own timestamps, over and over, with pts continuing across loops."""

    def __init__(self, path: Path | str, loops: int | None = None) -> None:
        self.path = Path(path)
        self.loops = loops
        with FileSource(self.path) as probe:  # fail on a bad file before anything starts
            self.info = probe.info
        self.width, self.height = self.info.width, self.info.height
        self.fps = float(self.info.rate) if self.info.rate else 30.0

    def frames(self) -> Iterator[TimedFrame]:
        period = Fraction(1) / Fraction(self.fps).limit_denominator(1001)
        offset = Fraction(0)  # seconds added to this loop's timestamps
        start = time.monotonic()
        loop = 0
        while self.loops is None or loop < self.loops:
            first: Fraction | None = None
            last = Fraction(0)
            with FileSource(self.path) as source:
                for frame in source.frames():
                    if first is None:
                        first = frame.pts * frame.time_base
                    last = frame.pts * frame.time_base - first
                    seconds = offset + last
                    delay = start + float(seconds) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    pts = round(seconds / MICROSECONDS)
                    yield TimedFrame(image=frame.image, pts=pts, time_base=MICROSECONDS)
            offset += last + period
            loop += 1

    def close(self) -> None:
        """Nothing stays open between loops."""

    __iter__ = frames


def open_live_source(spec: str, width: int = 640, height: int = 480, fps: int = 30) -> WebcamSource | LoopedFileSource:
    """`/dev/videoN` or a camera index -> webcam; an existing video file -> that file looped in real time."""
    if spec.isdigit():
        return WebcamSource(int(spec), width, height, fps)
    if spec.startswith("/dev/"):
        if not Path(spec).exists():
            raise MediaError(f"camera {spec}: no such device; list cameras with `ls /dev/video*`")
        return WebcamSource(spec, width, height, fps)
    path = Path(spec)
    if not path.exists():
        raise MediaError(f"{spec}: neither a camera (/dev/videoN or an index) nor an existing video file")
    return LoopedFileSource(path)

