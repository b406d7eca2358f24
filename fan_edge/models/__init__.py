"""The FAN family: network, registry, factory, weights records and checkpoint formats.

A network's architecture is a :class:`FANConfig`; what its trained weights
need besides their tensors (the crop, the heatmap refinement, the model card)
is their :class:`Weights` record, which every built network carries as
``model.weights``.

The names below are imported on first use (PEP 562): the registry, the config,
the weights records and the closed-form counts are torch-free, so that ``fan-edge models`` and
``fan-edge info NAME`` start without importing torch; the network, the
factory and the checkpoint formats bring torch when first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoints import Checkpoint, infer_config, load_weights, read_checkpoint, save_checkpoint
    from .complexity import count_macs, count_parameters
    from .config import FANConfig
    from .factory import create_model
    from .fan import FAN
    from .pretrained import Weights
    from .registry import DEFAULT_NAME, ModelEntry, get_entry, get_weights, list_models, register, unavailable_models

_SOURCES = {
    "Checkpoint": "checkpoints", "infer_config": "checkpoints", "load_weights": "checkpoints",
    "read_checkpoint": "checkpoints", "save_checkpoint": "checkpoints",
    "count_macs": "complexity", "count_parameters": "complexity",
    "FANConfig": "config",
    "create_model": "factory",
    "FAN": "fan",
    "Weights": "pretrained",
    "DEFAULT_NAME": "registry", "ModelEntry": "registry", "get_entry": "registry", "list_models": "registry",
    "register": "registry", "get_weights": "registry", "unavailable_models": "registry",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_NAME",
    "FAN",
    "Checkpoint",
    "FANConfig",
    "ModelEntry",
    "Weights",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_entry",
    "get_weights",
    "infer_config",
    "list_models",
    "load_weights",
    "read_checkpoint",
    "register",
    "save_checkpoint",
    "unavailable_models",
]
