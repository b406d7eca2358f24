"""The FAN family: network, registry, factory and checkpoint formats."""

from .checkpoints import Checkpoint, infer_config, load_weights, read_checkpoint, save_checkpoint
from .complexity import count_macs, count_parameters
from .config import FANConfig
from .factory import create_model
from .fan import FAN
from .registry import DEFAULT_NAME, ModelEntry, get_entry, list_models, register

__all__ = [
    "DEFAULT_NAME",
    "FAN",
    "Checkpoint",
    "FANConfig",
    "ModelEntry",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_entry",
    "infer_config",
    "list_models",
    "load_weights",
    "read_checkpoint",
    "register",
    "save_checkpoint",
]
