"""Widening: start a wider FAN exactly where a narrower one's trained weights are.

Capacity is the lever a small machine cannot buy by training from noise: a
FAN needs about a hundred epochs before its heatmaps lock on (docs/zoo.md),
while a warm start begins at the narrow network's accuracy. The narrow
network's channels keep their places inside the wide one's; the extra
channels keep the weights the wide network was built with, so they carry a
signal; and every weight from an extra channel into an original one starts
at zero. The original channels therefore compute exactly what they did and
the heatmaps are the narrow network's own. Those zero links get gradients at
the first step (the extra channels' signal is what makes them nonzero), the
extra channels' own weights from the second on; training then decides how
much of the extra width to use.

Net2Net (Chen et al., ICLR 2016) widens by copying channels instead. Zero
links are used here because a FAN block's output is a concatenation of three
convolutions (half, a quarter, a quarter of its width) added to a residual
stream: the narrow channels' places are the start of each of the three parts,
the same in every block of the trunk, and nothing else has to be tracked.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models.channels import STEM_BLOCKS, BlockLayout, ChannelLayout, block_names
from ..models.checkpoints import STACK_KEY
from ..models.config import FANConfig

# Where a layer's output and input channels sit in the wide network: (output places, input places), input places
# None for a BatchNorm or a bias (one dimension).
Places = tuple[torch.Tensor, torch.Tensor | None]


def concat_places(narrow: BlockLayout, wide: BlockLayout) -> torch.Tensor:
    """The wide block's output channels that hold the narrow block's: the start of each of its three parts."""
    starts = (0, wide.split[0], wide.split[0] + wide.split[1])
    return torch.cat([start + torch.arange(n) for start, n in zip(starts, narrow.split)])


def _block_places(name: str, narrow: BlockLayout, wide: BlockLayout, inputs: torch.Tensor) -> tuple[dict[str, Places], torch.Tensor]:
    a, b, c = (torch.arange(n) for n in narrow.split)
    outputs = concat_places(narrow, wide)
    places: dict[str, Places] = {
        f"{name}.bn1": (inputs, None),
        f"{name}.conv1": (a, inputs),
        f"{name}.bn2": (a, None),
        f"{name}.conv2": (b, a),
        f"{name}.bn3": (b, None),
        f"{name}.conv3": (c, b),
    }
    if narrow.downsample:
        places[f"{name}.downsample.0"] = (inputs, None)
        places[f"{name}.downsample.2"] = (outputs, inputs)
    return places, outputs


def layer_places(narrow: FANConfig, wide: FANConfig) -> dict[str, Places]:
    """Every layer of ``narrow`` (by module name) with the places its channels take in ``wide``."""
    refuse_widening(narrow, wide)
    small: ChannelLayout = narrow.layout
    large: ChannelLayout = wide.layout
    stem = torch.arange(small.stem_conv)
    places: dict[str, Places] = {"conv1": (stem, torch.arange(3)), "bn1": (stem, None)}
    flow = stem
    for name in STEM_BLOCKS:
        block, flow = _block_places(name, small.blocks[name], large.blocks[name], flow)
        places.update(block)
    trunk = flow  # every hourglass block, top_m and inter-stack sum share the stem's last block's layout
    for name in block_names(narrow.stacks, narrow.hourglass_depth)[len(STEM_BLOCKS):]:
        block, out = _block_places(name, small.blocks[name], large.blocks[name], trunk)
        if not torch.equal(out, trunk):
            raise ConfigError(f"cannot widen: block {name} does not keep the trunk's channel layout")
        places.update(block)
    landmarks = torch.arange(narrow.num_landmarks)
    for i, f in enumerate(small.conv_last):
        last = torch.arange(f)
        places[f"conv_last{i}"] = (last, trunk)
        places[f"bn_end{i}"] = (last, None)
        places[f"l{i}"] = (landmarks, last)
        places[f"bl{i}"] = (trunk, last)
        places[f"al{i}"] = (trunk, landmarks)
    return places


def refuse_widening(narrow: FANConfig, wide: FANConfig) -> None:
    """ConfigError in one line unless ``wide`` is ``narrow`` with more width (any stacks or input size)."""
    if narrow.pruned or wide.pruned:
        raise ConfigError("cannot widen a channel-pruned network (or into one): widen uniform widths only")
    if narrow.fine:
        raise ConfigError("cannot widen a fine-head network; widen its coarse weights, then add fine heads")
    if (narrow.hourglass_depth, narrow.num_landmarks) != (wide.hourglass_depth, wide.num_landmarks):
        raise ConfigError(
            f"cannot widen across hourglass depth or landmark count "
            f"({narrow.hourglass_depth}/{narrow.num_landmarks} into {wide.hourglass_depth}/{wide.num_landmarks})"
        )
    if wide.width <= narrow.width:
        raise ConfigError(f"widening needs a wider network: width {narrow.width} into {wide.width}")


def widen_state_dict(state_dict: dict[str, torch.Tensor], narrow: FANConfig, wide: dict[str, torch.Tensor],
                     wide_config: FANConfig) -> dict[str, torch.Tensor]:
    """``wide`` (a freshly built wide network's state dict) holding ``state_dict``'s weights in their places.

    ``state_dict`` may have more stacks than ``wide_config`` (the extra ones
    are dropped, as an early exit drops them) but not fewer: grow its stacks
    first (:func:`~fan_edge.train.warm_start.grow_stacks`).
    """
    stacks = wide_config.stacks
    places = layer_places(narrow.replace(stacks=stacks), wide_config)
    out = {k: v.detach().clone() for k, v in wide.items()}
    for key, value in state_dict.items():
        m = STACK_KEY.match(key)
        if m and int(m[2]) >= stacks:
            continue
        layer, _, leaf = key.rpartition(".")
        if key not in out or layer not in places:
            raise ConfigError(f"cannot widen: the checkpoint's {key} has no place in the wider network")
        target = out[key]
        if leaf == "num_batches_tracked":
            target.copy_(value)
            continue
        rows, columns = places[layer]
        if columns is None or value.dim() == 1:  # a BatchNorm's tensors, a convolution's bias
            target[rows] = value.to(target.dtype)
        else:
            target[rows] = 0  # nothing flows from an extra channel into an original one
            target[rows.unsqueeze(1), columns.unsqueeze(0)] = value.to(target.dtype)
    return out
