"""Named FAN variants (timm-style), the bundled zoo, and the default model.

Names read as ``fan{stacks}[-w{width}][-i{input}]``: ``fan4`` is the released
2DFAN-4 architecture, ``fan2-w128-i128`` two stacks of width 128 at 128x128.
An entry may carry bundled weights (a zoo model trained by ``fan-train``)
with their record (:class:`~fan_edge.models.pretrained.Weights`: crop,
refinement, card), read from the card beside them; entries without weights
build an untrained network. A card that cannot be read (not JSON, fields
missing or wrong) leaves its model unavailable, with a one-line warning and
the reason in :func:`unavailable_models`: the rest of the zoo still loads.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import FANConfig
from .pretrained import Weights, card_preprocessing, split_config

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "fan_edge.models.weights"
# A card larger than this is not a model card (one holds a recipe, figures, a pruning map: tens of kB).
MAX_CARD_BYTES = 1 << 20
# A registry architecture name, fan{stacks}[-w{width}][-i{input}][-d{depth}][-s{2|4}] (fan4, fan2-w128, fan1-w64-i96-d3).
ARCHITECTURE_NAME = re.compile(
    r"^fan(?P<stacks>\d)(?:-w(?P<width>\d+))?(?:-i(?P<input>\d+))?(?:-d(?P<depth>\d))?(?:-s(?P<stride>[24]))?$"
)


@dataclass(frozen=True)
class ModelEntry:
    """A registry row: a name, its architecture and, for zoo models, a weights file and its record.

    ``pretrained`` is the record of the bundled weights (crop, refinement,
    card); None for an architecture-only entry (and for an entry registered
    with a file name only, whose card is then read from beside the file).
    """

    name: str
    config: FANConfig
    weights: str | None = None  # file name inside fan_edge/models/weights
    description: str = ""
    pretrained: Weights | None = None

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
        if self.pretrained is not None:
            return self.pretrained.card
        path = self.weights_path
        if path is None:
            return {}
        card_path = path.with_suffix(".json")
        if not card_path.is_file():
            return {}
        return json.loads(card_path.read_text())

    def weights_record(self) -> Weights:
        """The record a network of this entry is built with: its bundled weights', else an untrained one's (FAN's
        released crop and refinement, no file)."""
        if self.pretrained is not None:
            return self.pretrained
        return Weights(name=self.name)


def config_from_name(name: str) -> FANConfig:
    """Parse ``fan{stacks}[-w{width}][-i{input}][-d{depth}][-s{2|4}]`` into a config.

    ``-d``: hourglass depth (4 as released; 3 admits inputs that are multiples of 32, e.g. 96 px); ``-s2``: fine
    heads (models/fine_head.py).
    """
    match = ARCHITECTURE_NAME.fullmatch(name)
    if not match:
        raise ConfigError(f"unknown model name {name!r}; expected e.g. fan4, fan2-w128, fan1-w64-i128, or one of: {', '.join(list_models())}")
    return FANConfig(
        stacks=int(match["stacks"]),
        width=int(match["width"] or 256),
        input_size=int(match["input"] or 256),
        hourglass_depth=int(match["depth"] or 4),
        head_stride=int(match["stride"] or 4),
    )


def architecture_name(config: FANConfig) -> str:
    """The registry name of ``config``'s uniform architecture (the inverse of :func:`config_from_name`)."""
    return (f"fan{config.stacks}-w{config.width}-i{config.input_size}"
            + (f"-d{config.hourglass_depth}" if config.hourglass_depth != 4 else "")
            + ("-s2" if config.head_stride == 2 else ""))


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
    ("fan2-w64-i128-s2", "2 stacks, width 64, 128x128 input, fine heads: 64x64 heatmaps"),
    ("fan1-w32-i128", "1 stack, width 32, 128x128 input: the smallest"),
]

_REGISTRY: dict[str, ModelEntry] = {
    name: ModelEntry(name, config_from_name(name), description=desc) for name, desc in _VARIANTS
}
# Zoo models whose card could not be read: name -> the one-line reason.
_UNAVAILABLE: dict[str, str] = {}


