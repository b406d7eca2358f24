"""The FAN network (Bulat & Tzimiropoulos, ICCV 2017), parameterised along Table 5's axes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBlock, HourGlass
from .config import FANConfig
from .fine_head import FineHead
from .pretrained import UNTRAINED, Weights


class FAN(nn.Module):
    """Stacked hourglasses producing one set of heatmaps per stack.

    In training mode ``forward`` returns every stack's heatmaps (each is
    supervised; with fine heads, the last stack's on the fine grid and the
    others' on the coarse one). In eval mode it returns the heatmaps of ``exit_stack``
    (the last stack unless set lower) and does not compute later stacks:
    that is the early exit, and the graph that exports.

    ``weights`` is the record of the weights it holds (crop, refinement, card;
    :class:`~fan_edge.models.pretrained.Weights`): what
    :func:`~fan_edge.models.create_model` loaded, or FAN's released
    conventions for a network built without trained weights. Code that builds
    a new network from this one's config (pruning, a float copy) passes it on.
    """

    def __init__(self, config: FANConfig | None = None, weights: Weights | None = None) -> None:
        super().__init__()
        self.config = config or FANConfig()
        self.weights = weights if weights is not None else UNTRAINED
        cfg = self.config
        # Uniform as designed, or a pruned model's per-layer counts (models/channels.py).
        layout = cfg.layout
        blocks = layout.blocks
        k, w = cfg.num_landmarks, layout.trunk

        def block(name: str) -> ConvBlock:
            b = blocks[name]
            return ConvBlock(b.in_channels, b.out_channels, b.split, b.downsample)

        self.conv1 = nn.Conv2d(3, layout.stem_conv, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(layout.stem_conv)
        self.conv2 = block("conv2")
        self.conv3 = block("conv3")
        self.conv4 = block("conv4")
        for i in range(cfg.stacks):
            splits = {n.split(".", 1)[1]: b.split for n, b in blocks.items() if n.startswith(f"m{i}.")}
            f = layout.conv_last[i]
            self.add_module(f"m{i}", HourGlass(cfg.hourglass_depth, w, splits))
            self.add_module(f"top_m_{i}", block(f"top_m_{i}"))
            self.add_module(f"conv_last{i}", nn.Conv2d(w, f, kernel_size=1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(f))
            self.add_module(f"l{i}", nn.Conv2d(f, k, kernel_size=1))
            if i < cfg.stacks - 1:
                self.add_module(f"bl{i}", nn.Conv2d(f, w, kernel_size=1))
                self.add_module(f"al{i}", nn.Conv2d(k, w, kernel_size=1))
            if cfg.fine:
                self.add_module(f"fine{i}", FineHead(layout.stem_conv, f, k))
        self.exit_stack = cfg.stacks
        # A training choice, not architecture: whether training runs (and supervises) every stack's fine head or
        # only the last one's (fan-train --fine-every-stack).
        self.fine_every_stack = False

    @property
    def card(self) -> dict[str, Any]:
        """The model card of its weights ({} without one)."""
        return dict(self.weights.meta)

    @card.setter
    def card(self, value: dict[str, Any]) -> None:
        self.weights = self.weights.replace(meta=dict(value or {}))

    def set_exit(self, stack: int) -> "FAN":
        """Make eval-mode forward stop after ``stack`` (1-based) stacks."""
        if not 1 <= stack <= self.config.stacks:
            raise ValueError(f"exit stack must be in 1..{self.config.stacks}, got {stack}")
        self.exit_stack = stack
        return self

    def stem_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's half-resolution features (conv1's, what a fine head joins) and its output."""
        half = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(half), 2, stride=2)
        return half, self.conv4(self.conv3(x))

    def forward_stacks(self, x: torch.Tensor, stacks: int | None = None, every: bool = True) -> list[torch.Tensor]:
        """Heatmaps of the first ``stacks`` stacks (all by default), each (N, K, H/s, W/s) with s the config's head_stride.

        With a fine head (stride 2), ``every=False`` runs only the last of these stacks' fine head: the earlier
        stacks' fine heatmaps are not needed at inference (their links take the coarse ones), and are then the
        coarse heatmaps in the returned list.
        """
        n = self.config.stacks if stacks is None else stacks
        half, previous = self.stem_levels(x)
        outputs: list[torch.Tensor] = []
        for i in range(n):
            features = self._modules[f"top_m_{i}"](self._modules[f"m{i}"](previous))
            features = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](features)))
            heatmaps = self._modules[f"l{i}"](features)
            if self.config.fine and (every or i == n - 1):
                outputs.append(self._modules[f"fine{i}"](features, heatmaps, half))
            else:
                outputs.append(heatmaps)
            if i < n - 1:
                previous = previous + self._modules[f"bl{i}"](features) + self._modules[f"al{i}"](heatmaps)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.training:
            # With fine heads, by default only the last stack's runs in training (earlier stacks are supervised on
            # their coarse heatmaps): a fine head per stack made a CPU training step several times slower
            # (docs/zoo.md). An early exit then decodes its stack's coarse heatmaps, upsampled (its fine head's
            # correction stays at zero). ``fine_every_stack`` trains every stack's fine head, for early exits.
            return self.forward_stacks(x, every=self.fine_every_stack)
        return self.forward_stacks(x, self.exit_stack, every=False)[-1]
