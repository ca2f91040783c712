"""Small video files that the media, file-job and demo tests build for themselves (PyAV, no fixtures on disk)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 44100


def pattern(index: int, height: int, width: int) -> np.ndarray:
    """A frame no codec confuses with another: gradients, a moving block and an asymmetric corner mark."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                      np.full_like(x, (index * 37) % 256)], axis=-1).astype(np.uint8)
    block = max(min(height, width) // 6, 2)
    left = (index * 3) % max(width - block, 1)
    image[:block, left:left + block] = 255
    image[-block:, :block] = (255, 0, 0)  # bottom-left red: shows which way a rotation went
    return image


def make_clip(path: Path, frames: int = 12, size: tuple[int, int] = (96, 64), pts: list[int] | None = None,
              time_base: Fraction = Fraction(1, 1000), audio: bool = True, lossless: bool = False,
              rotation: int = 0, color_range: int | None = None, colorspace: int | None = None,
              options: dict[str, str] | None = None) -> list[np.ndarray]:
    """Write a clip of `frames` pattern frames (width, height = size) at timestamps `pts` (default 40 ms
    apart, in `time_base`), with an AAC tone when `audio`. Returns the RGB frames as stored."""
    width, height = size
    pts = pts if pts is not None else [i * 40 for i in range(frames)]
    images = [pattern(i, height, width) for i in range(frames)]
    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream("libx264rgb" if lossless else "libx264", rate=25)
        video.width, video.height = width, height
        video.pix_fmt = "rgb24" if lossless else "yuv420p"
        video.options = {"qp": "0"} if lossless else {"crf": "10"}
        video.time_base = time_base
        video.codec_context.time_base = time_base
        if color_range is not None:
            video.codec_context.color_range = color_range
        if colorspace is not None:
            video.codec_context.colorspace = colorspace
        if rotation:
            video.set_display_rotation(rotation)
        stream_audio = None
        if audio:
            stream_audio = container.add_stream("aac", rate=AUDIO_RATE)
            stream_audio.layout = "mono"
        for image, stamp in zip(images, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if not lossless:
                frame = frame.reformat(format="yuv420p", dst_colorspace=colorspace, dst_color_range=color_range)
            frame.pts, frame.time_base = stamp, time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if stream_audio is not None:
            seconds = float((pts[-1] + 40) * time_base) if pts else 0.5
            total = int(seconds * AUDIO_RATE)
            for start in range(0, total, 1024):
                count = min(1024, total - start)
                t = (start + np.arange(count)) / AUDIO_RATE
                chunk = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                                   format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
                container.mux(stream_audio.encode(chunk))
            container.mux(stream_audio.encode(None))
    return images


def video_timestamps(path: Path) -> list[Fraction]:
    """Presentation times (seconds, exact) of every decoded video frame, in order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.pts * stream.time_base for frame in container.decode(stream)]


def audio_packets(path: Path) -> list[tuple[bytes, Fraction | None]]:
    """(payload, pts in seconds) of every audio packet."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        stream = container.streams.audio[0]
        return [(bytes(p), None if p.pts is None else p.pts * stream.time_base)
                for p in container.demux(stream) if p.size]


def trimmed_copy(source: Path, target: Path, frames: int) -> Path:
    """The first `frames` video packets of `source` in decode order, with the audio demuxed alongside,
    stream-copied (no re-encode). A prefix in decode order always decodes: references come first."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        streams = [s for s in src.streams if s.type in ("video", "audio")]
        mapping = {s.index: dst.add_stream_from_template(s) for s in streams}
        count = 0
        for packet in src.demux(*streams):
            if packet.dts is None or not packet.size:
                continue
            if packet.stream.type == "video":
                if count == frames:
                    break
                count += 1
            packet.stream = mapping[packet.stream.index]
            dst.mux(packet)
    return target
