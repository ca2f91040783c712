"""FileSource: decode a video file with PyAV, frames upright with their original timestamps.

The file is checked when it is opened, so a bad input fails before any model loads: missing, empty,
not a media file (a text file named .mp4, a truncated MP4 whose index is lost), no video stream
(audio only), or declared dimensions no real video has. Each failure is one MediaError line.

Rotation: the display matrix (phone videos) is applied to the pixels, so the face stage sees faces
upright and the output is written upright without a matrix; `VideoInfo.rotation` records what was applied.
Audio packets are handed, undecoded, to a callback as they are demuxed, interleaved with the video.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stream.errors import MediaError
from stream.media.frames import TimedFrame, decoded_to_rgb, upright

log = logging.getLogger(__name__)

# Larger than any camera or 8K master; a header declaring more is corrupt or hostile, and decoding it would
# try to allocate gigabytes per frame.
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class VideoInfo:
    """What the sink needs to write a matching file; sizes are upright (after rotation)."""

    path: Path
    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None          # average frame rate, for the encoder's rate control only
    frames: int                    # declared frame count, 0 when the container does not say
    rotation: int                  # degrees counter-clockwise (0, 90, 180, 270) applied to the pixels
    color_range: int               # AVColorRange of the input
    colorspace: int                # AVColorSpace (matrix) of the input
    color_primaries: int
    color_trc: int
    has_audio: bool


def _open_container(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise MediaError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise MediaError(f"{path}: not a file; give a video file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty (0 bytes); give a video file")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as err:
        raise MediaError(
            f"{path}: not a readable video ({err.strerror or err}); the file may be truncated or not a video"
        ) from None


class FileSource:
    """A video file opened for decoding. Use as a context manager, iterate `frames()` once."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._container = _open_container(self.path)
        try:
            self.info = self._probe()
        except MediaError:
            self._container.close()
            raise

    def _probe(self) -> VideoInfo:
        container = self._container
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise MediaError(f"{self.path}: no video stream (found {kinds}); give a file with video")
        ctx = container.streams.video[0].codec_context
        width, height = ctx.width, ctx.height
        if width <= 0 or height <= 0 or width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
            raise MediaError(
                f"{self.path}: declared video size {width}x{height} is not plausible "
                f"(at most {MAX_SIDE} px a side, {MAX_PIXELS // 1_000_000} Mpx); the file is corrupt"
            )
        self._check_index(container)
        tags = self._first_frame_tags()
        # read the stream only now: _first_frame_tags reopened the file and the old stream object is freed
        stream = self._container.streams.video[0]
        rotation = tags["rotation"]
        if rotation % 180:
            width, height = height, width
        log.debug("%s: %dx%d, rotation %d, time base %s", self.path, width, height, rotation, stream.time_base)
        return VideoInfo(
            path=self.path,
            width=width,
            height=height,
            time_base=stream.time_base,
            rate=stream.average_rate or stream.guessed_rate,
            frames=stream.frames,
            has_audio=bool(self._container.streams.audio),
            **tags,
        )

    def _check_index(self, container: av.container.InputContainer) -> None:
        """An MP4 whose index comes first but whose data was cut off: the index points past the end."""
        size = self.path.stat().st_size
        for stream in container.streams:
            if stream.type not in ("video", "audio"):
                continue
            entries = stream.index_entries
            end = max((entry.pos + entry.size for entry in entries), default=0)
            if end > size:
                raise MediaError(f"{self.path}: the file is truncated ({size} bytes, its index refers to "
                                 f"{end}); copy or download it again")

    def _first_frame_tags(self) -> dict[str, int]:
        """Decode one frame to learn rotation and colour tags (and prove the stream decodes), then rewind.

        Rewinding reopens the file rather than seeking: seeking is not exact in every container.
        """
        try:
            frame = next(self._container.decode(self._container.streams.video[0]), None)
        except av.error.FFmpegError as err:
            raise MediaError(
                f"{self.path}: video does not decode ({err.strerror or err}); the file is damaged"
            ) from None
        if frame is None:
            raise MediaError(f"{self.path}: the video stream holds no frames; the file is truncated or empty")
        tags = {
            "rotation": round(frame.rotation or 0) % 360,
            "color_range": int(frame.color_range),
            "colorspace": int(frame.colorspace),
            "color_primaries": int(frame.color_primaries),
            "color_trc": int(frame.color_trc),
        }
        self._container.close()
        self._container = _open_container(self.path)
        self._container.streams.video[0].thread_type = "AUTO"
        return tags

    @property
    def audio_stream(self) -> av.audio.stream.AudioStream | None:
        """The first audio stream, copied to the output packet for packet."""
        return self._container.streams.audio[0] if self._container.streams.audio else None

    def frames(self, on_audio: Callable[[av.Packet], None] | None = None) -> Iterator[TimedFrame]:
        """Every decoded video frame, upright, with its pts; audio packets go to `on_audio` as they arrive."""
        video = self._container.streams.video[0]
        streams = [video] + ([self.audio_stream] if on_audio and self.audio_stream else [])
        last_pts: int | None = None
        decoded = 0
        try:
            for packet in self._container.demux(streams):
                if packet.stream.type == "audio":
                    if packet.size:  # the demuxer ends each stream with an empty flush packet
                        on_audio(packet)
                    continue
                for frame in packet.decode():
                    pts = frame.pts
                    if pts is None:
                        # no timestamp in the container: continue one frame interval after the last
                        step = int(1 / (self.info.rate * self.info.time_base)) if self.info.rate else 1
                        pts = 0 if last_pts is None else last_pts + step
                    last_pts = pts
                    image = upright(decoded_to_rgb(frame), self.info.rotation)
                    decoded += 1
                    yield TimedFrame(image=image, pts=pts, time_base=self.info.time_base)
        except av.error.FFmpegError as err:
            raise MediaError(f"{self.path}: decoding failed ({err.strerror or err}); the file is damaged") from None
        if decoded < self.info.frames:
            # an MP4 with its index first and its data cut off ends early without a decoding error
            raise MediaError(f"{self.path}: only {decoded} of the {self.info.frames} frames its header declares "
                             "could be read; the file is truncated")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frames(path: Path | str, every: int = 1, limit: int | None = None) -> list[np.ndarray]:
    """RGB frames of a video (every `every`-th, at most `limit`), upright: for measurements and tests."""
    frames: list[np.ndarray] = []
    with FileSource(path) as source:
        for i, frame in enumerate(source.frames()):
            if limit is not None and len(frames) >= limit:
                break
            if i % every == 0:
                frames.append(frame.image)
    return frames
