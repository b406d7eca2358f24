"""A shallower hourglass started from a deeper one's trained weights.

An hourglass of depth 4 needs an input that is a multiple of 64 px; depth 3
admits 96 px, between the fast model's 64 and the default's 128, and on a
small input the innermost levels (2x2, 1x1 cells) cost fixed per-layer time
for little context (docs/zoo.md, seventh round). Training such a network from
noise takes about a hundred epochs here, so it starts from a deeper
network's weights instead: every level keeps its blocks from the level of
the same relative place (the outermost from the outermost), and the levels
below the new bottom are dropped. The new bottom block takes the dropped
level's upper branch, the block that ran at that very resolution and carried
its same-scale signal (a level's output is that branch plus the upsampled
coarser path, which is what is lost). Measured before training on AFW,
docs/zoo.md.
"""

from __future__ import annotations

import re

import torch

from ..errors import ConfigError

# An hourglass block's key: stack, kind (b1 upper, b2 down, b3 up, b2_plus the bottom), level, the rest.
HOURGLASS_KEY = re.compile(r"^(m\d+)\.(b2_plus|b[123])_(\d+)\.(.+)$")


def shallower_state_dict(state_dict: dict[str, torch.Tensor], deep: int, shallow: int) -> dict[str, torch.Tensor]:
    """``state_dict`` (hourglasses of depth ``deep``) for hourglasses of depth ``shallow``.

    Level ``L`` becomes level ``L - (deep - shallow)``; the levels at and
    below ``deep - shallow`` are dropped, and the new bottom block
    (``b2_plus_1``) takes the upper branch of the dropped level just below it.
    """
    if not 1 <= shallow < deep:
        raise ConfigError(f"cannot start an hourglass of depth {shallow} from one of depth {deep}: only a shallower one")
    drop = deep - shallow
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = HOURGLASS_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        stack, kind, level, rest = m[1], m[2], int(m[3]), m[4]
        if kind != "b2_plus" and level > drop:
            out[f"{stack}.{kind}_{level - drop}.{rest}"] = value
        elif kind == "b1" and level == drop:
            out[f"{stack}.b2_plus_1.{rest}"] = value
    return out
