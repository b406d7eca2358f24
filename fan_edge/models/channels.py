"""Per-layer channel counts of a FAN: uniform as designed, or as left by structured pruning.

A pruned FAN keeps every module of the original but with fewer channels. The
free choices are the output channels of a few convolutions (the config's
``channels`` map, keyed by module name); every other count follows from
FAN's coupling:

- a block's output is ``cat(conv1, conv2, conv3) + shortcut``, so its width is
  the sum of its three convs, and a block without a ``downsample`` conv
  (identity shortcut) must give back exactly the width it takes in;
- every hourglass block, every ``top_m_i`` and the inter-stack sum
  ``previous + bl_i(features) + al_i(heatmaps)`` share one width: the trunk,
  which is the width of the stem's last block (``conv4``);
- ``conv_last{i}`` (with ``bn_end{i}``) is free per stack; ``l{i}`` always
  gives the landmarks, and ``bl{i}``/``al{i}`` give the trunk width.

``resolve_layout`` turns a config into every block's counts (or one-line
``ConfigError``s); ``FAN`` builds from it, so ``create_model`` rebuilds a
pruned checkpoint exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConfigError
from ..limits import MAX_WIDTH, describe

STEM_BLOCKS = ("conv2", "conv3", "conv4")


class _Arch(Protocol):
    stacks: int
    width: int
    hourglass_depth: int
    num_landmarks: int

    @property
    def stem_channels(self) -> tuple[int, int, int, int]: ...


@dataclass(frozen=True)
class BlockLayout:
    """One ConvBlock: input width, its three convs' outputs, and whether it has a 1x1 ``downsample`` shortcut."""

    in_channels: int
    split: tuple[int, int, int]
    downsample: bool

    @property
    def out_channels(self) -> int:
        return sum(self.split)


@dataclass(frozen=True)
class ChannelLayout:
    stem_conv: int  # the 7x7 conv1
    blocks: dict[str, BlockLayout]  # by module path: conv2, m0.b1_4, top_m_0, ...
    conv_last: tuple[int, ...]  # per stack
    trunk: int


def hourglass_blocks(depth: int) -> list[str]:
    """Block names inside one hourglass, in the order HourGlass registers them."""
    names: list[str] = []
    for level in range(depth, 0, -1):
        names += [f"b1_{level}", f"b2_{level}"]
        if level == 1:
            names.append(f"b2_plus_{level}")
    names += [f"b3_{level}" for level in range(1, depth + 1)]
    return names


def block_names(stacks: int, depth: int) -> list[str]:
    """Every ConvBlock of a FAN by module path (stem, then each stack's hourglass and ``top_m``)."""
    names = list(STEM_BLOCKS)
    for i in range(stacks):
        names += [f"m{i}.{b}" for b in hourglass_blocks(depth)]
        names.append(f"top_m_{i}")
    return names


def free_layers(stacks: int, depth: int) -> Iterator[str]:
    """The conv names a ``channels`` map may set."""
    yield "conv1"
    for block in block_names(stacks, depth):
        for conv in ("conv1", "conv2", "conv3"):
            yield f"{block}.{conv}"
    for i in range(stacks):
        yield f"conv_last{i}"


def normalise_channels(value: object) -> tuple[tuple[str, int], ...] | None:
    """A ``channels`` map (dict, or pairs) as sorted (name, count) pairs; None, {} and () mean uniform."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        items = [tuple(p) for p in value]
    else:
        raise ConfigError(f"channels must be a mapping of layer name to output channels, got {type(value).__name__}")
    if not items:
        return None
    pairs: dict[str, int] = {}
    for name, count in items:
        if not isinstance(name, str):
            raise ConfigError(f"channels: layer names must be strings, got {describe(name)}")
        if name in pairs:
            raise ConfigError(f"channels: {describe(name)} is given twice")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_WIDTH:
            raise ConfigError(f"channels: {describe(name)} must be a positive integer up to {MAX_WIDTH}, got {describe(count)}")
        pairs[name] = count
    return tuple(sorted(pairs.items()))


def resolve_layout(cfg: _Arch, channels: Mapping[str, int] | None) -> ChannelLayout:
    """Every block's widths for ``cfg``, with ``channels`` overriding the uniform counts; ConfigError if inconsistent."""
    given = dict(channels or {})
    known = set(free_layers(cfg.stacks, cfg.hourglass_depth))
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(
            f"channels: unknown layer {unknown[0]!r} for {cfg.stacks} stack(s) of depth {cfg.hourglass_depth}"
            + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + "; expected names such as conv1, conv2.conv1, m0.b1_4.conv2, top_m_0.conv3, conv_last0"
        )
    c0, c1, c2, c3 = cfg.stem_channels
    w = cfg.width
    stem_conv = given.get("conv1", c0)

    def block(name: str, in_ch: int, designed_in: int, designed_out: int) -> BlockLayout:
        half, quarter = designed_out // 2, designed_out // 4
        split = (given.get(f"{name}.conv1", half), given.get(f"{name}.conv2", quarter), given.get(f"{name}.conv3", quarter))
        layout = BlockLayout(in_ch, split, downsample=designed_in != designed_out)
        if not layout.downsample and layout.out_channels != in_ch:
            raise ConfigError(
                f"channels: {name} outputs {'+'.join(map(str, split))}={layout.out_channels} channels "
                f"but its identity shortcut carries {in_ch}"
            )
        return layout

    blocks: dict[str, BlockLayout] = {}
    width = stem_conv
    for name, designed_in, designed_out in (("conv2", c0, c1), ("conv3", c1, c2), ("conv4", c2, c3)):
        blocks[name] = block(name, width, designed_in, designed_out)
        width = blocks[name].out_channels
    trunk = width
    for name in block_names(cfg.stacks, cfg.hourglass_depth)[len(STEM_BLOCKS):]:
        blocks[name] = block(name, trunk, w, w)
    conv_last = tuple(given.get(f"conv_last{i}", w) for i in range(cfg.stacks))
    return ChannelLayout(stem_conv, blocks, conv_last, trunk)


def channels_of_stacks(channels: tuple[tuple[str, int], ...] | None, stacks: int) -> tuple[tuple[str, int], ...] | None:
    """The entries a model truncated to ``stacks`` keeps (early exit: later stacks' layers go)."""
    if channels is None:
        return None
    kept = tuple((k, v) for k, v in channels if _stack_of(k) is None or _stack_of(k) < stacks)  # type: ignore[operator]
    return kept or None


def _stack_of(name: str) -> int | None:
    head = name.split(".", 1)[0]
    for prefix in ("top_m_", "conv_last", "m"):
        if head.startswith(prefix) and head[len(prefix):].isdigit():
            return int(head[len(prefix):])
    return None
