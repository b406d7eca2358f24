"""FAN's building blocks: the hierarchical, parallel, multi-scale block and the hourglass.

Module and attribute names follow the released 2DFAN-4 checkpoint exactly
(``bn1``, ``conv1``..., ``downsample.0/.2``, ``b1_4``, ``b2_plus_1``...), so a
user's official weights load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation block whose three 3x3 convs (out/2, out/4, out/4) are concatenated.

    The concatenation is why half of the block's output channels come from
    its first conv: channels are coupled to the residual, which pruning and
    quantization must respect.
    """

    def __init__(
        self, in_planes: int, out_planes: int, split: tuple[int, int, int] | None = None, downsample: bool | None = None
    ) -> None:
        """``split`` (a pruned block's three conv widths, summing to ``out_planes``) and ``downsample``
        (kept even where pruning made the widths equal) default to the designed block."""
        super().__init__()
        if split is None:
            if out_planes % 4:
                raise ValueError(f"ConvBlock output channels must be divisible by 4, got {out_planes}")
            split = (out_planes // 2, out_planes // 4, out_planes // 4)
        elif sum(split) != out_planes or min(split) < 1:
            raise ValueError(f"ConvBlock split {split} does not make {out_planes} output channels")
        a, b, c = split
        if downsample is None:
            downsample = in_planes != out_planes
        elif not downsample and in_planes != out_planes:
            raise ValueError(f"ConvBlock without downsample must keep its width, got {in_planes} -> {out_planes}")
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, a)
        self.bn2 = nn.BatchNorm2d(a)
        self.conv2 = conv3x3(a, b)
        self.bn3 = nn.BatchNorm2d(b)
        self.conv3 = conv3x3(b, c)
        self.downsample: nn.Module | None = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_planes),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        out = torch.cat((out1, out2, out3), dim=1)
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class HourGlass(nn.Module):
    """Recursive hourglass: an upper branch at full resolution, a lower one at half, summed."""

    def __init__(self, depth: int, features: int, splits: Mapping[str, tuple[int, int, int]] | None = None) -> None:
        """``splits``: a pruned hourglass's per-block conv widths by block name (``b1_4``...); each sums to ``features``."""
        super().__init__()
        self.depth = depth
        self._splits = dict(splits or {})
        self._build(depth, features)
        del self._splits

    def _block(self, name: str, features: int) -> None:
        self.add_module(name, ConvBlock(features, features, self._splits.get(name)))

    def _build(self, level: int, features: int) -> None:
        self._block(f"b1_{level}", features)
        self._block(f"b2_{level}", features)
        if level > 1:
            self._build(level - 1, features)
        else:
            self._block(f"b2_plus_{level}", features)
        self._block(f"b3_{level}", features)

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self._modules[f"b1_{level}"](x)
        lower = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2, stride=2))
        if level > 1:
            lower = self._level(level - 1, lower)
        else:
            lower = self._modules[f"b2_plus_{level}"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        return upper + F.interpolate(lower, scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)
