"""Small layers shared by the light networks (DemoEncoder, ResidualStudent): plain convs and LeakyReLU only,
so they export to ONNX / TensorRT as Conv + LeakyRelu."""
from __future__ import annotations

from torch import Tensor, nn


def leaky() -> nn.Module:
    """The activation of the light networks: LeakyReLU(0.2)."""
    return nn.LeakyReLU(0.2)


class ResBlock(nn.Module):
    """act(x + conv3x3(act(conv3x3(x)))); no normalisation. Keys: conv1.*, conv2.*."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act = leaky()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))
