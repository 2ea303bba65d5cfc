"""Models shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (He et al. 2016)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class ResidualCNN(nn.Module):
    """A residual CNN with BatchNorm, not ``nn.Sequential``: a conv-BN-ReLU stem,
    ``blocks`` residual blocks of ``c`` channels, global average pooling, a linear head."""

    def __init__(
        self,
        c_in: int = 3,
        c: int = 16,
        *,
        blocks: int = 1,
        classes: int = 10,
        stem_bias: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c_in, c, 3, padding=1, bias=stem_bias)
        self.bn = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(*[ResidualBlock(c) for _ in range(blocks)])
        self.head = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))