def read_zoo_card(card_file: Traversable | Path, folder: Traversable | Path | None = None) -> tuple[ModelEntry, bool]:
    """The registry entry a bundled card describes, and whether the card makes it the default.

    ConfigError, one line, for a card that is not a JSON object of a
    readable name, architecture (``config``), crop and refinement. ``folder``:
    where the weights beside it are (default: the package's weights folder).
    """
    stem = card_file.name[: -len(".json")]
    try:
        raw = card_file.read_bytes()
        if len(raw) > MAX_CARD_BYTES:
            raise ConfigError(f"larger than {MAX_CARD_BYTES >> 20} MiB")
        card = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"unreadable ({type(exc).__name__}: {_first_line(exc)})") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise ConfigError(f"not valid JSON ({_first_line(exc)})") from None
    if not isinstance(card, dict):
        raise ConfigError(f"a JSON {type(card).__name__}, not an object")
    name = card.get("name", stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"its name is {name!r}, not text")
    if ARCHITECTURE_NAME.fullmatch(name) or name == "default":
        raise ConfigError(f"its name {name!r} would shadow a registry variant")
    if not isinstance(card.get("config"), dict):
        raise ConfigError("no \"config\" object (the architecture)")
    description = card.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("its description is not text")
    try:
        config, _ = split_config(card["config"])
        file = (folder if folder is not None else resources.files(WEIGHTS_PACKAGE)).joinpath(f"{stem}.safetensors")
        record = Weights.from_preprocessing(card_preprocessing(card) or {}, name=name,
                                            file=str(file) if file.is_file() else None, meta=card)
    except (ConfigError, TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise ConfigError(f"bad config ({_first_line(exc)})") from None
    return ModelEntry(name, config, f"{stem}.safetensors", description, record), card.get("default") is True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _discover_zoo() -> str | None:
    """Register every bundled model (a card ``NAME.json`` beside ``NAME.safetensors``); return the default's name.

    A card that cannot be read makes only its own model unavailable (logged once, one line; listed by
    :func:`unavailable_models` and ``fan-edge models``).
    """
    default = None
    try:
        folder = resources.files(WEIGHTS_PACKAGE)
        cards = sorted((f for f in folder.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
    except (OSError, ModuleNotFoundError) as exc:
        log.warning("fan-edge zoo: cannot list %s: %s", WEIGHTS_PACKAGE, _first_line(exc))
        return None
    for card_file in cards:
        stem = card_file.name[: -len(".json")]
        try:
            entry, is_default = read_zoo_card(card_file, folder)
            if entry.name in _REGISTRY:
                raise ConfigError(f"its name {entry.name!r} is taken")
        except ConfigError as exc:
            _UNAVAILABLE[stem] = f"model card {card_file.name}: {exc}"
            log.warning("fan-edge zoo: %s unavailable: %s", stem, _UNAVAILABLE[stem])
            continue
        _REGISTRY[entry.name] = entry
        if is_default:
            default = entry.name
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
    pretrained=_default.pretrained,
)


def list_models() -> list[str]:
    """Every usable registry name (variants, zoo models, ``default``); see :func:`unavailable_models` for the rest."""
    return list(_REGISTRY)


def unavailable_models() -> dict[str, str]:
    """Bundled zoo models whose card could not be read, each with its one-line reason."""
    return dict(_UNAVAILABLE)


def get_entry(name: str) -> ModelEntry:
    """Registry entry for ``name``; any well-formed ``fan...`` name is accepted even if unlisted."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _UNAVAILABLE:
        raise ConfigError(f"zoo model {name} is unavailable: {_UNAVAILABLE[name]}")
    return ModelEntry(name, config_from_name(name), description="custom variant")


def get_weights(name: str) -> Weights:
    """The weights record of registry name ``name`` (torchvision's ``get_weight``): a zoo model's crop, refinement
    and card, read from its card without loading a tensor; an untrained record for an architecture name."""
    return get_entry(name).weights_record()


def register(entry: ModelEntry) -> None:
    """Add or replace a registry entry (for zoo models bundled by other packages)."""
    _REGISTRY[entry.name] = entry
