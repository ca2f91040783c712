"""Sources and sinks of frames: video files (PyAV) and a synthetic test pattern."""
from stream.media.frames import TimedFrame
from stream.media.pattern import TestPatternSource
from stream.media.sink import CODECS, Codec, EncoderSettings, FileSink
from stream.media.source import FileSource, VideoInfo

__all__ = [
    "CODECS",
    "Codec",
    "EncoderSettings",
    "FileSink",
    "FileSource",
    "TestPatternSource",
    "TimedFrame",
    "VideoInfo",
]
