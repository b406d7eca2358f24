"""``create_model``: one call from a name, a config or a file to a ready FAN."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError
from .config import FANConfig
from .pretrained import Weights
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
    name_or_config: str | Path | FANConfig | Weights,
    weights: str | Path | Weights | None | Literal[False] = None,
    *,
    trust: bool = False,
    stacks: int | None = None,
    input_size: int | None = None,
    head_stride: int | None = None,
) -> FAN:
    """Build a FAN from a registry name, a config, a checkpoint file or a weights record.

    ``weights=None`` loads a zoo entry's bundled weights when it has them (and
    builds an untrained network otherwise); ``weights=False`` always builds an
    untrained one; a path loads that file; a
    :class:`~fan_edge.models.pretrained.Weights` record loads its file (none:
    an untrained network with its crop and refinement). ``stacks`` below the
    checkpoint's count truncates it: every stack is supervised, so this is an
    early exit. ``input_size`` overrides the resolution (the weights are
    resolution-free). ``head_stride=2`` adds fine heads (models/fine_head.py);
    weights without them start the heads as built, so the network begins at
    the weights' own heatmaps, upsampled.

    The network comes back with the record of its weights as
    ``model.weights`` (crop, refinement, card): the file's own, whatever the
    name or config it was built under, since a name's conventions would shift
    every landmark of weights trained on another crop.
    """
    from .checkpoints import infer_config, load_weights, read_checkpoint
    from .fan import FAN
    from .fine_head import with_fresh_fine_heads

    checkpoint = None
    record: Weights | None = None  # None: an untrained network's (FAN's released crop and refinement)
    given = name_or_config if isinstance(name_or_config, Weights) else None
    if given is not None:  # a record: its file (or, without one, the architecture its name says)
        name_or_config = given.file if given.file is not None else given.name
    if isinstance(name_or_config, FANConfig):
        config = name_or_config
        bundled = None
    elif isinstance(name_or_config, Path) or is_checkpoint_path(str(name_or_config)):
        checkpoint = read_checkpoint(name_or_config, trust=trust)
        config = checkpoint.config or infer_config(checkpoint.state_dict)
        record = given or checkpoint.weights
        bundled = None
    else:
        entry = get_entry(str(name_or_config))
        config = entry.config
        bundled = entry.weights_path if entry.trained else None
        record = given or Weights(name=entry.name)
    if isinstance(weights, Weights):
        record = weights
        checkpoint = read_checkpoint(weights.file, trust=trust) if weights.file is not None else None
    elif weights is not None and weights is not False:
        # The crop and the peak refinement are how the weights were trained, not architecture: a name's
        # conventions would silently shift every landmark, so the file's own record comes with it.
        checkpoint = read_checkpoint(weights, trust=trust)
        record = checkpoint.weights
    elif weights is None and checkpoint is None and bundled is not None:
        checkpoint = read_checkpoint(bundled)
        record = checkpoint.weights.replace(name=entry.weights_record().name)
    changes = {}
    if stacks is not None:
        if stacks > config.stacks and checkpoint is not None:
            raise ConfigError(f"cannot grow a {config.stacks}-stack checkpoint to {stacks} stacks")
        changes["stacks"] = stacks
    if input_size is not None:
        changes["input_size"] = input_size
    if head_stride is not None and head_stride != config.head_stride:
        if config.fine:
            raise ConfigError("a fine-head checkpoint cannot be turned back into FAN's quarter-resolution heads")
        changes["head_stride"] = head_stride
    if changes:
        config = config.replace(**changes)
    model = FAN(config, record)
    if checkpoint is not None:
        load_weights(model, with_fresh_fine_heads(checkpoint.state_dict, model))
    model.eval()
    return model
