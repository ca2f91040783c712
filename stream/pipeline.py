"""The networks' stages of one frame: aligned crops in, the change each face gets out.

A renderer turns aligned uint8 crops into *changes*: float32 [S, S, 3] in 0..255 units, in crop space,
never rounded or clipped (stream/pixels.py). The session (stream/session.py) confines a change to its
edits' face regions, weighs it by the face's confidence and adds it to the frame once, at paste-back.

- GanRenderer: encoder engine -> W+ -> latent edits -> generator engine. By default the change is
  G(w') - G(w), the edit's change in the generator's own rendering (the detail-preserving residual of
  DESIGN.md), split into the motion it draws (a flow, which the session applies to the crop's own pixels)
  and the paint the motion does not explain (stream/motion.py); `motion=False` adds G(w') - G(w) in place;
  `residual=False` replaces the face by G(w'), colour-matched to the crop with the transfer
  that maps G(w) onto the crop, so the edit's own mean change (a darker open mouth) is kept.
  `residual_colour="luma"` keeps only the change's brightness: a small generator's colour errors then
  cannot tint the face, while shapes still show. Every render also measures how well G(w) reproduces
  the crop inside the face (`fidelity`, PSNR in dB), which the session's confidence gate reads.
- StudentRenderer: a distilled student engine per edit, at the crop's resolution, in one pass.

Renderers hold no per-face or per-edit state: one instance is shared by every session (every live peer).
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.backends.base import Engine
from engines.errors import UserError
from stream.composite import colour_transfer, face_mask
from stream.config import EditSpec
from stream.edits.directions import Direction
from stream.edits.editor import LatentEdit, apply_edits
from stream.motion import Flow, split_change
from stream.pixels import SCALE, Images, Pixels, luma_only, to_images, to_pixels
from stream.types import RESIDUAL_COLOURS, Crop, ResidualColour, StageTimes, WPlus

# The networks' input and output names: the pipeline, build-engines and calibrate all use these.
ENCODER_IO = ("image", "codes")
GENERATOR_IO = ("wplus", "image")
STUDENT_IO = ("image", "edited")


@contextmanager
def timed(times: StageTimes, stage: str) -> Iterator[None]:
    """Add the wall time of the block to `times[stage]` in milliseconds."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times.add(stage, (time.perf_counter() - start) * 1000.0)


def coloured(change: Pixels, colour: ResidualColour) -> Pixels:
    """A change as it goes back: whole ("rgb") or its brightness only ("luma")."""
    return luma_only(change) if colour == "luma" else change


def residual_change(delta: Images, size: int, colour: ResidualColour = "rgb") -> Pixels:
    """G(w') - G(w) [N, 3, s, s] -> the change to add to the crops, [N, size, size, 3] in 0..255 units."""
    return coloured(to_pixels(delta, size), colour)


