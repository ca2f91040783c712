"""A tiny random-weight model pack, written with stream.modelpack.save_pack, for pipeline and file-job tests.

Random weights edit nothing meaningful, but they change the face region, which is what the tests check:
the generator's G(w') - G(w) is non-zero for a non-zero direction, and the student's last layer (zero at
initialisation, so that training starts from the identity) is filled with small random values.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.nets.encoders import DemoEncoder
from engines.nets.student import ResidualStudent
from engines.nets.stylegan2 import Generator, small_generator_config
from stream.edits.directions import Direction
from stream.modelpack import ModelPack, save_pack

CROP_SIZE = 64


def make_random_pack(root: Path, seed: int = 0, residual_colour: str = "rgb") -> ModelPack:
    torch.manual_seed(seed)
    generator = Generator(**small_generator_config(size=32, width=32, n_mlp=1))
    encoder = DemoEncoder(size=32, num_ws=generator.num_ws, width=8, max_width=16, head_width=16,
                          head_channels=8, coarse_end=2, middle_end=4)
    student = ResidualStudent(width=8, depth=1, levels=2, max_width=16)
    with torch.no_grad():
        last = student.to_delta[0]
        last.weight.normal_(0.0, 0.05)
        last.bias.normal_(0.0, 0.05)
    rng = np.random.default_rng(seed)
    directions = [
        Direction("smile", rng.standard_normal((generator.num_ws, 512)).astype(np.float32), layers=[2, 3, 4]),
        Direction("age", rng.standard_normal((generator.num_ws, 512)).astype(np.float32), layers=[0, 1]),
    ]
    return save_pack(root, crop_size=CROP_SIZE, generator=generator, encoder=encoder, directions=directions,
                     students={"smile": (student, 1.0)}, default_edit=("smile", 1.0), residual_colour=residual_colour)
