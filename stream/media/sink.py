"""FileSink: encode RGB frames with PyAV into a temporary file beside OUT, rename it to OUT at the end.

- Timestamps: the output video stream takes the input's time base and each frame keeps its pts, so
  variable frame rate survives and every input frame is one output frame.
- Colour: the input's range, matrix, primaries and transfer are declared on the output and used for the
  RGB -> YUV conversion (see stream/media/frames.py).
- Audio: the input's audio packets are copied as they are (stream/media/audio.py).
- Atomic: frames go to `.OUT.<random>.part<suffix>` in OUT's folder; `close()` renames it over OUT with
  os.replace, `abort()` (or any exception inside `with`) deletes it, so OUT never holds a partial file.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import av

from engines.atomic import create_temp_beside
from stream.errors import MediaError
from stream.media.audio import AudioCopy
from stream.media.frames import TimedFrame, rgb_to_encoder
from stream.media.source import VideoInfo
from stream.types import Frame

log = logging.getLogger(__name__)

Codec = Literal["h264", "lossless"]
CODECS: tuple[str, ...] = get_args(Codec)


@dataclass(frozen=True)
class EncoderSettings:
    """H.264 (libx264, YUV, `crf` quality) or lossless (libx264rgb at qp 0: RGB stored bit-exactly)."""

    codec: Codec = "h264"
    crf: int = 18
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise MediaError(f"unknown output codec {self.codec!r}; choose one of {', '.join(CODECS)}")
        if not 0 <= self.crf <= 51:
            raise MediaError(f"--crf {self.crf} is out of range; x264 takes 0 (best) to 51 (worst)")


def _temp_path(path: Path) -> Path:
    """Create the temporary file in OUT's folder (same file system, so the final rename is atomic)."""
    folder = path.parent
    if not folder.is_dir():
        raise MediaError(f"{path}: output folder {folder} does not exist; create it or choose another -o")
    try:
        return create_temp_beside(path, suffix=f".part{path.suffix}")
    except OSError as err:
        raise MediaError(f"{path}: cannot write in {folder} ({err.strerror}); choose a writable folder") from None


class FileSink:
    """An output video file being written. Use as a context manager; `close()` publishes it."""

    def __init__(
        self,
        path: Path | str,
        like: VideoInfo,
        *,
        width: int | None = None,
        height: int | None = None,
        settings: EncoderSettings = EncoderSettings(),
        audio: av.audio.stream.AudioStream | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise MediaError(f"{self.path}: already exists; pass --overwrite to replace it")
        if self.path.is_dir():
            raise MediaError(f"{self.path}: is a folder; give a file name such as out.mp4")
        self.width = width or like.width
        self.height = height or like.height
        self.settings = settings
        self.frames_written = 0
        self._finished = False
        self._time_base = like.time_base
        self._temp = _temp_path(self.path)
        try:
            self._container = av.open(str(self._temp), mode="w")
        except (av.error.FFmpegError, ValueError) as err:
            self._temp.unlink(missing_ok=True)
            raise MediaError(
                f"{self.path}: cannot write this container ({err}); use a .mp4 or .mkv name"
            ) from None
        try:
            self._video = self._add_video_stream(like)
            self.audio = AudioCopy(self._container, audio) if audio is not None else None
        except (av.error.FFmpegError, ValueError) as err:
            self.abort()
            raise MediaError(f"{self.path}: cannot set up the encoder ({err})") from None

    def _add_video_stream(self, like: VideoInfo) -> av.video.stream.VideoStream:
        if self.settings.codec == "lossless":
            stream = self._container.add_stream("libx264rgb", rate=like.rate)
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": self.settings.preset}
        else:
            stream = self._container.add_stream("libx264", rate=like.rate)
            # 4:2:0 needs even sizes; odd-sized inputs keep every pixel in 4:4:4
            even = self.width % 2 == 0 and self.height % 2 == 0
            stream.pix_fmt = "yuv420p" if even else "yuv444p"
            stream.options = {"crf": str(self.settings.crf), "preset": self.settings.preset}
            ctx = stream.codec_context
            ctx.color_range = like.color_range
            ctx.colorspace = like.colorspace
            ctx.color_primaries = like.color_primaries
            ctx.color_trc = like.color_trc
        stream.width, stream.height = self.width, self.height
        # the input's time base and pts go through unchanged: variable frame rate survives
        stream.time_base = like.time_base
        stream.codec_context.time_base = like.time_base
        stream.thread_type = "AUTO"
        self._colorspace, self._color_range = like.colorspace, like.color_range
        return stream

    def write(self, image: Frame, pts: int) -> None:
        """Encode one RGB frame [H,W,3] with its pts in the input's time base."""
        if image.shape != (self.height, self.width, 3):
            raise ValueError(f"frame {image.shape} does not match the sink's {self.height}x{self.width}x3")
        frame = rgb_to_encoder(image, self._video.pix_fmt, self._colorspace, self._color_range)
        frame.pts = pts
        frame.time_base = self._time_base
        self._mux(self._video.encode(frame))
        self.frames_written += 1

    def write_frame(self, frame: TimedFrame) -> None:
        self.write(frame.image, frame.pts)

    def write_audio(self, packet: av.Packet) -> None:
        """Copy one input audio packet (ignored when the sink was made without audio)."""
        if self.audio is not None:
            self._guard(self.audio.write, packet)

    def _mux(self, packets: list[av.Packet]) -> None:
        self._guard(self._container.mux, packets)

    def _guard(self, write: Callable[[object], None], item: object) -> None:
        try:
            write(item)
        except av.error.FFmpegError as err:
            raise MediaError(f"{self.path}: writing failed ({err.strerror or err}); is the disk full?") from None

    def close(self) -> Path:
        """Flush the encoder, finish the file and move it to OUT. Returns OUT."""
        self._finished = True
        try:
            self._mux(self._video.encode(None))
            self._container.close()
        except (MediaError, av.error.FFmpegError, OSError) as err:
            self.abort()
            raise MediaError(f"{self.path}: finishing the file failed ({err}); no output written") from None
        os.replace(self._temp, self.path)
        log.debug("wrote %s (%d frames)", self.path, self.frames_written)
        return self.path

    def abort(self) -> None:
        """Drop the partial file; OUT is left as it was."""
        self._finished = True
        try:
            self._container.close()
        except Exception:  # the container may be half set up; the file is deleted either way
            log.debug("closing the partial output failed", exc_info=True)
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._finished:
            return
        if exc_type is not None:
            self.abort()
        else:
            self.close()
