"""The file job: decode a video, edit every frame's faces, encode it with the audio copied through.

Checks run cheapest first, so a bad input or output fails in milliseconds and before any model loads:
the input is opened and probed, the output's temporary file is created, then the networks load. Any
failure or interruption after that deletes the temporary file; OUT appears only when the job finished.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import av

from engines.errors import UserError
from stream.config import EditSpec, FaceConfig, FileJobConfig, ModelConfig
from stream.lookahead import LookaheadEditor
from stream.media import FileSink, FileSource, TimedFrame, VideoInfo
from stream.media.background import BackgroundIterator, BackgroundWriter, demuxed
from stream.modelpack import ModelPack, load_pack
from stream.pipeline import EditModel, FaceEditPipeline, GanEditModel, LocatedFaces, StudentEditModel
from stream.types import Frame, StageTimes

log = logging.getLogger(__name__)
DEFAULT_CROP_SIZE = 256  # FFHQ crop side when no pack states one (loose --student / model files)
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

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _student_model(config: ModelConfig, pack: ModelPack | None, edits: Sequence[EditSpec],
                   threads: int | None) -> StudentEditModel:
    from engines.backends import create_engine
    from engines.checkpoints import load_checkpoint

    crop_size = pack.crop_size if pack is not None else DEFAULT_CROP_SIZE
    spec = {"image": ((1, 3, crop_size, crop_size), "float32")}
    students = {}
    if config.student is not None:
        if len(edits) != 1:
            raise UserError(f"--student {config.student}: a student performs one edit; give exactly one --edit")
        checkpoint = load_checkpoint(config.student)
        if checkpoint.architecture != "student":
            raise UserError(f"--student {config.student}: holds a {checkpoint.architecture}, not a student")
        # a loose student file does not say its distillation strength: it is taken as 1
        modules = {edits[0][0]: (checkpoint.module, 1.0)}
    else:
        assert pack is not None
        modules = {name: (pack.load_student(name), pack.students[name].strength) for name, _ in edits}
    for name, (module, strength) in modules.items():
        engine = create_engine(module, config.backend, spec, threads=threads, output_names=("edited",))
        students[name] = (engine, strength)
    return StudentEditModel(students, crop_size=crop_size)


def _gan_model(config: ModelConfig, pack: ModelPack | None, threads: int | None) -> GanEditModel:
    from engines import load_encoder, load_generator
    from engines.backends import create_engine
    from stream.edits.directions import load_direction_set

    generator = load_generator(config.tuned_generator or config.generator or pack.generator)  # type: ignore[union-attr]
    encoder = load_encoder(config.encoder or pack.encoder)  # type: ignore[union-attr]
    files = config.directions or (pack.directions,)  # type: ignore[union-attr]
    directions = load_direction_set(files, generator.num_ws, generator.style_dim)
    batch = 2 if config.residual else 1  # residual: G(w') and G(w) in one call
    generator_engine = create_engine(
        generator.export_safe(), config.backend,
        {"wplus": ((batch, generator.num_ws, generator.style_dim), "float32")}, threads=threads,
        output_names=("image",))
    size = encoder.input_size
    encoder_engine = create_engine(encoder.module, config.backend, {"image": ((1, 3, size, size), "float32")},
                                   threads=threads, output_names=("codes",))
    latent_avg = None if encoder.latent_avg is None else encoder.latent_avg.detach().cpu().numpy()
    smoother = None
    if config.smoothing != "off":
        from stream.edits.smoothing import make_code_smoother

        smoother = make_code_smoother
    # the residual's colour mode belongs to the pack's generator; a generator of your own keeps its colours
    colour = pack.residual_colour if pack is not None and config.generator is None else "rgb"
    return GanEditModel(encoder_engine, generator_engine, directions,
                        crop_size=pack.crop_size if pack is not None else DEFAULT_CROP_SIZE,
                        latent_avg=latent_avg, residual=config.residual, residual_colour=colour, smoother=smoother)


def build_edit_model(config: ModelConfig, edits: Sequence[EditSpec], threads: int | None = None) -> EditModel:
    """The EditModel `config` asks for, with `edits` set. The pack is read unless files replace all of it.
    threads: CPU threads per engine (None: the backend's default, all cores)."""
    own_gan_files = config.generator and config.encoder and bool(config.directions)
    pack = None if (config.student or own_gan_files) else load_pack(config.pack)
    path = config.path
    if config.student is not None:
        path = "student"
    elif config.generator is not None or config.encoder is not None or config.tuned_generator is not None:
        path = "gan"
    elif path == "auto":
        covered = pack is not None and edits and all(name in pack.students for name, _ in edits)
        path = "student" if covered else "gan"
    log.info("model: %s path%s", path, f" from pack {pack.root}" if pack is not None else "")
    if path == "student":
        model: EditModel = _student_model(config, pack, edits, threads)
    else:
        model = _gan_model(config, pack, threads)
    model.set_edits(edits)
    return model


def build_tracker(config: FaceConfig, fps: float):
    from stream.faces.detect import make_detector
    from stream.faces.track import FaceTracker

    detector = make_detector(config.detector, config.face_models)
    return FaceTracker(detector, detect_every=config.detect_every, fps=fps)


def _located(items: Iterable[TimedFrame | av.Packet], pipeline: FaceEditPipeline
             ) -> Iterator[tuple[TimedFrame | av.Packet, LocatedFaces | None]]:
    """Each frame with its faces tracked and aligned (`pipeline.locate`); audio packets pass along."""
    for item in items:
        yield item, pipeline.locate(item.image, item.seconds) if isinstance(item, TimedFrame) else None


def _edited_frames(located: Iterable[tuple[TimedFrame | av.Packet, LocatedFaces | None]],
                   writer: BackgroundWriter, pipeline: FaceEditPipeline,
                   lookahead: LookaheadEditor[TimedFrame] | None) -> Iterator[tuple[TimedFrame, Frame]]:
    """(input frame, edited image) in input order; audio packets go straight on to the writer."""
    for item, faces in located:
        if not isinstance(item, TimedFrame):
            writer.write_audio(item)
        elif lookahead is not None:
            yield from lookahead.push(item, item.image, faces)
        else:
            yield item, pipeline.edit(item.image, faces)
    if lookahead is not None:
        yield from lookahead.flush()


def default_edits(config: FileJobConfig) -> tuple[EditSpec, ...]:
    """The requested edits, or the pack's default edit when none was given."""
    if config.edits:
        return config.edits
    pack = load_pack(config.model.pack)
    if pack.default_edit is None:
        raise UserError(f"no --edit given and {pack.root} names no default edit; add e.g. --edit smile=1.0")
    log.info("no --edit given: applying the pack's default %s=%g", *pack.default_edit)
    return (pack.default_edit,)


def run_file_job(config: FileJobConfig, on_start: Callable[[VideoInfo], None] | None = None,
                 on_frame: Callable[[TimedFrame], None] | None = None) -> FileJobResult:
    """Edit `config.input` into `config.output`. `on_start(info)` runs once the input is probed and the
    models are loaded, `on_frame(frame)` after each frame is handed to the writer (progress bars).

    Decoding, tracking and encoding run in threads of their own (stream/media/background.py) beside the
    models, so on a small CPU their times overlap rather than add up; each row of `times` is its own
    thread's work. The tracker runs up to a few frames ahead of the models."""
    with FileSource(config.input) as source:
        info = source.info
        width = info.width * 2 if config.side_by_side else info.width
        with FileSink(config.output, info, width=width, height=info.height, settings=config.encoder,
                      audio=source.audio_stream, overwrite=config.overwrite) as sink:
            edits = default_edits(config)
            # the file job's smoothing decides: the model filters causally only when "causal" is asked for
            causal = "causal" if config.smoothing == "causal" else "off"
            model = build_edit_model(replace(config.model, smoothing=causal), edits, ENGINE_THREADS)
            fps = float(info.rate) if info.rate else 30.0
            pipeline = FaceEditPipeline(build_tracker(config.face, fps), model, faces=config.face.faces)
            pipeline.set_edits(edits)
            lookahead = None
            if config.smoothing == "centred" and isinstance(model, GanEditModel):
                lookahead = LookaheadEditor[TimedFrame](pipeline, config.smoothing_sigma)
            times = pipeline.times
            if on_start is not None:
                on_start(info)
            start = time.perf_counter()
            frames = 0
            # four threads: decode -> track + align -> models + paste-back (this one) -> encode + mux
            decoded = BackgroundIterator(demuxed(source, times), "decode")
            located = BackgroundIterator(_located(decoded, pipeline), "track")
            writer = BackgroundWriter(sink, times)
            try:
                for frame, out in _edited_frames(located, writer, pipeline, lookahead):
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
    return FileJobResult(config.output, frames, seconds, times,
                         "student" if isinstance(model, StudentEditModel) else "gan")
