"""Start a training run from an exported pack's networks, to fine-tune them on more clips.

The shipped pack is the only trained copy of its networks once its run folder is gone; a new run that
starts from it keeps the pack's architecture (read from each safetensors' metadata) and the training
settings its metrics.json recorded, and continues its step count and training time, so the model card
counts every stage. The optimizer starts fresh (the pack holds no Adam moments), behind a new warm-up.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from engines.checkpoints import load_checkpoint
from engines.errors import UserError
from stream.modelpack import load_pack
from training.pack import PackConfig, TrainState, new_state


def state_from_pack(pack_dir: Path, holdout_clips: list[str], lr: float | None = None,
                    eye_weight: float | None = None, balance_expressions: bool = True) -> TrainState:
    """A fresh training state whose live and EMA networks are the pack's generator and encoder
    (lr, eye_weight: None keeps the pack's recorded ones)."""
    pack = load_pack(pack_dir)  # CheckpointError (one line) when it is not a pack
    metrics_path = pack_dir / "metrics.json"
    recorded = json.loads(metrics_path.read_text())["config"] if metrics_path.is_file() else {}
    generator = load_checkpoint(pack.generator)
    encoder = load_checkpoint(pack.encoder)
    if generator.architecture != "stylegan2-generator" or encoder.architecture != "demo-encoder":
        raise UserError(f"--init-from-pack {pack_dir}: needs a demo pack (a small StyleGAN2 and a DemoEncoder), "
                        f"found {generator.architecture} and {encoder.architecture}")
    step = int(pack.extra.get("trained_steps", 0))
    config = PackConfig(size=generator.config["size"], generator_width=generator.config["channels"]["4"],
                        encoder_width=encoder.config["width"], batch=recorded.get("batch", 16),
                        lr=lr if lr is not None else recorded.get("lr", 5e-4),
                        eye_weight=eye_weight if eye_weight is not None else recorded.get("eye_weight", 3.0),
                        holdout_clips=list(holdout_clips), balance_expressions=balance_expressions,
                        start_step=step, generator=generator.config, encoder=encoder.config)
    state = new_state(config)
    state.generator.load_state_dict(generator.module.state_dict())
    state.encoder.load_state_dict(encoder.module.state_dict())
    state.generator_ema = copy.deepcopy(state.generator).requires_grad_(False)
    state.encoder_ema = copy.deepcopy(state.encoder).requires_grad_(False)
    minutes = float(pack.extra.get("train_minutes", 0.0))
    state.step, state.seconds = step, minutes * 60
    state.history = [{"step": step, "minutes": minutes, "init_from_pack": str(pack_dir)}]
    return state
