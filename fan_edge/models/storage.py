"""How a weights file stores its tensors: fp32, fp16, or int8 (weight-only, one scale per output channel).

A zoo model must stay a few MB in the repository. fp16 halves a file; int8
quarters it. int8 here is a storage format, not a quantized network: every
convolution kernel is stored as int8 with a float32 scale per output channel
(symmetric, ``scale = max|w| / 127``), under its own name plus
:data:`SCALE_SUFFIX`, and is dequantized to float32 when the file is read, so
the network that runs is an ordinary float FAN (and exports, calibrates and
quantizes as one). Everything else (biases, BatchNorm) is stored in fp16.
``fan-edge bundle`` measures a card's figures on the weights as stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # the key helpers serve torch-free readers (models/table.py)
    import torch

STORAGE_DTYPES = ("fp32", "fp16", "int8")
SCALE_SUFFIX = ":scale"  # no state-dict key holds a colon


def encode(state: Mapping[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """``state`` as ``storage`` writes it (integer tensors, e.g. BatchNorm's counters, unchanged)."""
    if storage not in STORAGE_DTYPES:
        raise ConfigError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
    import torch

    if storage == "fp32":
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif storage == "int8" and value.dim() >= 2:
            flat = value.detach().float().reshape(value.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
            out[key] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(value.shape)
            out[key + SCALE_SUFFIX] = scale.contiguous()
        else:
            out[key] = value.half()
    return out


def is_scale(key: str) -> bool:
    """Whether ``key`` names an int8 kernel's scales rather than a tensor of the network."""
    return key.endswith(SCALE_SUFFIX)


def network_keys(keys: Iterable[str]) -> list[str]:
    """The keys of a stored file that are the network's tensors (scales left out)."""
    return [k for k in keys if not is_scale(k)]


def decode(tensors: Mapping[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """A stored file's tensors as the network's float tensors: int8 kernels times their scales.

    A scale without its kernel, a kernel of the wrong dtype, or scales of the
    wrong length is a malformed file: refused in one line, never loaded
    half-scaled.
    """
    import torch

    out = {k: v for k, v in tensors.items() if not is_scale(k)}
    for key, scale in tensors.items():
        if not is_scale(key):
            continue
        name = key[: -len(SCALE_SUFFIX)]
        kernel = out.get(name)
        if kernel is None or kernel.dtype != torch.int8 or kernel.dim() < 2:
            raise CheckpointError(f"{source}: scales {key!r} belong to no int8 kernel")
        if scale.dim() != 1 or scale.shape[0] != kernel.shape[0] or not scale.is_floating_point():
            raise CheckpointError(f"{source}: scales {key!r} do not match their kernel's {kernel.shape[0]} output channels")
        shape = (kernel.shape[0],) + (1,) * (kernel.dim() - 1)
        out[name] = kernel.float() * scale.float().reshape(shape)
    unscaled = [k for k, v in out.items() if v.dtype == torch.int8]
    if unscaled:
        raise CheckpointError(f"{source}: int8 tensor {unscaled[0]!r} has no scales")
    return out
