"""Parameters and MACs: counted on the real graph, and in closed form from a config.

:func:`count_parameters` and :func:`count_macs` count a built module (torch's
``FlopCounterMode`` on a forward pass). :func:`config_parameters` and
:func:`config_macs` give the same numbers for a plain FAN from its config's
channel layout alone, without torch: what ``fan-edge models`` and
``fan-edge info`` print (a forward pass per registry entry took most of a
minute). ``tests/test_models.py`` checks the two against each other for every
registry entry, pruned layouts and early exits included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from .config import FANConfig


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fine_head_parameters(stem_channels: int, features: int, landmarks: int) -> int:
    """Trainable parameters of one fine head (:class:`~fan_edge.models.fine_head.FineHead`) (BatchNorm's affine pair, not its statistics)."""
    c0, f, k = stem_channels, features, landmarks
    return c0 * f + f + 9 * f + 2 * f + f * f + f + f * k + k


def fine_head_macs(stem_channels: int, features: int, landmarks: int, size: int) -> int:
    """Convolution MACs of one fine head (:class:`~fan_edge.models.fine_head.FineHead`) on a ``size`` x ``size`` grid."""
    c0, f, k = stem_channels, features, landmarks
    return (c0 * f + 9 * f + f * f + f * k) * size * size


def config_parameters(config: FANConfig) -> int:
    """Trainable parameters of ``FAN(config)`` (weights, biases, BatchNorm affines; not the running statistics)."""
    layout = config.layout
    k, w = config.num_landmarks, layout.trunk
    total = 3 * layout.stem_conv * 49 + layout.stem_conv + 2 * layout.stem_conv  # conv1 (with bias), bn1
    for block in layout.blocks.values():
        a, b, c = block.split
        total += 2 * block.in_channels + 9 * (block.in_channels * a + a * b + b * c) + 2 * a + 2 * b
        if block.downsample:
            total += 2 * block.in_channels + block.in_channels * block.out_channels
    for i, f in enumerate(layout.conv_last):
        total += w * f + f + 2 * f + f * k + k  # conv_last, bn_end, l
        if i < config.stacks - 1:
            total += f * w + w + k * w + w  # bl, al
        if config.fine:
            total += fine_head_parameters(layout.stem_conv, f, k)
    return total


def config_macs(config: FANConfig, input_size: int | None = None, exit_stack: int | None = None) -> int:
    """Multiply-accumulates of one eval-mode forward pass of ``FAN(config)`` at batch 1, as :func:`count_macs` counts
    them (convolutions only), at ``input_size`` (default the config's) with an early exit after ``exit_stack`` stacks
    (default all)."""
    layout = config.layout
    blocks = layout.blocks
    k, w = config.num_landmarks, layout.trunk
    stacks = config.stacks if exit_stack is None else exit_stack
    size = config.input_size if input_size is None else input_size

    def block(name: str, r: int) -> int:
        b = blocks[name]
        a, bb, c = b.split
        macs = 9 * (b.in_channels * a + a * bb + bb * c)
        if b.downsample:
            macs += b.in_channels * b.out_channels
        return macs * r * r

    def hourglass(prefix: str, level: int, r: int) -> int:
        half = r // 2
        macs = block(f"{prefix}b1_{level}", r) + block(f"{prefix}b2_{level}", half)
        if level > 1:
            macs += hourglass(prefix, level - 1, half)
        else:
            macs += block(f"{prefix}b2_plus_{level}", half)
        return macs + block(f"{prefix}b3_{level}", half)

    r = (size - 1) // 2 + 1  # conv1: 7x7, stride 2, padding 3
    total = 3 * 49 * layout.stem_conv * r * r + block("conv2", r)
    r //= 2  # average pool
    total += block("conv3", r) + block("conv4", r)
    for i in range(stacks):
        f = layout.conv_last[i]
        total += hourglass(f"m{i}.", config.hourglass_depth, r) + block(f"top_m_{i}", r)
        total += (w * f + f * k) * r * r  # conv_last, l
        if i < stacks - 1:
            total += (f * w + k * w) * r * r  # bl, al
    if config.fine and stacks:  # eval mode runs only the exit stack's fine head, on conv1's grid
        total += fine_head_macs(layout.stem_conv, layout.conv_last[stacks - 1], k, (size - 1) // 2 + 1)
    return total


def entry_complexity(entry: Any) -> tuple[int, int]:
    """Parameters and MACs of a registry entry: its model card's counts (measured when it was bundled) where it
    has them, else the closed form of its config. Torch-free."""
    card = entry.card()
    params, macs = card.get("parameters"), card.get("macs")
    if isinstance(params, int) and isinstance(macs, int):
        return params, macs
    return config_parameters(entry.config), config_macs(entry.config)


def count_macs(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Multiply-accumulates of one eval-mode forward pass at batch 1.

    torch's FlopCounterMode counts 2 FLOPs per MAC for convolutions and
    matrix products, which are all of FAN's MACs; elementwise ops (BN, ReLU,
    adds) are not MACs and are not counted, as in the paper's figures. A
    plain FAN is counted on a twin built on the meta device: the same graph
    without memory or arithmetic (counting a large FAN for real is slow and
    takes gigabytes: docs/zoo.md); any other module runs for real.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .fan import FAN

    device = "cpu"
    if type(model) is FAN:
        with torch.device("meta"):
            twin = FAN(model.config)
        twin.exit_stack = model.exit_stack
        model, device = twin, "meta"
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, channels, input_size, input_size, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops() // 2)
    finally:
        model.train(was_training)
