"""Named FAN variants (timm-style), the bundled zoo, and the default model.

Names read as ``fan{stacks}[-w{width}][-i{input}]``: ``fan4`` is the released
2DFAN-4 architecture, ``fan2-w128-i128`` two stacks of width 128 at 128x128.
An entry may carry bundled weights (a zoo model trained by ``fan-train``);
entries without weights build an untrained network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import FANConfig

WEIGHTS_PACKAGE = "fan_edge.models.weights"
# A registry architecture name, fan{stacks}[-w{width}][-i{input}] (fan4, fan2-w128, fan1-w64-i128).
ARCHITECTURE_NAME = re.compile(r"^fan(?P<stacks>\d)(?:-w(?P<width>\d+))?(?:-i(?P<input>\d+))?$")


@dataclass(frozen=True)
class ModelEntry:
    """A registry row: a name, its architecture and, for zoo models, a weights file."""

    name: str
    config: FANConfig
    weights: str | None = None  # file name inside fan_edge/models/weights
    description: str = ""

    @property
    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        return Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(self.weights)))

    @property
    def trained(self) -> bool:
        path = self.weights_path
        return path is not None and path.is_file()

    def card(self) -> dict[str, Any]:
        """The model card beside the weights (recipe, data, figures), or {} for untrained entries."""
        path = self.weights_path
        if path is None:
            return {}
        card_path = path.with_suffix(".json")
        if not card_path.is_file():
            return {}
        return json.loads(card_path.read_text())


def config_from_name(name: str) -> FANConfig:
    """Parse ``fan{stacks}[-w{width}][-i{input}]`` into a config."""
    match = ARCHITECTURE_NAME.fullmatch(name)
    if not match:
        raise ConfigError(f"unknown model name {name!r}; expected e.g. fan4, fan2-w128, fan1-w64-i128, or one of: {', '.join(list_models())}")
    return FANConfig(
        stacks=int(match["stacks"]),
        width=int(match["width"] or 256),
        input_size=int(match["input"] or 256),
    )


_VARIANTS = [
    ("fan4", "2DFAN-4 as released: 4 stacks, width 256, 256x256 (23.8M params)"),
    ("fan3", "3 stacks, width 256"),
    ("fan2", "2 stacks, width 256"),
    ("fan1", "1 stack, width 256 (6.25M params)"),
    ("fan2-w128", "2 stacks, width 128"),
    ("fan1-w128", "1 stack, width 128"),
    ("fan2-w128-i128", "2 stacks, width 128, 128x128 input"),
    ("fan1-w128-i128", "1 stack, width 128, 128x128 input"),
    ("fan2-w64-i128", "2 stacks, width 64, 128x128 input"),
    ("fan1-w64-i128", "1 stack, width 64, 128x128 input"),
    ("fan1-w32-i128", "1 stack, width 32, 128x128 input: the smallest"),
]

_REGISTRY: dict[str, ModelEntry] = {
    name: ModelEntry(name, config_from_name(name), description=desc) for name, desc in _VARIANTS
}



def _discover_zoo() -> str | None:
    """Register every bundled model (a card ``NAME.json`` beside ``NAME.safetensors``); return the default's name."""
    default = None
    folder = resources.files(WEIGHTS_PACKAGE)
    for card_file in sorted(folder.iterdir(), key=lambda f: f.name):
        if not card_file.name.endswith(".json"):
            continue
        card = json.loads(card_file.read_text())
        name = card.get("name", card_file.name[: -len(".json")])
        weights = card_file.name[: -len(".json")] + ".safetensors"
        _REGISTRY[name] = ModelEntry(name, FANConfig.from_dict(card["config"]), weights, card.get("description", ""))
        if card.get("default"):
            default = name
    return default


# The bundled default: the zoo model whose card says "default": true. Without
# one (a checkout before any model is bundled) it is an untrained
# configuration, and ``ModelEntry.trained`` and ``fan-edge models`` say so.
UNTRAINED_DEFAULT = "fan2-w64-i128"
DEFAULT_NAME = _discover_zoo() or UNTRAINED_DEFAULT
_default = _REGISTRY[DEFAULT_NAME]
_REGISTRY["default"] = ModelEntry(
    "default",
    _default.config,
    weights=_default.weights,
    description=f"bundled default ({DEFAULT_NAME})" + ("" if _default.weights else "; UNTRAINED until a zoo model is bundled"),
)


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """Registry entry for ``name``; any well-formed ``fan...`` name is accepted even if unlisted."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    return ModelEntry(name, config_from_name(name), description="custom variant")


def register(entry: ModelEntry) -> None:
    """Add or replace a registry entry (for zoo models bundled by other packages)."""
    _REGISTRY[entry.name] = entry
