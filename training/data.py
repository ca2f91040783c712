"""Training data for the demo pack: aligned face crops of video clips, their landmarks, and the split.

Each clip is decoded once (stream.media.FileSource), the largest face per frame is found by dlib
(stream.faces.detect) and warped to the FFHQ crop (stream.faces.align) at `size` px; the crop, its 68
landmarks in crop pixels and the frame index are cached as one .npz per clip. The cache lives outside
the repository (it is derived data, hundreds of MB). The runtime aligns with the same functions, so the
pack sees at run time the crops it was trained on.

Long clips are subsampled to about MAX_FACES_PER_CLIP evenly spaced frames (dlib on every frame of a 20 s
1080x1920 clip costs minutes and adds near-duplicates). A clip that cannot be used (undecodable, no face)
is skipped with a one-line reason, kept next to the cache as NAME.skipped so later runs do not retry it.

Split: some clips are held out entirely (unseen people), and the last `holdout_frac` of every other
clip is held out as a contiguous block (neighbouring frames are near-duplicates, so interleaved hold-out
frames would flatter the numbers).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.faces.align import ffhq_affine, transform_points, warp_to_crop
from stream.faces.detect import DlibDetector
from stream.media.source import FileSource

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_FACES_PER_CLIP = 240  # about the face count of the first nine clips (8-10 s at 25 fps)
# dlib's HOG finds faces from 80 px up; at the runtime's 640 px a 1080x1920 clip's 209 px face would be 70 px
DETECT_MAX_SIDE = 1024


@dataclass
class ClipCrops:
    """The aligned faces of one clip."""

    name: str
    crops: npt.NDArray[np.uint8]        # [N, S, S, 3] RGB
    landmarks: npt.NDArray[np.float32]  # [N, 68, 2] in crop pixels
    frame_index: npt.NDArray[np.int64]  # [N] index of the source frame

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class Split:
    """Index arrays into the concatenation of all clips (in sorted clip-name order)."""

    train: npt.NDArray[np.int64]
    heldout_frames: npt.NDArray[np.int64]  # the last frames of the training clips
    heldout_clip: npt.NDArray[np.int64]    # every frame of the held-out clips
    clip_id: npt.NDArray[np.int64]         # [N_total] which clip each crop came from
    clip_names: list[str]


@dataclass
class SkippedClip:
    """A clip the cache could not use, and why (one line)."""

    name: str
    reason: str


def extract_clip(path: Path, size: int, detector: DlibDetector, every: int | None = None) -> ClipCrops:
    """Aligned crops of the largest face in every `every`-th frame of a video (frames without a face are skipped);
    every=None: spaced to keep about MAX_FACES_PER_CLIP frames."""
    crops, landmarks, index = [], [], []
    with FileSource(path) as source:
        if every is None:
            every = max(1, -(-source.info.frames // MAX_FACES_PER_CLIP))
        for i, frame in enumerate(source.frames()):
            if i % every:
                continue
            faces = detector.detect(frame.image)
            if not faces:
                continue
            face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            affine = ffhq_affine(face.landmarks, size)
            crops.append(warp_to_crop(frame.image, affine, size))
            landmarks.append(transform_points(affine, face.landmarks).astype(np.float32))
            index.append(i)
    if not crops:
        raise UserError(f"{path}: no face found in any frame; give a clip with a visible frontal face")
    return ClipCrops(path.stem, np.stack(crops), np.stack(landmarks), np.asarray(index, dtype=np.int64))


def build_cache(clips_dir: Path, cache_dir: Path, size: int = 256,
                every: int | None = None) -> Iterator[ClipCrops | SkippedClip]:
    """Extract every clips_dir/*.mp4 not yet cached in cache_dir (one .npz per clip); yields each clip, or
    SkippedClip for one that cannot be used (its reason is kept in cache_dir/NAME.skipped)."""
    clips = sorted(Path(clips_dir).glob("*.mp4"))
    if not clips:
        raise UserError(f"{clips_dir}: no .mp4 clips found; point --data at a folder of face videos")
    cache_dir.mkdir(parents=True, exist_ok=True)
    detector = DlibDetector(max_side=DETECT_MAX_SIDE)
    for clip in clips:
        target = cache_dir / f"{clip.stem}.npz"
        skipped = cache_dir / f"{clip.stem}.skipped"
        if target.exists():
            yield load_clip(target)
            continue
        if skipped.exists():
            yield SkippedClip(clip.stem, skipped.read_text().strip())
            continue
        try:
            data = extract_clip(clip, size, detector, every)
        except UserError as err:  # MediaError (undecodable, truncated) or no face: this clip only
            log.warning("skipping %s", err)
            skipped.write_text(f"{err}\n")
            yield SkippedClip(clip.stem, str(err))
            continue
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, version=CACHE_VERSION, crops=data.crops, landmarks=data.landmarks,
                 frame_index=data.frame_index)
        tmp.replace(target)
        log.info("%s: %d faces cached", clip.stem, len(data))
        yield data


def load_clip(path: Path) -> ClipCrops:
    with np.load(path) as z:
        if int(z["version"]) != CACHE_VERSION:
            raise UserError(f"{path}: crop cache version {int(z['version'])}, expected {CACHE_VERSION}; "
                            "delete the cache folder to rebuild it")
        return ClipCrops(path.stem, z["crops"], z["landmarks"], z["frame_index"])


def load_cache(cache_dir: Path) -> list[ClipCrops]:
    """All cached clips, sorted by name."""
    paths = sorted(Path(cache_dir).glob("*.npz"))
    if not paths:
        raise UserError(f"{cache_dir}: no crop cache; run `run_stream.py train-pack` with --data first")
    return [load_clip(p) for p in paths if not p.name.endswith(".tmp.npz")]


def make_split(clips: list[ClipCrops], holdout_clips: list[str], holdout_frac: float = 0.12) -> Split:
    """Hold out the named clips entirely and the last `holdout_frac` of each other clip."""
    names = [c.name for c in clips]
    missing = [name for name in holdout_clips if name not in names]
    if missing or not holdout_clips:
        raise UserError(f"held-out clips {missing or holdout_clips} are not among the cached clips {names}")
    train, frames, unseen, clip_id = [], [], [], []
    start = 0
    for k, clip in enumerate(clips):
        idx = np.arange(start, start + len(clip))
        clip_id.append(np.full(len(clip), k))
        if clip.name in holdout_clips:
            unseen.append(idx)
        else:
            cut = len(clip) - max(1, round(len(clip) * holdout_frac))
            train.append(idx[:cut])
            frames.append(idx[cut:])
        start += len(clip)
    return Split(np.concatenate(train), np.concatenate(frames), np.concatenate(unseen),
                 np.concatenate(clip_id), names)


def concat(clips: list[ClipCrops]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """All crops [N, S, S, 3] and landmarks [N, 68, 2], in clip order (matches Split indices)."""
    return np.concatenate([c.crops for c in clips]), np.concatenate([c.landmarks for c in clips])
