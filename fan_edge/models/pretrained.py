"""``Weights``: what trained weights need besides their tensors (torchvision's ``Weights``: url, transforms, meta).

A FAN's architecture (:class:`~fan_edge.models.config.FANConfig`: stacks,
width, input size, depth, landmarks) says which network to build; how a face
box becomes its input (the crop) and how its heatmap peaks decode (the
refinement) are how the *weights* were trained: the same architecture trained
on another crop needs that other crop, or every landmark shifts. So they live
here, in the record of the weights, with the weights' card (figures, recipe,
data), and every network carries the record it was loaded with
(``model.weights``). A network built without trained weights carries
:data:`UNTRAINED`'s conventions (FAN's released crop and quarter-pixel
refinement, what 2DFAN-4's own files were trained with) until training sets
its own.

On disk (fan-edge's ``.safetensors`` and the card beside it) the record is
written as ``crop`` and ``refine`` next to the architecture (``config``): in
the card as top-level keys, in the weights file's metadata under
:data:`WEIGHTS_METADATA_KEY`. Older files carried both inside ``config``;
:func:`split_config` reads either layout, so every checkpoint and card
written before still loads with its own crop and refinement. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..runtime.crop import CropSpec
from .config import FANConfig

# The two ways heatmap peaks decode to sub-pixel points (fan_edge.runtime.decode).
REFINEMENTS = ("quarter", "gaussian")
# What the weights file's safetensors metadata holds the record under (crop and refine, JSON).
WEIGHTS_METADATA_KEY = "fan_edge_weights"
# The architecture, in the same metadata (fan_edge.models.checkpoints writes both).
CONFIG_METADATA_KEY = "fan_edge_config"
# The record's keys on disk, in a card, in the metadata and, for older files, inside the config.
PREPROCESSING_KEYS = ("crop", "refine")


@dataclass(frozen=True)
class Weights:
    """Trained weights: their name and file, the crop and refinement they were trained with, and their card.

    ``file`` is the weights file (a path as given, or the bundled file of a zoo
    model); None for a network that has no trained weights. ``meta`` is the
    model card (recipe, data, figures) as read; treat it as read-only. Two
    records are equal when name, file, crop and refinement are.
    """

    name: str = "untrained"
    file: str | None = None
    crop: CropSpec = field(default_factory=CropSpec)
    refine: str = "quarter"
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"weights name must be text, got {type(self.name).__name__}")
        if self.refine not in REFINEMENTS:
            raise ConfigError(f"refine must be 'quarter' or 'gaussian', got {self.refine!r}")
        if isinstance(self.crop, Mapping):
            try:
                object.__setattr__(self, "crop", CropSpec.from_dict(dict(self.crop)))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if not isinstance(self.crop, CropSpec):
            raise ConfigError(f"crop must be a CropSpec or a dict, got {type(self.crop).__name__}")
        if not isinstance(self.meta, Mapping):
            raise ConfigError(f"weights meta (the card) must be a mapping, got {type(self.meta).__name__}")

    @property
    def trained(self) -> bool:
        return self.file is not None

    @property
    def card(self) -> dict[str, Any]:
        """The model card (a copy)."""
        return dict(self.meta)

    def preprocessing(self) -> dict[str, Any]:
        """``{"crop": {...}, "refine": ...}``: the record's part that a card and a weights file carry."""
        return {"crop": self.crop.to_dict(), "refine": self.refine}

    def replace(self, **changes: Any) -> "Weights":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preprocessing(cls, data: Any, **fields: Any) -> "Weights":
        """A record from ``{"crop": ..., "refine": ...}`` (either may be absent: FAN's released convention)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"the weights' crop and refine are a {type(data).__name__}, not a JSON object")
        unknown = sorted(set(data) - set(PREPROCESSING_KEYS))
        if unknown:
            raise ConfigError(f"unknown weights keys: {', '.join(map(str, unknown))}")
        return cls(**fields, **{k: data[k] for k in PREPROCESSING_KEYS if k in data})


UNTRAINED = Weights()


def split_config(data: Any) -> tuple[FANConfig, dict[str, Any] | None]:
    """A config as a file holds it: the architecture, and the crop and refine where an older file (or a training
    state) kept them inside the config (None when it did not). ConfigError on anything else."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"the FAN config is a {type(data).__name__}, not a JSON object")
    architecture = {k: v for k, v in data.items() if k not in PREPROCESSING_KEYS}
    legacy = {k: data[k] for k in PREPROCESSING_KEYS if k in data}
    return FANConfig.from_dict(architecture), legacy or None


def combined_config(config: FANConfig, weights: Weights) -> dict[str, Any]:
    """The architecture and the weights' crop and refine in one dict: what a training state saves so that a resume
    rebuilds both (:func:`split_config` reads it back)."""
    return {**config.to_dict(), **weights.preprocessing()}


def card_preprocessing(card: Mapping[str, Any]) -> dict[str, Any] | None:
    """A card's crop and refine: its top-level keys, else (an older card) inside its ``config``; None if neither."""
    found = {k: card[k] for k in PREPROCESSING_KEYS if k in card}
    if found:
        return found
    config = card.get("config")
    if isinstance(config, Mapping):
        legacy = {k: config[k] for k in PREPROCESSING_KEYS if k in config}
        return legacy or None
    return None


def config_and_weights(data: Any) -> tuple[FANConfig, Weights]:
    """A stored config (:func:`combined_config`'s, or an older file's) as the architecture and an (untrained) record of
    its crop and refinement: ``FAN(*config_and_weights(state["config"]))`` rebuilds a saved network."""
    config, preprocessing = split_config(data)
    return config, Weights.from_preprocessing(preprocessing or {})
