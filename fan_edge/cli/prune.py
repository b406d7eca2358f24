"""``fan-prune``: structured pruning, then distillation from the unpruned model (:func:`fan_edge.quantize.pruning.job.run_prune`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import OneLineParser, command_argv, debug_arg, run_built, stderr
from .train import spec_arguments, spec_values, training_exit

# fan-prune's fine-tuning defaults: the bundled default's own recipe (AdamW with weight decay keeps int8 export working).
PRUNE_TRAIN_DEFAULTS = {"out": "runs/prune", "epochs": 30, "lr": 5e-4, "loss": "awing", "optimizer": "adamw",
                        "weight_decay": 0.05, "rotation": 30.0, "scale_min": 0.85, "val_every": 5}


def group_ratios(items: Sequence[str]) -> dict[str, float]:
    """``--group-ratio GROUP=R`` flags as {group: ratio}."""
    from ..errors import ConfigError

    ratios: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            ratios[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--group-ratio takes GROUP=R (e.g. trunk=0.3), got {item!r}")
    return ratios


def cmd_prune(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..errors import ConfigError
    from ..quantize.pruning.job import PruneSpec, command_line, run_prune
    from ..train import TrainSpec

    if args.ratio is None and args.stacks is None and not args.group_ratio:
        raise ConfigError("nothing to prune: give --ratio R, --stacks K or both")
    if getattr(args, "init", None):
        raise ConfigError("--init would replace the pruned weights; fan-prune fine-tunes the pruned model itself")
    ratios = group_ratios(args.group_ratio)
    if ratios and args.ratio is None:
        raise ConfigError("--group-ratio refines --ratio: give --ratio too (the other groups' ratio)")
    spec = PruneSpec(model=args.model, ratio=args.ratio, stacks=args.stacks, ratios=ratios, importance=args.importance,
                     round_to=args.round_to, teacher=args.teacher)
    values = spec_values(args)
    values["data"] = values["data"] or []
    check_writable(values["out"], "--out", kind="folder")  # before the model loads and the pruning runs
    result = run_prune(spec, TrainSpec(**values), fresh=args.fresh, command=command_line(command_argv(args)), log=stderr)
    return training_exit(result)


def build_parser() -> argparse.ArgumentParser:
    """``fan-prune``: structured pruning (channels via DepGraph, whole stacks), then distillation from the unpruned model."""
    parser = OneLineParser(
        prog="fan-prune",
        description="Physically remove channels (torch-pruning's DepGraph keeps FAN's coupled channels together) and/or "
        "stacks, write OUT/pruned.safetensors, then fine-tune it against the unpruned model (OUT/final.safetensors). "
        "The same command again resumes. See docs/compression.md.",
    )
    debug_arg(parser)
    parser.add_argument("--fresh", action="store_true", help="prune again and restart the fine-tuning, ignoring OUT's files")
    parser.add_argument("--ratio", type=float, metavar="R", help="fraction of every coupled channel group to remove, in (0, 1)")
    parser.add_argument("--stacks", type=int, metavar="K", help="keep only the first K stacks (the early exit)")
    parser.add_argument("--group-ratio", action="append", default=[], metavar="GROUP=R",
                        help="ratio of one group (stem, stem_blocks, trunk, head0...; 0 keeps it whole); repeatable")
    parser.add_argument("--importance", choices=("l2", "l1"), default="l2", help="channel importance: group L2 or L1 norm (default l2)")
    parser.add_argument("--round-to", type=int, metavar="N", help="round every group's width to a multiple of N")
    parser.add_argument("--teacher", help="distillation teacher (default: the unpruned --model)")
    helps = {name: f"default: {value}" for name, value in PRUNE_TRAIN_DEFAULTS.items()}
    helps["model"] = "model to prune: registry name or checkpoint (default: default); also the teacher"
    helps["init"] = argparse.SUPPRESS  # a warm start would replace the pruned weights
    spec_arguments(parser, distill=False, defaults=PRUNE_TRAIN_DEFAULTS, helps=helps,
                   optional_data=True)  # --epochs 0 prunes only
    parser.set_defaults(handler=cmd_prune, argv=None)
    return parser


def prune_main(argv: Sequence[str] | None = None) -> int:
    return run_built("fan-prune", build_parser, argv, record_argv=True)
