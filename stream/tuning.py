"""Iterative inversion and pivotal tuning per video, and the cache of tuned generators.

Iterative inversion (`invert`) refines the encoder's W+ codes of one face, or of every frame of a
track, by gradient steps against the aligned crops: L1 + (1 - SSIM), weighted to the face by its
landmarks (stream/losses.py), plus LPIPS when the user gives its weights (TuningSettings.perceptual).
Two regularisers keep it a small, coherent adjustment of the encoder's code: each layer's change is pulled towards the mean change over the layers (the layers move together,
as one w would), and for a track each frame's change towards the track's mean change (the frames of
one face move together, so nothing flickers).

Pivotal tuning (`tune_generator`; PTI, Roich et al. 2022, which STIT applies per video) trains a copy
of the generator for a few hundred steps so that it draws this clip's face at its pivots, while a
locality term keeps the copy's output for codes interpolated away from the pivots equal to the original
generator's, so that the edit directions keep their meaning.

The runtime encodes every frame with the encoder and never sees refined codes. So `tune_clip` takes
the clip's mean refinement `delta = mean(refined - encoded)` and folds it into the copy (each modulation
affine A(w) = M w + b gets b += M delta, so G'(w) = G(w + delta) exactly; `fold_code_offset`); the
pivots the copy is then tuned at are the encoder's own codes. The tuned generator is a drop-in
replacement: the file job renders with it (ModelConfig.tuned_generator), and the edits, which add to
the code, mean what they meant.

Tuned generators are cached as project safetensors under the engine cache root (engines/cache.py,
folder `tuned/`), keyed by the video's sha256, the generator's and the encoder's, the face detector, the
crop size and the settings. An entry is written once tuning has finished, atomically (payload, then its
sidecar); an interrupted run leaves none.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

from engines.cache import EngineCache, default_cache_dir, sha256_file
from engines.errors import UserError
from engines.nets.stylegan2 import Generator, ModulatedConv2d
from engines.nets.synthesis import synthesize
from stream import pixels
from stream.config import InversionSettings, TuningSettings
from stream.faces.align import ffhq_affine, transform_points, warp_to_crop
from stream.losses import loss_weights, psnr, reconstruction_loss

if TYPE_CHECKING:
    from engines import LoadedEncoder, LoadedGenerator
    from stream.config import FaceConfig, ModelConfig
    from stream.faces.detect import FaceDetector

log = logging.getLogger(__name__)

TUNING_FORMAT = 1               # bump when what a cached generator means changes
DEFAULT_CROP_SIZE = 256         # as the file job's, for loose --generator/--encoder files
Phase = Literal["faces", "invert", "tune"]
# on_step(phase, steps done, steps in the phase): progress bars; raising from it stops the work
OnStep = Callable[[Phase, int, int], None]
# (pred, target) -> the weighted perceptual term to add to a reconstruction loss (a scalar)
Perceptual = Callable[[Tensor, Tensor], Tensor]


def perceptual_term(settings: TuningSettings, device: torch.device) -> Perceptual | None:
    """settings.perceptual_weight x LPIPS from the user's files, or None without them."""
    if settings.perceptual is None:
        return None
    from engines.nets.lpips import load_lpips

    lpips = load_lpips(settings.perceptual.linear, settings.perceptual.backbone).to(device)
    return lambda pred, target: settings.perceptual_weight * lpips(pred, target).mean()


def _loss(pred: Tensor, target: Tensor, weights: Tensor, perceptual: Perceptual | None) -> Tensor:
    loss, _ = reconstruction_loss(pred, target, weights)
    return loss if perceptual is None else loss + perceptual(pred, target)


# ------------------------------------------------------------------------------------------- faces
@dataclass(frozen=True)
class ClipFaces:
    """The largest face of each sampled frame of a clip, aligned to the FFHQ crop."""

    crops: npt.NDArray[np.uint8]        # [N, S, S, 3] RGB
    landmarks: npt.NDArray[np.float32]  # [N, 68, 2] (or [N, 5, 2]) in crop pixels
    frames: npt.NDArray[np.int64]       # [N] index of each crop's frame in the clip


