"""Grow a trained demo-pack autoencoder to twice its resolution, starting where the smaller one left off.

Growing a trained 64 px run (as progressive GANs grow) keeps everything it learned and spends the new steps
on detail, where a fresh 128 px run would first spend an hour re-learning faces. (With the narrow 24-channel
top block a 128 px step cost 1.2 s against 1.0 s at 64 px on one CPU thread, batch 16.)
The grown networks reproduce the small pair's output exactly at step 0 (up to the encoder's input resize):

- Generator: every existing layer keeps its weights; the new 2x block's ToRGB starts at zero, so the
  output is the old image up-sampled by the skip path. Its two W+ entries start as copies of the last one.
- Encoder (DemoEncoder): a new stem and residual stage are put in front that pass a down-sampled image on
  unchanged. The stem's first six channels hold +/- a [1 2 1] blur of the RGB (two channels, so the
  LeakyReLUs in between can be undone: lrelu(v) - lrelu(-v) = 1.2 v, and the new residual block with a
  zero second conv adds one more LeakyReLU, making it 1.04 v); the old stem conv then reads those channels.
  The fine-level head gets rows for the new W+ entries, copied from its last entry.
"""
from __future__ import annotations

import copy

import torch

from engines.nets.encoders import DemoEncoder
from engines.nets.stylegan2 import Generator, small_generator_config
from training.pack import PackConfig, TrainState, new_state

# lrelu(lrelu(v)) - lrelu(lrelu(-v)) = (1 + 0.2**2) v for LeakyReLU(0.2), either sign of v
_PASS_GAIN = 1.0 + 0.2**2


@torch.no_grad()
def _grow_generator(small: Generator, big: Generator) -> None:
    target = big.state_dict()
    target.update(small.state_dict())  # every old key exists in the big one with the same shape
    big.load_state_dict(target)
    big.to_rgbs[-1].conv.weight.zero_()


@torch.no_grad()
def _grow_encoder(small: DemoEncoder, big: DemoEncoder) -> None:
    old = small.state_dict()
    new = big.state_dict()
    channels_in = old["stem.0.weight"].shape[0]
    # new stem: +/- blur-and-subsample of each colour channel in channels 0-5, the rest zero
    blur = torch.tensor([1.0, 2.0, 1.0])
    kernel = torch.outer(blur, blur) / 16
    stem = torch.zeros_like(new["stem.0.weight"])
    for c in range(3):
        stem[c, c] = kernel
        stem[3 + c, c] = -kernel
    new["stem.0.weight"], new["stem.0.bias"] = stem, torch.zeros_like(new["stem.0.bias"])
    # new first residual stage: identity up to one more LeakyReLU (second conv zero)
    new["stages.0.conv2.weight"].zero_()
    new["stages.0.conv2.bias"].zero_()
    # the old stem becomes the conv of stage 1, reading (a - b) / 1.04 from the +/- channel pairs
    conv = torch.zeros_like(new["stages.1.0.weight"])
    if conv.shape[0] != channels_in:
        raise ValueError(f"cannot grow this encoder: stage 1 has {conv.shape[0]} channels, old stem {channels_in}")
    conv[:, 0:3] = old["stem.0.weight"] / _PASS_GAIN
    conv[:, 3:6] = -old["stem.0.weight"] / _PASS_GAIN
    new["stages.1.0.weight"], new["stages.1.0.bias"] = conv, old["stem.0.bias"].clone()
    for key, value in old.items():
        if key.startswith("stages.0."):
            new["stages.1.2." + key[len("stages.0."):]] = value
        elif key.startswith("stages."):
            index, rest = key[len("stages."):].split(".", 1)
            new[f"stages.{int(index) + 1}.{rest}"] = value
        elif key.startswith("heads.2.linear."):
            rows = new[key].shape[0]
            grown = torch.cat([value] + [value[-small.style_dim:]] * ((rows - value.shape[0]) // small.style_dim))
            new[key] = grown
        elif not key.startswith("stem."):
            new[key] = value
    big.load_state_dict(new)


def grow_state(small: TrainState, lr: float | None = None, eye_weight: float | None = None,
               balance_expressions: bool = True) -> TrainState:
    """A fresh training state at twice the resolution of `small`, initialised from its EMA weights
    (lr, eye_weight: None keeps the small run's; every other setting is the small run's)."""
    cfg = small.config
    size = cfg.size * 2
    num_ws = 2 * (size.bit_length() - 1) - 2
    config = PackConfig(size=size, generator_width=cfg.generator_width, encoder_width=cfg.encoder_width,
                        batch=cfg.batch, lr=cfg.lr if lr is None else lr, warmup_steps=cfg.warmup_steps,
                        ema_decay=cfg.ema_decay, holdout_clips=cfg.holdout_clips, holdout_frac=cfg.holdout_frac,
                        seed=cfg.seed, start_step=small.step, balance_expressions=balance_expressions,
                        eye_weight=cfg.eye_weight if eye_weight is None else eye_weight,
                        generator=small_generator_config(size, width=cfg.generator_width, n_mlp=cfg.generator["n_mlp"]),
                        encoder={**small.encoder.config, "size": size, "num_ws": num_ws})
    state = new_state(config)
    _grow_generator(small.generator_ema, state.generator)
    _grow_encoder(small.encoder_ema, state.encoder)
    state.generator_ema = copy.deepcopy(state.generator).requires_grad_(False)
    state.encoder_ema = copy.deepcopy(state.encoder).requires_grad_(False)
    state.history = [{"step": small.step, "minutes": round(small.seconds / 60, 2), "grown_from_size": cfg.size}]
    state.step, state.seconds = small.step, small.seconds  # the model card counts both stages
    return state
