"""The numbers that define one member of the FAN family.

A config is plain data (JSON round-trippable) so that it can travel inside a
checkpoint, an exported artifact's metadata and a model card alike.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..runtime.crop import CropSpec
from .channels import ChannelLayout, channels_of_stacks, normalise_channels, resolve_layout

SUPPORTED_INPUT_SIZES = (256, 192, 128)
RELEASED_WIDTH = 256
RELEASED_STEM = (64, 128, 128, 256)


@dataclass(frozen=True)
class FANConfig:
    """Architecture and preprocessing of a FAN variant.

    ``width`` is the hourglass feature width (256 as released). The stem
    (7x7 conv and three blocks) scales with it, because at small widths an
    unscaled stem would cost more than the hourglasses themselves; at width
    256 the stem is exactly the released one.
    """

    stacks: int = 4
    width: int = 256
    input_size: int = 256
    num_landmarks: int = 68
    hourglass_depth: int = 4
    crop: CropSpec = field(default_factory=CropSpec)
    refine: str = "quarter"  # heatmap peak refinement, see fan_edge.runtime.decode
    # Per-layer output channels where they differ from the uniform layout (structured pruning), as
    # (conv name, count) pairs; a dict is accepted. None: every layer as ``width`` says. See models/channels.py.
    channels: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("stacks", "width", "input_size", "num_landmarks", "hourglass_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.hourglass_depth <= 6:
            raise ConfigError(f"hourglass_depth must be between 1 and 6, got {self.hourglass_depth}")
        if self.input_size <= 0:
            raise ConfigError(f"input_size must be positive, got {self.input_size}")
        if not 1 <= self.stacks <= 8:
            raise ConfigError(f"stacks must be between 1 and 8, got {self.stacks}")
        if self.width < 32 or self.width % 16:
            raise ConfigError(f"width must be a multiple of 16 and at least 32, got {self.width}")
        if self.input_size % (4 * 2**self.hourglass_depth):
            raise ConfigError(
                f"input_size must be a multiple of {4 * 2**self.hourglass_depth} "
                f"(hourglass depth {self.hourglass_depth}), got {self.input_size}"
            )
        if self.num_landmarks < 1:
            raise ConfigError(f"num_landmarks must be positive, got {self.num_landmarks}")
        if self.refine not in ("quarter", "gaussian"):
            raise ConfigError(f"refine must be 'quarter' or 'gaussian', got {self.refine!r}")
        if isinstance(self.crop, dict):
            try:
                object.__setattr__(self, "crop", CropSpec.from_dict(self.crop))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if not isinstance(self.crop, CropSpec):
            raise ConfigError(f"crop must be a CropSpec or a dict, got {type(self.crop).__name__}")
        object.__setattr__(self, "channels", normalise_channels(self.channels))
        if self.channels is not None:
            self.layout  # noqa: B018 - raises ConfigError on an inconsistent map

    @property
    def layout(self) -> ChannelLayout:
        """Every block's channel counts (uniform unless ``channels`` says otherwise)."""
        return resolve_layout(self, dict(self.channels or ()))

    @property
    def pruned(self) -> bool:
        return self.channels is not None

    @property
    def heatmap_size(self) -> int:
        """Heatmaps come out at a quarter of the input resolution."""
        return self.input_size // 4

    @property
    def stem_channels(self) -> tuple[int, int, int, int]:
        """Channels after conv1, conv2, conv3 and conv4 (the released 64, 128, 128, 256 at width 256)."""
        scale = self.width / RELEASED_WIDTH
        return tuple(int(c * scale) for c in RELEASED_STEM)  # type: ignore[return-value]

    def replace(self, **changes: Any) -> "FANConfig":
        """A changed copy; fewer ``stacks`` also drops the removed stacks' ``channels`` entries (early exit)."""
        if "stacks" in changes and "channels" not in changes and isinstance(changes["stacks"], int):
            changes["channels"] = channels_of_stacks(self.channels, changes["stacks"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # Absent rather than null when uniform, so that every unpruned config serialises as it always has.
        channels = data.pop("channels")
        if channels is not None:
            data["channels"] = dict(channels)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FANConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown FAN config keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad FAN config: {exc}") from None