def _area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def collect_faces(video: Path, detector: FaceDetector, size: int, every: int = 1,
                  max_frames: int | None = None, on_step: OnStep | None = None) -> ClipFaces:
    """Aligned crops of the largest face in every `every`-th frame of `video` (the stride grows so that at
    most `max_frames` are taken, spread over the clip). UserError when no sampled frame has a face."""
    from stream.media import FileSource

    crops, landmarks, index = [], [], []
    with FileSource(video) as source:
        total = source.info.frames
        stride = max(every, math.ceil(total / max_frames)) if total and max_frames else every
        for i, frame in enumerate(source.frames()):
            if i % stride:
                continue
            if on_step is not None:
                on_step("faces", i + 1, total)
            faces = detector.detect(frame.image)
            if not faces:
                continue
            face = max(faces, key=lambda f: _area(f.box))
            affine = ffhq_affine(face.landmarks, size)
            crops.append(warp_to_crop(frame.image, affine, size))
            landmarks.append(transform_points(affine, face.landmarks).astype(np.float32))
            index.append(i)
            if max_frames is not None and len(crops) >= max_frames:
                break
    if not crops:
        raise UserError(f"{video}: no face found in any sampled frame, so there is nothing to tune to; "
                        "give a clip with a visible, roughly frontal face, or leave out --tune")
    return ClipFaces(np.stack(crops), np.stack(landmarks), np.asarray(index, dtype=np.int64))


def to_images(crops: npt.NDArray[np.uint8], size: int) -> Tensor:
    """uint8 crops [N, S, S, 3] -> [N, 3, size, size] float in [-1, 1] (area resize, as the runtime)."""
    return torch.from_numpy(pixels.to_images(crops, size))


def face_weights(faces: ClipFaces, size: int) -> Tensor:
    """Loss weights [N, 1, size, size] on the face, mouth and eyes (uniform for 5-point landmarks)."""
    if faces.landmarks.shape[1] != 68:
        return torch.ones(len(faces.crops), 1, size, size)
    return loss_weights(faces.landmarks, faces.crops.shape[1], size)


@torch.no_grad()
def encode(encoder: LoadedEncoder, crops: npt.NDArray[np.uint8], chunk: int = 16) -> Tensor:
    """The encoder's W+ codes [N, num_ws, D] of crops (latent_avg included, as the runtime)."""
    return torch.cat([torch.as_tensor(encoder.encode(to_images(crops[i:i + chunk], encoder.input_size)))
                      for i in range(0, len(crops), chunk)])


