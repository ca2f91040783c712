"""VirtualCameraSink: frames to a virtual camera (v4l2loopback on Linux, OBS's camera elsewhere) via pyvirtualcam.

pyvirtualcam is an optional extra, imported when a sink opens; a missing package or a missing loopback
device is one UserError line that says what to install or run.
"""
from __future__ import annotations

import logging
import sys

from stream.errors import MediaError, MissingDependency
from stream.types import Frame

log = logging.getLogger(__name__)

LOOPBACK_HINT = "sudo modprobe v4l2loopback devices=1 exclusive_caps=1"


def _no_device_message(detail: str) -> str:
    if sys.platform.startswith("linux"):
        return f"no virtual camera: {detail}; create one with: {LOOPBACK_HINT}"
    return f"no virtual camera: {detail}; install OBS Studio and start its virtual camera once"


class VirtualCameraSink:
    """Sends RGB frames of a fixed size to a virtual camera that video-call apps can pick."""

    def __init__(self, width: int, height: int, fps: float, device: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError:
            raise MissingDependency(
                "the virtual camera needs pyvirtualcam: pip install 'faceedit-stream[camera]' (or pyvirtualcam)"
            ) from None
        try:
            self._camera = pyvirtualcam.Camera(
                width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device, print_fps=False
            )
        except RuntimeError as err:
            # pyvirtualcam's message: "'<backend>' backend: <what failed>. Did you run ...?"
            detail = str(err).split(": ", 1)[-1].split(". ")[0].rstrip(".")
            raise MediaError(_no_device_message(detail)) from None
        self.width, self.height = width, height
        log.info("virtual camera %s: %dx%d at %.0f fps", self._camera.device, width, height, fps)

    @property
    def device(self) -> str:
        return str(self._camera.device)

    def send(self, frame: Frame) -> None:
        if frame.shape[:2] != (self.height, self.width):
            raise MediaError(
                f"virtual camera {self.device}: frame is {frame.shape[1]}x{frame.shape[0]}, "
                f"the device was opened at {self.width}x{self.height}"
            )
        self._camera.send(frame)

    def close(self) -> None:
        self._camera.close()
