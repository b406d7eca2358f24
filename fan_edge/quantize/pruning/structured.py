"""Structured pruning of a FAN: whole channels (torch-pruning's DepGraph) and whole stacks (the early exit).

FAN couples its channels tightly (models/channels.py). DepGraph traces the
network and finds the groups that must lose the same channels together:

- ``trunk``: every hourglass block, every ``top_m_i``, the stem's last block
  (``conv4``), ``bl_i``/``al_i`` and the inter-stack sums: one group, because
  each block's ``cat(conv1, conv2, conv3)`` is added to an identity
  shortcut. Removing trunk channel j removes position j of the concat in every
  block at once, so every block keeps the same (conv1, conv2, conv3) split;
- ``stem``: the 7x7 ``conv1``; ``stem_blocks``: the outputs of the stem's
  ``conv2`` and ``conv3`` blocks (identity shortcut between them);
- ``head{i}``: ``conv_last{i}`` with ``bn_end{i}`` and the inputs of ``l{i}``
  and ``bl{i}``.

The landmark heads ``l{i}`` are ignored layers: they must keep one heatmap
per landmark. Channel importance is the group L1/L2 norm of every weight the
channel touches (torch-pruning's GroupMagnitudeImportance), ranked *within*
each concat slot: every slot loses the same share, so a block keeps its
designed 2:1:1 split. Ranked across the whole group instead, the third
conv's slot (the smallest weights) empties first, leaving 3-channel convs.
``round_to`` rounds each slot's kept channels up to a multiple: CPU kernels
(oneDNN in OpenVINO, MLAS in ONNX Runtime) compute channels in blocks of 8
or 16, so 12 channels cost what 16 do, and only whole blocks buy latency.

Measured on an earlier default (docs/compression.md, "Measured on an earlier
default"): removing trunk channels breaks the network until it is
fine-tuned, whatever the criterion (group L1/L2, BatchNorm scale,
activations, first-order Taylor alike), because each trunk channel is cut
from every block at once. Dropping a stack keeps the early exit's accuracy
as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, FanEdgeError
from ...models.channels import block_names
from ...models.complexity import count_macs, count_parameters
from ...models.fan import FAN

IMPORTANCE_NORMS = {"l1": 1, "l2": 2}


def group_names(stacks: int) -> list[str]:
    """The coupled channel groups of a FAN, by the names ``ratios`` takes."""
    return ["stem", "stem_blocks", "trunk"] + [f"head{i}" for i in range(stacks)]


def _group_anchor(model: FAN, name: str) -> nn.Conv2d:
    """One conv whose output channels belong to group ``name``: how a DepGraph group is recognised."""
    if name == "stem":
        return model.conv1
    if name == "stem_blocks":
        return model.conv3.conv1
    if name == "trunk":
        return model.conv4.conv1
    return model.get_submodule(f"conv_last{name[len('head'):]}")  # type: ignore[return-value]


@dataclass
class PruneReport:
    """What pruning did, for the CLI, the model card and the tests."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    groups_before: dict[str, int]
    groups_after: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_reduction": round(self.macs_reduction, 4),
            "parameters_before": self.params_before,
            "parameters_after": self.params_after,
            "channels_before": self.groups_before,
            "channels_after": self.groups_after,
        }


def group_widths(model: FAN) -> dict[str, int]:
    """Channels of each coupled group (stacks beyond the model's are absent)."""
    layout = model.config.layout
    widths = {"stem": layout.stem_conv, "stem_blocks": layout.blocks["conv3"].out_channels, "trunk": layout.trunk}
    widths.update({f"head{i}": c for i, c in enumerate(layout.conv_last)})
    return widths


def drop_stacks(model: FAN, stacks: int) -> FAN:
    """The first ``stacks`` stacks as a model of their own (weights copied): the early exit, made permanent."""
    if isinstance(stacks, bool) or not isinstance(stacks, int) or not 1 <= stacks <= model.config.stacks:
        raise ConfigError(f"--stacks must be between 1 and {model.config.stacks} (the model's stacks), got {stacks!r}")
    if stacks == model.config.stacks:
        return model
    from ...models.checkpoints import load_weights

    kept = FAN(model.config.replace(stacks=stacks), model.weights)
    load_weights(kept, model.state_dict())  # truncates the later stacks and the last kept stack's links
    return kept.eval()


