"""``create_model``: one call from a name, a config or a file to a ready FAN."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError
from .config import FANConfig
from .registry import get_entry

if TYPE_CHECKING:
    from .fan import FAN

# The network and the checkpoint readers (torch) are imported by create_model: is_checkpoint_path and
# trained_weights_file serve torch-free commands (fan-edge info NAME, fan-edge eval ARTIFACT).


def is_checkpoint_path(name: str) -> bool:
    """Whether a model argument names a checkpoint file (by its suffix, or an existing file), not a registry name."""
    return Path(name).suffix in {".safetensors", ".pth", ".tar", ".pt", ".zip", ".bin"} or Path(name).is_file()


def trained_weights_file(name: str) -> Path:
    """The weights file behind a model argument: a checkpoint path as given, or a zoo name's bundled weights.

    For commands that need trained weights (a warm start, an export for the
    runtime): an architecture name has none, and building from noise instead
    would fail silently, so it is refused. A path is returned unchecked; its
    reader reports a missing or unreadable file.
    """
    if is_checkpoint_path(name):
        return Path(name)
    try:
        entry = get_entry(name)
    except ConfigError:
        entry = None
    if entry is None or entry.weights_path is None or not entry.trained:
        raise ConfigError(f"{name}: no such file, and no trained weights under that name (fan-edge models lists the zoo)")
    return entry.weights_path


def create_model(
    name_or_config: str | Path | FANConfig,
    weights: str | Path | None | Literal[False] = None,
    *,
    trust: bool = False,
    stacks: int | None = None,
    input_size: int | None = None,
) -> FAN:
    """Build a FAN from a registry name, a config, or a checkpoint file.

    ``weights=None`` loads a zoo entry's bundled weights when it has them (and
    builds an untrained network otherwise); ``weights=False`` always builds an
    untrained one; a path loads that file. ``stacks`` below the checkpoint's
    count truncates it: every stack is supervised, so this is an early exit.
    ``input_size`` overrides the resolution (the weights are resolution-free).
    """
    from .checkpoints import infer_config, load_weights, read_checkpoint
    from .fan import FAN

    checkpoint = None
    if isinstance(name_or_config, FANConfig):
        config = name_or_config
        bundled = None
    elif isinstance(name_or_config, Path) or is_checkpoint_path(str(name_or_config)):
        checkpoint = read_checkpoint(name_or_config, trust=trust)
        config = checkpoint.config or infer_config(checkpoint.state_dict)
        bundled = None
    else:
        entry = get_entry(str(name_or_config))
        config = entry.config
        bundled = entry.weights_path if entry.trained else None
    if weights is not None and weights is not False:
        checkpoint = read_checkpoint(weights, trust=trust)
        if checkpoint.config is not None:
            # The crop and the peak refinement are how the weights were trained, not architecture: a name's
            # defaults would silently shift every landmark, so the checkpoint's own conventions win.
            config = config.replace(crop=checkpoint.config.crop, refine=checkpoint.config.refine)
    elif weights is None and checkpoint is None and bundled is not None:
        checkpoint = read_checkpoint(bundled)
    changes = {}
    if stacks is not None:
        if stacks > config.stacks and checkpoint is not None:
            raise ConfigError(f"cannot grow a {config.stacks}-stack checkpoint to {stacks} stacks")
        changes["stacks"] = stacks
    if input_size is not None:
        changes["input_size"] = input_size
    if changes:
        config = config.replace(**changes)
    model = FAN(config)
    if checkpoint is not None:
        load_weights(model, checkpoint.state_dict)
        model.card = checkpoint.card  # type: ignore[assignment]
    model.eval()
    return model
