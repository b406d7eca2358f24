"""The numbers that define one member of the FAN family.

A config is plain data (JSON round-trippable) so that it can travel inside a
checkpoint, an exported artifact's metadata and a model card alike.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..limits import MAX_HOURGLASS_DEPTH, MAX_INPUT_SIZE, MAX_LANDMARKS, MAX_PARAMETERS, MAX_STACKS, MAX_WIDTH, check_int
from .channels import ChannelLayout, channels_of_stacks, normalise_channels, resolve_layout
from .complexity import fine_head_parameters

RELEASED_WIDTH = 256
RELEASED_STEM = (64, 128, 128, 256)


@dataclass(frozen=True)
class FANConfig:
    """The architecture of a FAN variant.

    How a face becomes its input (the crop) and how its heatmaps decode (the
    refinement) belong to trained weights, not here: see
    :class:`fan_edge.models.pretrained.Weights`.

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
    # Per-layer output channels where they differ from the uniform layout (structured pruning), as
    # (conv name, count) pairs; a dict is accepted. None: every layer as ``width`` says. See models/channels.py.
    channels: tuple[tuple[str, int], ...] | None = None
    # 4: heatmaps at a quarter of the input (FAN's). 2: a fine head per stack puts them at half (models/fine_head.py).
    head_stride: int = 4

    def __post_init__(self) -> None:
        # Every size is bounded (fan_edge.limits) before anything else looks at it: a config from a file's metadata
        # must not be able to ask for a network or an input of terabytes.
        check_int("stacks", self.stacks, 1, MAX_STACKS)
        check_int("hourglass_depth", self.hourglass_depth, 1, MAX_HOURGLASS_DEPTH)
        check_int("num_landmarks", self.num_landmarks, 1, MAX_LANDMARKS)
        check_int("input_size", self.input_size, 1, MAX_INPUT_SIZE)
        check_int("width", self.width, 32, MAX_WIDTH)
        if self.width % 16:
            raise ConfigError(f"width must be a multiple of 16 between 32 and {MAX_WIDTH}, got {self.width}")
        if self.input_size % (4 * 2**self.hourglass_depth):
            shallower = (f"; depth {self.hourglass_depth - 1} (-d{self.hourglass_depth - 1} in a name) takes multiples "
                         f"of {2 * 2**self.hourglass_depth}") if self.hourglass_depth > 1 else ""
            raise ConfigError(
                f"input_size must be a multiple of {4 * 2**self.hourglass_depth} "
                f"(hourglass depth {self.hourglass_depth}{shallower}), got {self.input_size}"
            )
        if self.head_stride not in (2, 4) or isinstance(self.head_stride, bool):
            raise ConfigError(f"head_stride must be 4 (FAN's heatmaps) or 2 (a fine head), got {self.head_stride!r}")
        if self.head_stride == 2 and self.channels is not None:
            raise ConfigError("a fine head (head_stride 2) on a channel-pruned layout is not supported")
        object.__setattr__(self, "channels", normalise_channels(self.channels))
        values = self.num_values  # resolves the layout: ConfigError on an inconsistent channels map
        if values > MAX_PARAMETERS:
            raise ConfigError(
                f"declares a FAN of {values:,} values ({self.stacks} stacks, width {self.width}), "
                f"more than fan-edge builds ({MAX_PARAMETERS:,})"
            )

    @property
    def layout(self) -> ChannelLayout:
        """Every block's channel counts (uniform unless ``channels`` says otherwise)."""
        return resolve_layout(self, dict(self.channels or ()))

    @property
    def num_values(self) -> int:
        """Values in the state dict of a FAN of this config (weights, biases, BatchNorm statistics and counters).

        Counted from the channel layout, without building anything, so that a
        config can be refused as too large before a network of it is
        allocated; ``tests/test_reliability_limits.py`` checks it against the
        network itself.
        """
        layout = self.layout
        k = self.num_landmarks

        def bn(c: int) -> int:
            return 4 * c + 1  # weight, bias, running mean and variance, num_batches_tracked

        total = 3 * layout.stem_conv * 49 + layout.stem_conv + bn(layout.stem_conv)
        for block in layout.blocks.values():
            a, b, c = block.split
            total += bn(block.in_channels) + 9 * (block.in_channels * a + a * b + b * c) + bn(a) + bn(b)
            if block.downsample:
                total += bn(block.in_channels) + block.in_channels * block.out_channels
        w = layout.trunk
        for i, f in enumerate(layout.conv_last):
            total += w * f + f + bn(f) + f * k + k
            if i < self.stacks - 1:
                total += f * w + w + k * w + w
            if self.fine:  # fine head: its trainable parameters plus BatchNorm's statistics and counter
                total += fine_head_parameters(layout.stem_conv, f, k) + 2 * f + 1
        return total

    @property
    def fine(self) -> bool:
        """Whether each stack ends in a fine head (models/fine_head.py)."""
        return self.head_stride == 2

    @property
    def pruned(self) -> bool:
        return self.channels is not None

    @property
    def heatmap_size(self) -> int:
        """Heatmaps come out at a quarter of the input resolution, or half with a fine head."""
        return self.input_size // self.head_stride

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
        if data["head_stride"] == 4:  # FAN's: absent, so that files older fan-edge versions read are unchanged
            del data["head_stride"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FANConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if {"crop", "refine"} & set(unknown):
            raise ConfigError("crop and refine belong to the weights, not the FAN config: read a stored config with "
                              "fan_edge.models.pretrained.split_config")
        if unknown:
            raise ConfigError(f"unknown FAN config keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad FAN config: {exc}") from None
