"""The finer last stage: heatmaps at half the input resolution instead of a quarter.

At 128 px FAN's heatmaps are 32x32 cells of 4 px, and docs/zoo.md found
that the 256 px model's lead over the 128 px one comes from its finer
heatmap grid, not from its extra pixels. This head gives a 128 px network a
64x64 grid for a few per cent more MACs: the stack's features are upsampled,
joined with the stem's half-resolution features (the only ones that still
see detail finer than 4 px), and a depthwise-separable layer predicts a
correction to the bilinearly upsampled coarse heatmaps.

The correction's last convolution starts at zero, so a network warm-started
from coarse weights begins exactly where those weights were (their heatmaps,
upsampled) and training only has to learn the refinement. The coarse
heatmaps are still computed: the next stack's link takes them, as FAN's do.
Depthwise convolution, nearest and bilinear resizing are in every converter's
and NPU's operator set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class FineHead(nn.Module):
    """One stack's heatmaps on the stem's grid (twice the hourglass's), from its features and the stem's."""

    def __init__(self, stem_channels: int, features: int, landmarks: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(stem_channels, features, kernel_size=1)
        self.dw = nn.Conv2d(features, features, kernel_size=3, padding=1, groups=features, bias=False)
        self.bn = nn.BatchNorm2d(features)
        self.pw = nn.Conv2d(features, features, kernel_size=1)
        self.out = nn.Conv2d(features, landmarks, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, coarse: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        size = stem.shape[-2:]
        up = F.interpolate(features, size=size, mode="nearest") + self.skip(stem)
        up = F.relu(self.pw(F.relu(self.bn(self.dw(up)))))
        return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) + self.out(up)


def with_fresh_fine_heads(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` completed with ``model``'s own fine-head tensors where it has none.

    How coarse weights (FAN's, any zoo model's) start a fine-head network: the
    heads begin as built, their correction at zero, so the network's heatmaps
    are the coarse weights' own, upsampled. A state dict that has fine heads
    is returned as it is, so a mismatch there is still reported; so is any
    state dict for a model without fine heads.
    """
    if any(k.startswith("fine") for k in state_dict):
        return dict(state_dict)
    fresh = dict(state_dict)
    fresh.update({k: v for k, v in model.state_dict().items() if k.startswith("fine")})
    return fresh
