"""The file job: decode a video, edit every frame's faces, encode it with the audio copied through.

Checks run cheapest first, so a bad input or output fails in milliseconds and before any model loads:
the input is opened and probed, the output's temporary file is created, then the networks load. Any
failure or interruption after that deletes the temporary file; OUT appears only when the job finished.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av

from engines.errors import UserError
from stream.config import EditSpec, FaceConfig, FileJobConfig
from stream.lookahead import LookaheadEditor
from stream.media import FileSink, FileSource, TimedFrame, VideoInfo
from stream.media.background import BackgroundIterator, BackgroundWriter, demuxed
from stream.session import EditNetworks, EditSession, GateStats, LocatedFaces
from stream.types import Frame, StageTimes

if TYPE_CHECKING:
    from engines import LoadedGenerator
    from stream.faces.detection_tracker import DetectionTracker
    from stream.faces.track import FaceTracker

log = logging.getLogger(__name__)
# One CPU thread per network in the file job and live: decode, tracking and encode already run in threads
# of their own, and ONNX Runtime's extra pool threads spin while they wait, taking a core from them. On the
# 2-core machine this raised the file job's student path from about 22 to 32 fps (bench/RESULTS.md, File job).
ENGINE_THREADS = 1


@dataclass(frozen=True)
class FileJobResult:
    """What a finished job did: frames, wall time, ms per stage (decode and write included)."""

    output: Path
    frames: int
    seconds: float
    times: StageTimes
    model: str          # "student" or "gan"
    gate: GateStats     # how well the generator drew the faces (generator path)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def build_tracker(config: FaceConfig, fps: float) -> FaceTracker | DetectionTracker:
    """dlib: detect every few frames and follow with dlib's landmarks; a detector with its own landmarks
    (insightface): detect every frame, no dlib."""
    from stream.faces.detect import make_detector

    detector = make_detector(config.detector, config.face_models)
    if config.detector == "dlib":
        from stream.faces.track import FaceTracker

        return FaceTracker(detector, detect_every=config.detect_every, fps=fps)
    from stream.faces.detection_tracker import DetectionTracker

    return DetectionTracker(detector, fps=fps)


def _located(items: Iterable[TimedFrame | av.Packet], session: EditSession
             ) -> Iterator[tuple[TimedFrame | av.Packet, LocatedFaces | None]]:
    """Each frame with its faces tracked and aligned (`session.locate`); audio packets pass along."""
    for item in items:
        yield item, session.locate(item.image, item.seconds) if isinstance(item, TimedFrame) else None


def _edited_frames(located: Iterable[tuple[TimedFrame | av.Packet, LocatedFaces | None]],
                   writer: BackgroundWriter, session: EditSession,
                   lookahead: LookaheadEditor[TimedFrame] | None) -> Iterator[tuple[TimedFrame, Frame]]:
    """(input frame, edited image) in input order; audio packets go straight on to the writer."""
    for item, faces in located:
        if not isinstance(item, TimedFrame):
            writer.write_audio(item)
        elif lookahead is not None:
            yield from lookahead.push(item, item.image, faces)
        else:
            yield item, session.edit(item.image, faces)
    if lookahead is not None:
        yield from lookahead.flush()


def default_edits(config: FileJobConfig, networks: EditNetworks) -> tuple[EditSpec, ...]:
    """The requested edits, or the pack's default edit when none was given."""
    if config.edits:
        return config.edits
    if networks.default_edit is None:
        raise UserError("no --edit given and the model names no default edit; add e.g. --edit smile=1.0")
    log.info("no --edit given: applying the pack's default %s=%g", *networks.default_edit)
    return (networks.default_edit,)


def build_session(config: FileJobConfig, fps: float, generator: LoadedGenerator | None = None,
                  networks: EditNetworks | None = None) -> tuple[EditSession, LookaheadEditor[TimedFrame] | None]:
    """The job's edit session (edits set) and its look-ahead, when it smooths centred. networks: built
    already (a batch worker builds them once for all its videos); else built here from config.model, with
    `generator` (e.g. tuned to this video) in place of the configured one."""
    from stream.edits.smoothing import make_code_smoother

    networks = networks or EditNetworks(config.model, ENGINE_THREADS, generator)
    causal = make_code_smoother if config.smoothing == "causal" else None
    session = networks.session(build_tracker(config.face, fps), faces=config.face.faces, smoother=causal)
    state = session.set_edits(default_edits(config, networks))
    log.info("model: %s path", state.path)
    lookahead = None
    if config.smoothing == "centred" and state.path == "gan":
        lookahead = LookaheadEditor[TimedFrame](session, config.smoothing_sigma)
    return session, lookahead


def _warn_if_poorly_drawn(session: EditSession) -> None:
    gate = session.gate
    if gate.weakened:
        # only what the generator paints is weakened; the motion moves the person's own pixels (stream/session.py)
        config = session.networks.config
        painted = "what the generator paints on them" if config.motion and config.residual else "their edit"
        log.warning("%d of %d faces are poorly represented by the generator (fidelity down to %.1f dB): %s "
                    "was weakened; --tune fits the generator to this video", gate.weakened, gate.faces,
                    gate.lowest, painted)


def run_file_job(config: FileJobConfig, on_start: Callable[[VideoInfo], None] | None = None,
                 on_frame: Callable[[TimedFrame], None] | None = None,
                 generator: LoadedGenerator | None = None, networks: EditNetworks | None = None) -> FileJobResult:
    """Edit `config.input` into `config.output`. `on_start(info)` runs once the input is probed and the
    models are loaded, `on_frame(frame)` after each frame is handed to the writer (progress bars).
    generator: a loaded generator in place of the configured one (e.g. tuned to this video); networks:
    networks built already (they must be config.model's), shared by several jobs.

    Decoding, tracking and encoding run in threads of their own (stream/media/background.py) beside the
    models, so on a small CPU their times overlap rather than add up; each row of `times` is its own
    thread's work. The tracker runs up to a few frames ahead of the models."""
    with FileSource(config.input) as source:
        info = source.info
        width = info.width * 2 if config.side_by_side else info.width
        with FileSink(config.output, info, width=width, height=info.height, settings=config.encoder,
                      audio=source.audio_stream, overwrite=config.overwrite) as sink:
            session, lookahead = build_session(config, float(info.rate) if info.rate else 30.0, generator, networks)
            times = session.times
            if on_start is not None:
                on_start(info)
            start = time.perf_counter()
            frames = 0
            # four threads: decode -> track + align -> models + paste-back (this one) -> encode + mux
            decoded = BackgroundIterator(demuxed(source, times), "decode")
            located = BackgroundIterator(_located(decoded, session), "track")
            writer = BackgroundWriter(sink, times)
            try:
                for frame, out in _edited_frames(located, writer, session, lookahead):
                    writer.write(out, frame.pts, before=frame.image if config.side_by_side else None)
                    frames += 1
                    if on_frame is not None:
                        on_frame(frame)
                writer.finish()
            finally:
                writer.stop()
                located.stop()
                decoded.stop()
            sink.close()
            seconds = time.perf_counter() - start
    log.debug("%s: %d frames in %.1f s", config.output, frames, seconds)
    _warn_if_poorly_drawn(session)
    return FileJobResult(config.output, frames, seconds, times, session.state.path, session.gate)