def _check_ratio(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"pruning ratio{'' if name == 'ratio' else ' of ' + name} must be in (0, 1), got {value!r}")
    return float(value)


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise FanEdgeError("structured pruning needs torch-pruning: pip install -c constraints.txt 'fan-edge[compress]'") from None
    return torch_pruning


def _slot_positions(model: FAN, group: Any) -> list[list[int]] | None:
    """Root positions of a group that come from a block's conv1, conv2 and conv3 (its concat), or None."""
    tp = _torch_pruning()

    convs = {}
    for name in block_names(model.config.stacks, model.config.hourglass_depth):
        block = model.get_submodule(name)
        for slot, conv in enumerate((block.conv1, block.conv2, block.conv3)):
            convs[conv] = (name, slot)
    per_block: dict[str, list[list[int]]] = {}
    for i, (dep, _idxs) in enumerate(group):
        if dep.pruning_fn != tp.prune_conv_out_channels or dep.layer not in convs:
            continue
        name, slot = convs[dep.layer]
        per_block.setdefault(name, [[], [], []])[slot] = list(group[i].root_idxs)
    for slots in per_block.values():
        if all(slots):
            return slots
    return None


def kept_channels(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels left of ``channels`` after removing ``ratio``, rounded up to a multiple of ``round_to`` (torch-pruning's rule)."""
    keep = max(1, channels - int(channels * ratio))
    if round_to and keep % round_to:
        keep += round_to - keep % round_to
    return min(keep, channels)


def _removed_positions(imp: torch.Tensor, slots: list[list[int]], ratio: float, round_to: int | None) -> list[int]:
    """The least important positions of every slot, the same share of each (so a block keeps its 2:1:1 split)."""
    removed: list[int] = []
    for positions in slots:
        keep = kept_channels(len(positions), ratio, round_to)
        order = torch.argsort(imp[torch.tensor(positions)]).tolist()
        removed += [positions[j] for j in order[: len(positions) - keep]]
    return sorted(removed)


def _channel_map(model: FAN) -> dict[str, int]:
    """Every free layer's output channels as the pruned module has them (what ``FANConfig.channels`` stores)."""
    cfg = model.config
    counts = {"conv1": model.conv1.out_channels}
    for name in block_names(cfg.stacks, cfg.hourglass_depth):
        block = model.get_submodule(name)
        for conv in ("conv1", "conv2", "conv3"):
            counts[f"{name}.{conv}"] = getattr(block, conv).out_channels
    for i in range(cfg.stacks):
        counts[f"conv_last{i}"] = model.get_submodule(f"conv_last{i}").out_channels
    return counts


def prune_channels(
    model: FAN,
    ratio: float,
    *,
    ratios: Mapping[str, float] | None = None,
    importance: str = "l2",
    round_to: int | None = None,
) -> FAN:
    """A new FAN with about ``ratio`` of every coupled group's channels physically removed.

    ``ratios`` overrides the ratio of named groups (``group_names``; 0 keeps a
    group whole); ``round_to`` rounds the channels each concat slot (or group) keeps up to a multiple. The
    result is built from a config whose ``channels`` map says what was kept,
    and checked: same outputs shapes as before, and it loads its own weights
    strictly, so a checkpoint of it rebuilds exactly through ``create_model``.
    """
    tp = _torch_pruning()

    ratio = _check_ratio("ratio", ratio)
    if importance not in IMPORTANCE_NORMS:
        raise ConfigError(f"unknown importance {importance!r}; expected one of: {', '.join(IMPORTANCE_NORMS)}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    names = group_names(model.config.stacks)
    per_group = dict(ratios or {})
    unknown = sorted(set(per_group) - set(names))
    if unknown:
        raise ConfigError(f"unknown channel group {unknown[0]!r}; this model's groups: {', '.join(names)}")
    for name, value in per_group.items():
        if value != 0:
            _check_ratio(name, value)

    cfg = model.config
    work = FAN(cfg)
    work.load_state_dict(model.state_dict())
    work.eval()
    example = torch.zeros(1, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad():  # every stack's heatmaps (eval mode: BatchNorm statistics stay as they are)
        reference = [o.shape for o in work.forward_stacks(example)]

    graph = tp.DependencyGraph().build_dependency(work, example_inputs=example)
    anchors = {_group_anchor(work, n): n for n in names}
    scorer = tp.importance.GroupMagnitudeImportance(p=IMPORTANCE_NORMS[importance])
    heads = [work.get_submodule(f"l{i}") for i in range(cfg.stacks)]
    plans = []
    for group in graph.get_all_groups(ignored_layers=heads, root_module_types=[nn.Conv2d]):
        name = next((anchors[d.layer] for d, _ in group if d.layer in anchors and d.pruning_fn == tp.prune_conv_out_channels), None)
        if name is None:  # not a group FAN's layout knows (a future layer): leave it whole
            continue
        group_ratio = per_group.get(name, ratio)
        if group_ratio == 0:
            continue
        imp = scorer(group)
        slots = _slot_positions(work, group)
        if slots is None or sorted(i for s in slots for i in s) != list(range(len(imp))):
            slots = [list(range(len(imp)))]
        removed = _removed_positions(imp, slots, group_ratio, round_to)
        if removed:
            plans.append((group[0].dep.target.module, group[0].dep.handler, removed))
    # Groups are disjoint, so pruning one leaves the others' channel positions as planned.
    for module, handler, removed in plans:
        graph.get_pruning_group(module, handler, idxs=removed).prune()

    # The pruned module as a normal FAN: its channel map goes into the config, its weights load strictly.
    pruned_cfg = cfg.replace(channels=_channel_map(work))
    pruned = FAN(pruned_cfg, model.weights)
    try:
        pruned.load_state_dict(work.state_dict(), strict=True)
    except RuntimeError as exc:  # DepGraph left something the channel map cannot express: a bug, not user error
        raise RuntimeError(f"pruned network does not match its channel map: {str(exc).splitlines()[0]}") from None
    pruned.eval()
    with torch.no_grad():
        shapes = [o.shape for o in pruned.forward_stacks(example)]
    if shapes != reference:
        raise RuntimeError(f"pruning changed the output shapes: {reference} -> {shapes}")
    return pruned


def prune_model(
    model: FAN,
    ratio: float | None,
    *,
    stacks: int | None = None,
    ratios: Mapping[str, float] | None = None,
    importance: str = "l2",
    round_to: int | None = None,
) -> tuple[FAN, PruneReport]:
    """Drop stacks (``stacks``: keep the first K), then prune channels by ``ratio``; with the report of what changed.

    ``ratio`` None prunes stacks only.
    """
    if ratio is None and stacks is None:
        raise ConfigError("nothing to prune: give a channel ratio, a stack count or both")
    base_macs, base_params = count_macs(model, model.config.input_size), count_parameters(model)
    before = group_widths(model)
    pruned = model.eval() if stacks is None else drop_stacks(model, stacks)
    if ratio is not None:
        pruned = prune_channels(pruned, ratio, ratios=ratios, importance=importance, round_to=round_to)
    settings: dict[str, Any] = {"ratio": ratio, "stacks": pruned.config.stacks, "importance": importance, "round_to": round_to}
    if ratios:
        settings["ratios"] = dict(sorted(ratios.items()))
    report = PruneReport(
        macs_before=base_macs,
        macs_after=count_macs(pruned, pruned.config.input_size),
        params_before=base_params,
        params_after=count_parameters(pruned),
        groups_before=before,
        groups_after=group_widths(pruned),
        settings=settings,
    )
    return pruned, report
