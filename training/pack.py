"""The demo pack's autoencoder in W+: a DemoEncoder inverts aligned faces, a narrow StyleGAN2 synthesis
network reconstructs them, trained together (L1 + (1 - SSIM), weighted towards the mouth and eyes).

Lessons from DESIGN.md's probes: a low generator resolution (64 px first, then grown to 128 px by
training/grow.py; the runtime's residual paste-back `crop + up(G(w') - G(w))` keeps the output's detail),
modulation applied to activations (engines/
nets/synthesis.py, twice as fast on the CPU), a moderate learning rate (2e-3 was unstable), many steps in the
background with checkpoints and resume. An exponential moving average of the weights is what gets
evaluated and exported (it removes most of the step-to-step noise of a small batch).

The loss weights the face region, and more the mouth and eyes (from each crop's landmarks): they cover a
few pixels, and an edit can only carry an attribute the reconstructions show. For the same reason crops at
a clip's expression extremes are drawn more often (expression_weights).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from engines.atomic import atomic_output
from engines.errors import CheckpointError
from engines.nets.encoders import DemoEncoder
from engines.nets.stylegan2 import Generator, small_generator_config
from engines.nets.synthesis import synthesize
from stream.losses import loss_weights, psnr, reconstruction_loss
from stream.pixels import to_images
from training.data import ClipCrops, Split, concat, make_split
from training.directions import EDIT_NAMES, attribute_scores

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class PackConfig:
    """Everything that defines a training run (saved in its checkpoint; a resume keeps the saved one)."""

    size: int = 64
    generator_width: int = 96
    encoder_width: int = 32
    batch: int = 16
    lr: float = 5e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995
    holdout_clips: list[str] = field(default_factory=lambda: ["d19"])  # whole clips held out (unseen people)
    holdout_frac: float = 0.12
    seed: int = 0
    eye_weight: float = 3.0  # loss weight added on the eyes (loss_weights)
    balance_expressions: bool = False  # draw rare expressions more often (expression_weights)
    start_step: int = 0  # the step this config's optimizer started at (a grown run continues the count)
    generator: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        num_ws = 2 * int(math.log2(self.size)) - 2
        if not self.generator:
            self.generator = small_generator_config(self.size, width=self.generator_width, n_mlp=2)
        if not self.encoder:
            self.encoder = {"size": self.size, "num_ws": num_ws, "width": self.encoder_width}


@dataclass
class TrainState:
    config: PackConfig
    generator: Generator
    encoder: DemoEncoder
    generator_ema: Generator
    encoder_ema: DemoEncoder
    optimizer: torch.optim.Optimizer
    step: int = 0
    seconds: float = 0.0  # training wall time over all sessions
    history: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ data
def to_model_input(crops: npt.NDArray[np.uint8], size: int) -> Tensor:
    """Crops [N, S, S, 3] uint8 -> [N, 3, size, size] float in [-1, 1] (area down-sampling, as the runtime)."""
    return torch.from_numpy(to_images(crops, size))


def expression_weights(landmarks: npt.NDArray[np.float32], clip_id: npt.NDArray[np.int64],
                       tail: float = 0.1) -> npt.NDArray[np.float64]:
    """How often to draw each crop: 1, plus 1 for each edited attribute at its clip's extremes.

    Extreme expressions are rare in talking heads (a blink is a few percent of frames), and an autoencoder
    trained on uniform draws renders them as the clip's usual face; an edit can only move along what the
    reconstructions show. Each edit of training.directions.EDIT_NAMES adds 1 to a crop in the lowest or highest
    `tail` of its clip."""
    weights = np.ones(len(landmarks))
    for scores in (attribute_scores(landmarks)[name] for name in EDIT_NAMES):
        for clip in np.unique(clip_id):
            member = clip_id == clip
            lo, hi = np.quantile(scores[member], [tail, 1.0 - tail])
            weights[member & ((scores < lo) | (scores > hi))] += 1.0  # strict: a constant score marks nothing
    return weights


@dataclass
class PackData:
    images: Tensor   # [N, 3, size, size] in [-1, 1]
    weights: Tensor  # [N, 1, size, size]
    split: Split
    draw_weights: Tensor  # [N] how often training draws each crop (expression_weights)


def prepare_data(clips: list[ClipCrops], config: PackConfig) -> PackData:
    crops, landmarks = concat(clips)
    split = make_split(clips, config.holdout_clips, config.holdout_frac)
    return PackData(to_model_input(crops, config.size), loss_weights(landmarks, crops.shape[1], config.size, config.eye_weight),
                    split, torch.from_numpy(expression_weights(landmarks, split.clip_id)))


# ---------------------------------------------------------------------------------------------- models
def new_state(config: PackConfig) -> TrainState:
    torch.manual_seed(config.seed)
    g = Generator(**config.generator)
    e = DemoEncoder(**config.encoder)
    optimizer = torch.optim.Adam(list(g.parameters()) + list(e.parameters()), lr=config.lr, betas=(0.9, 0.99))
    return TrainState(config, g, e, copy.deepcopy(g).requires_grad_(False), copy.deepcopy(e).requires_grad_(False),
                      optimizer)


def save_state(state: TrainState, run_dir: Path) -> Path:
    """Atomic write of everything a resume needs."""
    path = run_dir / CHECKPOINT
    with atomic_output(path) as tmp:
        torch.save({"config": json.dumps(asdict(state.config)), "generator": state.generator.state_dict(),
                    "encoder": state.encoder.state_dict(), "generator_ema": state.generator_ema.state_dict(),
                    "encoder_ema": state.encoder_ema.state_dict(), "optimizer": state.optimizer.state_dict(),
                    "step": state.step, "seconds": state.seconds, "history": json.dumps(state.history)}, tmp)
    return path


def load_state(run_dir: Path) -> TrainState:
    path = run_dir / CHECKPOINT
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({err}); delete it to start over") from None
    config = json.loads(data["config"])
    if "holdout_clip" in config:  # checkpoints written before several clips could be held out
        config["holdout_clips"] = [config.pop("holdout_clip")]
    state = new_state(PackConfig(**config))
    state.generator.load_state_dict(data["generator"])
    state.encoder.load_state_dict(data["encoder"])
    state.generator_ema.load_state_dict(data["generator_ema"])
    state.encoder_ema.load_state_dict(data["encoder_ema"])
    state.optimizer.load_state_dict(data["optimizer"])
    state.step, state.seconds = int(data["step"]), float(data["seconds"])
    state.history = json.loads(data["history"])
    return state


def open_run(run_dir: Path, config: PackConfig) -> TrainState:
    """Resume run_dir's checkpoint when there is one (its saved config wins), else start fresh."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CHECKPOINT).exists():
        state = load_state(run_dir)
        log.info("resuming %s at step %d (%.1f min trained)", run_dir, state.step, state.seconds / 60)
        return state
    return new_state(config)