# --------------------------------------------------------------------------------------- inversion
def invert(generator: Generator, codes: Tensor, targets: Tensor, weights: Tensor, settings: InversionSettings,
           *, track: bool = True, on_step: OnStep | None = None, perceptual: Perceptual | None = None) -> Tensor:
    """Refined codes [N, num_ws, D] from the encoder's `codes` for `targets` [N, 3, R, R] in [-1, 1]
    (R: the generator's resolution) with loss `weights` [N, 1, R, R]. track: the N faces are frames of
    one track (their changes are pulled together); False for independent faces or a single image."""
    generator = generator.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    delta = torch.zeros_like(codes, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    for step in range(settings.steps):
        pick = torch.randperm(len(codes), generator=gen)[:settings.batch].to(codes.device)
        loss = _loss(synthesize(generator, codes[pick] + delta[pick]), targets[pick], weights[pick], perceptual)
        loss = loss + settings.layer_weight * (delta - delta.mean(1, keepdim=True)).square().mean()
        if track:
            loss = loss + settings.track_weight * (delta - delta.mean(0, keepdim=True)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step("invert", step + 1, settings.steps)
    return (codes + delta).detach()


# ------------------------------------------------------------------------------------------ tuning
def _modulations(g: Generator) -> Iterator[tuple[int, ModulatedConv2d]]:
    """(W+ index, modulated conv) for every layer of the synthesis, in the order `synthesis` uses them."""
    yield 0, g.conv1.conv
    yield 1, g.to_rgb1.conv
    for i, to_rgb in enumerate(g.to_rgbs):
        yield 2 * i + 1, g.convs[2 * i].conv
        yield 2 * i + 2, g.convs[2 * i + 1].conv
        yield 2 * i + 3, to_rgb.conv


@torch.no_grad()
def fold_code_offset(g: Generator, offset: Tensor) -> None:
    """Make g(w) draw what g(w + offset) drew, for every w (offset [num_ws, D]), in place: the modulation
    is affine, style = scale * M (w + offset) + lr_mul * b, so the offset moves into its bias."""
    for index, conv in _modulations(g):
        lin = conv.modulation
        lin.bias += F.linear(offset[index].to(lin.weight), lin.weight * lin.scale) / lin.lr_mul


def far_code_sampler(pivots: Tensor, generator: Generator, mapping_trained: bool,
                     gen: torch.Generator) -> Callable[[int], Tensor]:
    """count -> random codes [count, num_ws, D] that the locality term pulls pivots towards.

    A generator whose mapping network was trained (a real StyleGAN2, which carries latent_avg): mapped
    random z, as PTI. Otherwise (the demo pack's mapping is untrained): Gaussian codes with the pivots'
    mean and, per layer, the spread of their entries about it."""
    if mapping_trained:
        def mapped(count: int) -> Tensor:
            z = torch.randn(count, generator.style_dim, generator=gen).to(pivots)
            with torch.no_grad():
                return generator.mapping(z)[:, None].expand(-1, pivots.shape[1], -1)
        return mapped
    mean = pivots.mean(0)                                     # [L, D]
    spread = (mean - mean.mean(1, keepdim=True)).std(1)       # [L]

    def gaussian(count: int) -> Tensor:
        noise = torch.randn(count, *mean.shape, generator=gen).to(pivots)
        return mean + noise * spread[None, :, None]
    return gaussian


def tune_generator(generator: Generator, pivots: Tensor, targets: Tensor, weights: Tensor, settings: TuningSettings,
                   far_codes: Callable[[int], Tensor], on_step: OnStep | None = None,
                   perceptual: Perceptual | None = None) -> Generator:
    """A copy of `generator` tuned so that copy(pivots) draws `targets` [N, 3, R, R], its output at codes
    away from the pivots held to the original's (see TuningSettings). Only the synthesis is trained."""
    tuned = copy.deepcopy(generator).train()
    tuned.requires_grad_(True)
    tuned.style.requires_grad_(False)  # the mapping network draws nothing here
    original = generator.eval().requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    for step in range(settings.steps):
        pick = torch.randperm(len(pivots), generator=gen)[:settings.batch].to(pivots.device)
        loss = _loss(synthesize(tuned, pivots[pick]), targets[pick], weights[pick], perceptual)
        if settings.locality_weight > 0 and settings.locality_batch > 0:
            near = pivots[torch.randint(len(pivots), (settings.locality_batch,), generator=gen).to(pivots.device)]
            reach = settings.locality_reach + (1 - settings.locality_reach) * torch.rand(
                settings.locality_batch, 1, 1, generator=gen).to(pivots)
            far = near + reach * (far_codes(settings.locality_batch) - near)
            with torch.no_grad():
                reference = synthesize(original, far)
            loss = loss + settings.locality_weight * (synthesize(tuned, far) - reference).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step("tune", step + 1, settings.steps)
    return tuned.eval().requires_grad_(False)


@torch.no_grad()
def reconstruction_psnr(generator: Generator, codes: Tensor, targets: Tensor, chunk: int = 16) -> float:
    """Mean PSNR in dB of generator(codes) against targets (both [-1, 1], generator resolution)."""
    values = [psnr(synthesize(generator, codes[i:i + chunk]), targets[i:i + chunk]) for i in range(0, len(codes), chunk)]
    return float(torch.cat(values).mean())


@dataclass(frozen=True)
class TunedClip:
    """A generator tuned to one clip, with what it took and how well G(encoder's code) draws the clip's
    tuned frames: the original generator, after folding the refined codes' offset, after tuning."""

    generator: Generator
    frames: int
    seconds: float
    psnr_encoded: float
    psnr_refined: float
    psnr_tuned: float


def tune_clip(generator: LoadedGenerator, encoder: LoadedEncoder, faces: ClipFaces, settings: TuningSettings,
              on_step: OnStep | None = None, device: str | torch.device | None = None) -> TunedClip:
    """Invert the clip's faces as one track, fold their mean refinement into a copy of the generator and
    tune it at the encoder's codes (module docstring). Runs on the GPU when there is one."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    size = generator.resolution
    codes = encode(encoder, faces.crops).to(device)
    targets, weights = to_images(faces.crops, size).to(device), face_weights(faces, size).to(device)
    base = copy.deepcopy(generator.module).to(device)
    perceptual = perceptual_term(settings, device)
    refined = invert(base, codes, targets, weights, settings.invert, track=True, on_step=on_step,
                     perceptual=perceptual)
    psnr_encoded = reconstruction_psnr(base, codes, targets)
    fold_code_offset(base, (refined - codes).mean(0))
    psnr_refined = reconstruction_psnr(base, codes, targets)
    gen = torch.Generator().manual_seed(settings.seed)
    far = far_code_sampler(codes, base, generator.latent_avg is not None, gen)
    tuned = tune_generator(base, codes, targets, weights, settings, far, on_step, perceptual)
    psnr_tuned = reconstruction_psnr(tuned, codes, targets)
    seconds = time.perf_counter() - start
    log.info("tuned the generator on %d frames in %.0f s: G(w) %.2f dB -> %.2f dB (refined codes) -> %.2f dB",
             len(codes), seconds, psnr_encoded, psnr_refined, psnr_tuned)
    return TunedClip(tuned.cpu(), len(codes), seconds, psnr_encoded, psnr_refined, psnr_tuned)


# ------------------------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class TuningKey:
    """Everything a tuned generator depends on; two keys that differ never share an entry."""

    video_sha256: str
    generator_sha256: str
    encoder_sha256: str
    detector: str
    crop_size: int
    settings: dict
    format: int = TUNING_FORMAT

    def as_json(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()


def tuned_cache(root: Path | None = None) -> EngineCache:
    """The tuned-generator cache: `root`, or `tuned/` under the engine cache root (FACEEDIT_CACHE_DIR)."""
    return EngineCache(root if root is not None else default_cache_dir() / "tuned", suffix=".safetensors")


@dataclass(frozen=True)
class ClipNetworks:
    """The generator and encoder files a tuning uses (the pack's unless files replace them), and the crop size."""

    generator: Path
    encoder: Path
    crop_size: int

    @classmethod
    def from_model(cls, model: ModelConfig) -> ClipNetworks:
        if model.generator is not None and model.encoder is not None:
            return cls(Path(model.generator), Path(model.encoder), DEFAULT_CROP_SIZE)
        from stream.modelpack import load_pack

        pack = load_pack(model.pack)
        return cls(Path(model.generator or pack.generator), Path(model.encoder or pack.encoder), pack.crop_size)


def tuning_key(video: Path, networks: ClipNetworks, detector: str, settings: TuningSettings) -> TuningKey:
    described = asdict(settings)
    if settings.perceptual is not None:  # the LPIPS files by content, not by where they lie
        described["perceptual"] = [sha256_file(settings.perceptual.linear), sha256_file(settings.perceptual.backbone)]
    return TuningKey(sha256_file(video), sha256_file(networks.generator), sha256_file(networks.encoder), detector,
                     networks.crop_size, described)


@dataclass(frozen=True)
class TunedGenerator:
    """Where the clip's tuned generator is (a project safetensors), and the tuning, or None if it was cached."""

    path: Path
    tuning: TunedClip | None


def tune_for_video(video: Path, model: ModelConfig, face: FaceConfig, settings: TuningSettings | None = None, *,
                   cache: EngineCache | None = None, on_step: OnStep | None = None) -> TunedGenerator:
    """The generator of `model` tuned to the faces of `video`, from the cache or tuned now and cached."""
    from engines import load_encoder, load_generator
    from engines.checkpoints import safetensors_bytes
    from stream.faces.detect import make_detector

    settings = settings or TuningSettings()
    networks = ClipNetworks.from_model(model)
    key = tuning_key(video, networks, face.detector, settings)
    cache = cache or tuned_cache()
    if cache.load(key) is not None:
        log.info("%s: reusing the generator tuned to it (%s)", video, cache.path_for(key))
        return TunedGenerator(cache.path_for(key), None)
    generator, encoder = load_generator(networks.generator), load_encoder(networks.encoder)
    size = max(networks.crop_size, generator.resolution, encoder.input_size)
    faces = collect_faces(video, make_detector(face.detector, face.face_models), size, settings.every,
                          settings.max_frames, on_step)
    result = tune_clip(generator, encoder, faces, settings, on_step)
    extra = {"latent_avg": generator.latent_avg} if generator.latent_avg is not None else None
    payload = safetensors_bytes(result.generator, "stylegan2-generator", result.generator.config,
                                source_sha256=key.generator_sha256, extra_tensors=extra, source_format="tuned")
    return TunedGenerator(cache.store(key, payload), result)
