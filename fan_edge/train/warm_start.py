"""Warm starts: begin a variant from another checkpoint's weights instead of from noise.

A 4-stack model trained from scratch on a small machine takes many epochs
to converge; starting it from a trained 2-stack model of the same width
reaches the same place far sooner (how the zoo's variants were trained:
docs/zoo.md). FAN's stacks share one shape (hourglass, head, the links into the next
stack), so the extra stacks start as copies of the checkpoint's last stack and
its links; training then lets them specialise. Fewer stacks than the
checkpoint is the ordinary early-exit truncation of :func:`load_weights`.
A wider network starts from a narrower one's weights the same way
(:mod:`.widen`), and a shallower hourglass from a deeper one's
(:mod:`.shallower`).
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from ..models.checkpoints import STACK_KEY, load_weights, read_checkpoint
from ..models.factory import trained_weights_file
from ..models.fan import FAN
from ..models.fine_head import with_fresh_fine_heads
from .shallower import shallower_state_dict
from .widen import widen_state_dict


def _stack_count(state_dict: dict[str, torch.Tensor]) -> int:
    hourglasses = {int(m[2]) for k in state_dict if (m := STACK_KEY.match(k)) and m[1] == "m"}
    if not hourglasses:
        raise CheckpointError("the checkpoint has no hourglass stacks (m0.*)")
    return max(hourglasses) + 1


def grow_stacks(state_dict: dict[str, torch.Tensor], stacks: int) -> dict[str, torch.Tensor]:
    """``state_dict`` with ``stacks`` stacks: stacks beyond its own copy its last stack, links copy its last link."""
    have = _stack_count(state_dict)
    if stacks <= have:
        return dict(state_dict)
    if have < 2 and stacks > 1:
        # A 1-stack checkpoint has no inter-stack links (bl/al) to copy: they would start random.
        raise CheckpointError("growing needs a checkpoint with at least 2 stacks (a 1-stack one has no inter-stack links)")
    grown = dict(state_dict)
    for key, value in state_dict.items():
        m = STACK_KEY.match(key)
        if not m:
            continue
        kind, index = m[1], int(m[2])
        rest = key[m.end():]
        if kind in ("bl", "al"):
            if index == have - 2:  # the last link feeds every new stack
                for i in range(have - 1, stacks - 1):
                    grown[f"{kind}{i}.{rest}"] = value.clone()
        elif index == have - 1:
            for i in range(have, stacks):
                grown[f"{kind}{i}.{rest}"] = value.clone()
    return grown


def warm_start(model: FAN, path: str, trust: bool = False) -> FAN:
    """Load ``path``'s weights (a checkpoint or a zoo name) into ``model``, growing or truncating the stacks to fit.

    Weights of a narrower network are widened into ``model`` (:mod:`.widen`):
    it starts with their heatmaps. Weights of a deeper hourglass lose their
    innermost levels (:mod:`.shallower`). An untrained ``model`` also takes the crop
    and refinement those weights were trained with.
    """
    checkpoint = read_checkpoint(trained_weights_file(path), trust=trust)
    state_dict = grow_stacks(checkpoint.state_dict, model.config.stacks)
    narrow = checkpoint.config
    depth = model.config.hourglass_depth
    if narrow is not None and narrow.hourglass_depth != depth:
        if narrow.pruned:
            raise CheckpointError("cannot change the hourglass depth of a channel-pruned network")
        state_dict = shallower_state_dict(state_dict, narrow.hourglass_depth, depth)
        narrow = narrow.replace(hourglass_depth=depth)
    if narrow is not None and narrow.width != model.config.width:
        state_dict = widen_state_dict(state_dict, narrow, model.state_dict(), model.config)
    # Coarse weights start a fine-head network at their own heatmaps (models/fine_head.py).
    load_weights(model, with_fresh_fine_heads(state_dict, model))
    if model.weights.file is None:
        # A network built from an architecture name has FAN's released crop and refinement; weights trained on
        # another crop would meet faces framed differently from how they learned them. Flags still override.
        model.weights = model.weights.replace(crop=checkpoint.weights.crop, refine=checkpoint.weights.refine)
    return model