@torch.no_grad()
def _update_ema(ema: nn.Module, live: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), live.parameters()):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), live.buffers()):
        b_ema.copy_(b)


# -------------------------------------------------------------------------------------------- training
@torch.no_grad()
def reconstruct(g: Generator, e: DemoEncoder, images: Tensor, batch: int = 64) -> Tensor:
    """Autoencoder output [N, 3, S, S] for images [N, 3, S, S]."""
    return torch.cat([synthesize(g, e(images[i:i + batch])) for i in range(0, len(images), batch)])


@torch.no_grad()
def evaluate(state: TrainState, data: PackData) -> dict[str, float]:
    """Mean reconstruction PSNR (EMA weights) on the held-out frames and the held-out clips."""
    out = {}
    for name, idx in (("psnr_heldout_frames", data.split.heldout_frames), ("psnr_heldout_clip", data.split.heldout_clip)):
        images = data.images[torch.from_numpy(idx)]
        out[name] = float(psnr(reconstruct(state.generator_ema, state.encoder_ema, images), images).mean())
    return out


def train(state: TrainState, data: PackData, run_dir: Path, minutes: float, checkpoint_minutes: float = 4.0,
          on_step: Callable[[TrainState, dict[str, float]], None] | None = None, max_steps: int | None = None) -> TrainState:
    """Train for `minutes` of wall time (or `max_steps` steps), checkpointing every `checkpoint_minutes`."""
    cfg = state.config
    g, e = state.generator.train(), state.encoder.train()
    train_idx = torch.from_numpy(data.split.train)
    draw = data.draw_weights[train_idx] if cfg.balance_expressions else torch.ones(len(train_idx), dtype=torch.float64)
    gen = torch.Generator().manual_seed(cfg.seed + state.step)
    start = last_save = time.monotonic()
    steps_done = 0
    while time.monotonic() - start < minutes * 60 and (max_steps is None or steps_done < max_steps):
        t0 = time.monotonic()
        pick = train_idx[torch.multinomial(draw, cfg.batch, replacement=True, generator=gen)]
        x, w = data.images[pick], data.weights[pick]
        flip = torch.rand(cfg.batch, generator=gen) < 0.5  # mirror half the batch (faces are near-symmetric)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        w = torch.where(flip[:, None, None, None], w.flip(3), w)
        for group in state.optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (state.step - cfg.start_step + 1) / cfg.warmup_steps)
        loss, parts = reconstruction_loss(synthesize(g, e(x)), x, w)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(list(g.parameters()) + list(e.parameters()), 5.0))
        state.optimizer.step()
        _update_ema(state.generator_ema, g, cfg.ema_decay)
        _update_ema(state.encoder_ema, e, cfg.ema_decay)
        state.step += 1
        steps_done += 1
        state.seconds += time.monotonic() - t0
        stats = {"loss": float(loss.detach()), **parts, "grad_norm": grad_norm, "sec_per_step": time.monotonic() - t0}
        if on_step is not None:
            on_step(state, stats)
        if time.monotonic() - last_save > checkpoint_minutes * 60:
            _checkpoint(state, data, run_dir, stats)
            last_save = time.monotonic()
    _checkpoint(state, data, run_dir, {})
    return state


def _checkpoint(state: TrainState, data: PackData, run_dir: Path, stats: dict[str, float]) -> None:
    metrics = evaluate(state, data)
    state.history.append({"step": state.step, "minutes": round(state.seconds / 60, 2), **stats, **metrics})
    save_state(state, run_dir)
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(state.history[-1]) + "\n")
    log.info("step %d (%.1f min): held-out frames %.2f dB, held-out clip %.2f dB", state.step, state.seconds / 60,
             metrics["psnr_heldout_frames"], metrics["psnr_heldout_clip"])
