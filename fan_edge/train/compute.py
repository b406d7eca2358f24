"""How a training step computes: the forward pass's precision (``fan-train --autocast bf16``) and the memory layout.

Training time is what bounds every model here (2 CPU cores), and both are
free of any effect on what is learnt beyond rounding (docs/zoo.md, Training
notes, has the measured step times). On the CPU the trainer keeps the model
and its batches channels-last, the layout oneDNN's convolutions run fastest
in. On a CPU with bfloat16 instructions ``--autocast bf16`` runs the
convolutions in bfloat16 as well. Only the forward pass is cast: the weights, the
optimizer state, the loss and validation stay fp32, as mixed-precision
training does on GPUs. Without bfloat16 instructions the casts are emulated
and slower than fp32, so the trainer refuses the mode there rather than
quietly lengthening a run.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..runtime.cpu import has_bf16

AUTOCAST_MODES = ("bf16",)


def memory_layout(device: torch.device, allowed: bool = True) -> torch.memory_format:
    """Channels-last on the CPU (where it was measured faster), the default layout elsewhere or when not ``allowed``
    (QAT's fake quantizers)."""
    return torch.channels_last if allowed and device.type == "cpu" else torch.contiguous_format


def check_autocast(mode: str | None, device: torch.device) -> None:
    """A one-line error for an unknown mode, or for bfloat16 on a device without it."""
    if mode is None:
        return
    if mode not in AUTOCAST_MODES:
        raise ConfigError(f"unknown autocast mode {mode!r}; expected one of: {', '.join(AUTOCAST_MODES)}")
    if device.type == "cpu" and not has_bf16():
        raise ConfigError("--autocast bf16 needs a CPU with bfloat16 instructions (AVX-512 BF16, AMX or Arm BF16); "
                          "this one would emulate them, slower than fp32")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--autocast bf16: this GPU has no bfloat16 support")


def training_forward(net: nn.Module, images: torch.Tensor, mode: str | None, device: torch.device) -> list[torch.Tensor]:
    """Every stack's heatmaps for a training step, computed in ``mode``'s precision and returned in fp32 for the loss."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=mode is not None):
        outputs = net(images)
    return outputs if mode is None else [o.float() for o in outputs]
