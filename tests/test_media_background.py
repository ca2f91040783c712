"""Background threads of the file job: order kept, errors raised in the caller, stoppable when blocked."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from stream.errors import MediaError
from stream.media import FileSink, FileSource
from stream.media.background import QUEUE_ITEMS, BackgroundIterator, BackgroundWriter, demuxed
from stream.media.frames import TimedFrame
from stream.types import StageTimes
from tests.media_clips import audio_packets, make_clip, video_timestamps


def test_items_arrive_in_order_and_errors_reach_the_consumer() -> None:
    assert list(BackgroundIterator(iter(range(50)), "numbers")) == list(range(50))

    def failing():
        yield 1
        raise MediaError("in.mp4: decoding failed")

    items = BackgroundIterator(failing(), "failing")
    with pytest.raises(MediaError, match="decoding failed"):
        list(items)


def test_stop_ends_a_producer_waiting_for_room() -> None:
    items = BackgroundIterator(itertools.count(), "endless")
    consumed = list(itertools.islice(iter(items), QUEUE_ITEMS))
    items.stop()  # the producer is blocked on a full queue: it must notice and end (else this hangs)
    assert consumed == list(range(QUEUE_ITEMS))


def test_decode_and_write_threads_copy_a_clip(tmp_path: Path) -> None:
    clip = tmp_path / "in.mp4"
    make_clip(clip, frames=10, size=(96, 64))
    out = tmp_path / "out.mp4"
    times = StageTimes()
    with FileSource(clip) as source, FileSink(out, source.info, audio=source.audio_stream) as sink:
        writer = BackgroundWriter(sink, times)
        for item in BackgroundIterator(demuxed(source, times), "decode"):
            if isinstance(item, TimedFrame):
                writer.write(item.image, item.pts)
            else:
                writer.write_audio(item)
        writer.finish()
    assert times.counts["decode"] == times.counts["write"] == 10
    assert video_timestamps(out) == video_timestamps(clip)
    assert audio_packets(out) == audio_packets(clip)


def test_a_write_error_is_raised_in_the_caller(tmp_path: Path) -> None:
    clip = tmp_path / "in.mp4"
    make_clip(clip, frames=2, size=(96, 64), audio=False)
    with FileSource(clip) as source, FileSink(tmp_path / "out.mp4", source.info) as sink:
        writer = BackgroundWriter(sink, StageTimes())
        writer.write(np.zeros((10, 10, 3), np.uint8), 0)  # wrong size: the sink raises in the thread
        with pytest.raises(ValueError, match="does not match"):
            writer.finish()
        sink.abort()
