"""An exponential moving average of a network's weights and BatchNorm statistics (``fan-train --ema DECAY``).

Why: late in a schedule the weights still move from batch to batch, and
BatchNorm's running statistics follow only the last few dozen batches, so
two neighbouring epochs of one run can differ by several hundredths of a
point on AFW. The average over about ``1 / (1 - decay)`` optimizer steps
is what validation, ``best.safetensors`` and ``final.safetensors`` hold
(Polyak averaging, as timm's ``ModelEmaV3`` and Ultralytics' ``ModelEMA``
keep it). Integer buffers (``num_batches_tracked``) are copied. The
first steps use a smaller decay, ``(1 + n) / (10 + n)``, so that the average
does not hold on to the starting weights. The state travels in
``last.ckpt``, so a resumed run continues the same average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError


def check_decay(decay: float | None) -> None:
    """Refuse a decay that would not average (0 or below) or never move (1 or above) in one line."""
    if decay is not None and not 0.0 < decay < 1.0:
        raise ConfigError(f"--ema {decay:g}: the decay must lie strictly between 0 and 1 (e.g. 0.999)")


class WeightAverage:
    """The running average of one network's ``state_dict`` (on the network's device)."""

    def __init__(self, model: nn.Module, decay: float, updates: int = 0) -> None:
        check_decay(decay)
        self.decay = float(decay)
        self.updates = int(updates)
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def step_decay(self) -> float:
        """The decay of the next update: the ramp ``(1 + n) / (10 + n)`` until it reaches ``decay``."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the network's current weights into the average (once per optimizer step)."""
        d = self.step_decay()
        self.updates += 1
        for name, value in model.state_dict().items():
            mean = self.weights[name]
            if mean.is_floating_point():
                mean.lerp_(value.detach().to(mean.dtype), 1.0 - d)
            else:
                mean.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    @classmethod
    def from_state(cls, model: nn.Module, state: Any, source: str) -> "WeightAverage":
        """The average saved in a checkpoint (``state_dict()``), checked against ``model``'s entries."""
        try:
            average = cls(model, float(state["decay"]), int(state["updates"]))
            saved = state["weights"]
            missing = set(average.weights) ^ set(saved)
            if missing:
                raise KeyError(f"entries differ from the model's: {sorted(missing)[:3]}")
            for name, mean in average.weights.items():
                mean.copy_(saved[name])
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
            raise CheckpointError(f"{source}: its weight average (--ema) does not fit the model ({exc})") from None
        return average

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the averaged weights inside the block, its own weights again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(own)


def averaged(average: WeightAverage | None, model: nn.Module) -> ContextManager[Any]:
    """:meth:`WeightAverage.applied`, or the model as it is when the run keeps no average."""
    return average.applied(model) if average is not None else nullcontext(model)
