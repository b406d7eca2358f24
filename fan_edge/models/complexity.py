"""Parameters and MACs, counted on the real graph rather than by formula."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Multiply-accumulates of one eval-mode forward pass at batch 1.

    torch's FlopCounterMode counts 2 FLOPs per MAC for convolutions and
    matrix products, which are all of FAN's MACs; elementwise ops (BN, ReLU,
    adds) are not MACs and are not counted, as in the paper's figures. A
    plain FAN is counted on a twin built on the meta device: the same graph
    without memory or arithmetic (a 4-stack FAN at 1024x1024 took 1 GB and
    48 s counted for real); any other module runs for real.
    """
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