def run_batched(engine: Engine, name: str, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Run a static-batch engine over N items: chunks of its batch size, the last one padded."""
    spec_batch = engine.input_specs[name].shape[0]
    outputs = []
    for start in range(0, len(batch), spec_batch):
        chunk = batch[start:start + spec_batch]
        count = len(chunk)
        if count < spec_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], spec_batch - count, axis=0)])
        result = engine.run({name: chunk})
        outputs.append(next(iter(result.values()))[:count])
    return np.concatenate(outputs)


def masked_psnr(reconstruction: Pixels, crops: Sequence[Crop], mask: npt.NDArray[np.float32]) -> list[float]:
    """PSNR (dB) of absolute-valued reconstructions [N, S, S, 3] against uint8 crops, weighted by `mask`."""
    weight = mask[..., None] / max(float(mask.sum()) * 3, 1e-6)
    out = []
    for recon, crop in zip(reconstruction, crops):
        mse = float((((recon - crop.astype(np.float32)) ** 2) * weight).sum())
        out.append(10.0 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
    return out


@dataclass(frozen=True)
class Rendered:
    """A renderer's output for N faces: the changes, how well the model drew each face (dB; None when
    the renderer cannot tell, as a student cannot) and the motion to move each crop's own pixels with
    (None: the change is all there is)."""

    changes: Pixels                      # [N, S, S, 3] float32, 0..255 units
    fidelity: list[float] | None = None
    flows: list[Flow] | None = None


class GanRenderer:
    """Encoder engine + latent edits + generator synthesis engine.

    encoder: Engine [B, 3, E, E] in [-1, 1] -> codes [B, num_ws, D] (before latent_avg);
    generator: Engine [B', num_ws, D] -> image [B', 3, R, R]. latent_avg ([D] or [num_ws, D]) is added
    to the encoder's codes when given.
    """

    def __init__(self, encoder: Engine, generator: Engine, directions: Mapping[str, Direction], *,
                 crop_size: int, latent_avg: npt.NDArray[np.float32] | None = None, residual: bool = True,
                 residual_colour: ResidualColour = "rgb", motion: bool = True) -> None:
        if residual_colour not in RESIDUAL_COLOURS:
            raise UserError(f"residual colour {residual_colour!r}: choose one of {', '.join(RESIDUAL_COLOURS)}")
        self.encoder, self.generator = encoder, generator
        self.directions = dict(directions)
        self.names = tuple(sorted(self.directions))
        self.crop_size = crop_size
        self.residual = residual
        self.residual_colour = residual_colour
        self.motion = motion
        (self._encoder_input, encoder_spec), = encoder.input_specs.items()
        (self._generator_input, generator_spec), = generator.input_specs.items()
        self.encoder_size = encoder_spec.shape[-1]
        self.num_ws, self.style_dim = generator_spec.shape[1], generator_spec.shape[2]
        self.latent_avg = None if latent_avg is None else np.asarray(latent_avg, np.float32)
        self._face = face_mask(crop_size)

    def latent_edits(self, edits: Sequence[EditSpec]) -> list[LatentEdit]:
        """A user's strength 1 is each direction's default strength, the one that shows the attribute clearly."""
        return [LatentEdit(self.directions[name], float(strength) * self.directions[name].default_strength)
                for name, strength in edits if strength != 0]

    def encode(self, crops: Sequence[Crop]) -> WPlus:
        """Crops -> W+ codes [N, num_ws, D], latent_avg included."""
        codes = run_batched(self.encoder, self._encoder_input, to_images(crops, self.encoder_size))
        return codes + self.latent_avg if self.latent_avg is not None else codes

    def render(self, crops: Sequence[Crop], codes: WPlus, edits: Sequence[EditSpec], times: StageTimes) -> Rendered:
        """The changes for crops whose (already smoothed) codes are [N, num_ws, D]: edits, then synthesis."""
        codes = np.asarray(codes, dtype=np.float32)
        count = len(crops)
        with timed(times, "edit"):
            edited = apply_edits(codes, self.latent_edits(edits)).astype(np.float32)
        with timed(times, "generate"):
            both = run_batched(self.generator, self._generator_input, np.concatenate([edited, codes]))
        reconstruction = to_pixels(both[count:], self.crop_size) + SCALE
        fidelity = masked_psnr(reconstruction, crops, self._face)
        if self.residual and not self.motion:
            return Rendered(residual_change(both[:count] - both[count:], self.crop_size, self.residual_colour),
                            fidelity)
        edited_pixels = to_pixels(both[:count], self.crop_size) + SCALE
        if self.residual:
            with timed(times, "motion"):
                flows, paints = zip(*(split_change(before, after)
                                      for before, after in zip(reconstruction, edited_pixels)))
            return Rendered(coloured(np.stack(paints), self.residual_colour), fidelity, list(flows))
        changes = []
        for crop, recon, image in zip(crops, reconstruction, edited_pixels):
            # the transfer that takes G(w) onto the crop, applied to G(w'): the generator's cast goes,
            # the edit's own change of colour and brightness stays
            gain, offset = colour_transfer(recon, crop, self._face)
            changes.append(image * gain + offset - crop.astype(np.float32))
        return Rendered(np.stack(changes), fidelity)


class StudentRenderer:
    """Distilled students: `students` maps an edit name to (engine, strength it was distilled at).

    Each engine maps [1, 3, S, S] in [-1, 1] to the edited image; a requested strength other than the
    distilled one scales the predicted change linearly (strength 0: no change). Several edits apply in
    the order given, each on the previous one's output.
    """

    def __init__(self, students: Mapping[str, tuple[Engine, float]], *, crop_size: int) -> None:
        if not students:
            raise UserError("the student path needs at least one student (none in this pack)")
        sizes = {spec.shape[-1] for engine, _ in students.values() for spec in engine.input_specs.values()}
        if len(sizes) != 1 or any(trained == 0 for _, trained in students.values()):
            raise UserError(f"students must share one input size and have non-zero strengths; got sizes {sizes}")
        self._size = sizes.pop()
        self.students = dict(students)
        self.names = tuple(sorted(self.students))
        self.crop_size = crop_size

    def render(self, crops: Sequence[Crop], edits: Sequence[EditSpec], times: StageTimes) -> Rendered:
        with timed(times, "student"):
            changes = []
            for crop in crops:
                original = to_images([crop], self._size)
                x = original
                for name, strength in edits:
                    if strength == 0:
                        continue
                    engine, trained = self.students[name]
                    (input_name, _), = engine.input_specs.items()
                    result = next(iter(engine.run({input_name: x}).values()))
                    x = x + (result - x) * (strength / trained)
                changes.append(to_pixels(x - original, self.crop_size)[0])
        return Rendered(np.stack(changes))
