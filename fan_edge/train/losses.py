"""Heatmap losses over every stack (intermediate supervision)."""

from __future__ import annotations

import math

import torch


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, (N,)."""
    return ((pred - target) ** 2).flatten(1).mean(dim=1)


def adaptive_wing(
    pred: torch.Tensor, target: torch.Tensor, omega: float = 14.0, theta: float = 0.5, epsilon: float = 1.0, alpha: float = 2.1
) -> torch.Tensor:
    """Adaptive Wing loss (Wang et al., ICCV 2019), per-sample mean, (N,).

    It weighs errors near the peak (target close to 1) more than the
    background, where plain MSE is dominated by the many near-zero pixels.
    """
    delta = (target - pred).abs()
    power = alpha - target
    with torch.no_grad():  # a and c depend on the target alone: no graph, and (theta/eps)**power as one exp
        ratio = torch.exp(power * math.log(theta / epsilon))  # (theta / epsilon) ** power
        a = omega * (1.0 / (1.0 + ratio)) * power * (ratio * (epsilon / theta)) / epsilon
        c = theta * a - omega * torch.log1p(ratio)
    loss = torch.where(delta < theta, omega * torch.log1p((delta / epsilon) ** power), a * delta - c)
    return loss.flatten(1).mean(dim=1)


LOSSES = {"mse": mse, "awing": adaptive_wing}


def stack_weights(stacks: int, kind: str) -> list[float]:
    """Weights of each stack's loss: equal (the paper) or rising toward the last."""
    if kind == "equal":
        return [1.0] * stacks
    if kind == "last":
        return [float(i + 1) / stacks for i in range(stacks)]
    raise ValueError(f"unknown stack weighting {kind!r}")


def on_grid(target: torch.Tensor, size: int) -> torch.Tensor:
    """``target`` on a coarser ``size`` grid: a fine-head model's earlier stacks are supervised on FAN's grid.

    Averaging each 2x2 block keeps the cell-centre convention (a coarse cell's centre is the mean of the fine
    centres it covers), so a fine Gaussian target becomes a coarse one centred on the same point.
    """
    if target.shape[-1] == size:
        return target
    return torch.nn.functional.avg_pool2d(target, target.shape[-1] // size)


def stacked_loss(
    outputs: list[torch.Tensor], target: torch.Tensor, kind: str, weights: list[float], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted sum over stacks of the mean (over masked samples) heatmap loss."""
    fn = LOSSES[kind]
    total = outputs[0].new_zeros(())
    for w, out in zip(weights, outputs):
        per_sample = fn(out, on_grid(target, out.shape[-1]))
        if mask is not None:
            per_sample = per_sample * mask
            total = total + w * per_sample.sum() / mask.sum().clamp(min=1.0)
        else:
            total = total + w * per_sample.mean()
    return total
