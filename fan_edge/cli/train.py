"""``fan-train`` and ``fan-distill`` (:func:`fan_edge.train.train`), and the TrainSpec flags that fan-prune and
fan-quantize --qat share with them."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..limits import batch_arg, head_stride_arg, input_size_arg, loader_workers_arg
from .common import OneLineParser, debug_arg, run_built

# TrainSpec fields whose flags are bounded at parse time (fan_edge.limits): a typo such as --batch-size 1600000 or
# --input-size 65536 is a one-line usage error, not a traceback after allocating tens of gigabytes.
SPEC_TYPES: dict[str, Callable[[str], int]] = {
    "batch_size": batch_arg, "input_size": input_size_arg, "workers": loader_workers_arg,
    "head_stride": head_stride_arg,
}


def spec_arguments(parser: argparse.ArgumentParser, distill: bool, defaults: Mapping[str, Any] | None = None,
                   helps: Mapping[str, str] | None = None, optional_data: bool = False,
                   skip: Sequence[str] = ()) -> dict[str, argparse.Action]:
    """One flag per TrainSpec field, so the CLI and the model cards' recipes cannot drift apart.

    ``defaults`` replace TrainSpec's (a command's own recipe, e.g. fan-prune's fine-tuning), ``helps`` replace a
    flag's help, ``optional_data`` makes ``--data`` optional (the handler checks it), ``skip`` leaves fields out.
    Returns the actions added, by field name.
    """
    import dataclasses

    from ..train.spec import TrainSpec

    defaults = dict(defaults or {})
    helps = dict(helps or {})
    base = TrainSpec()
    added: dict[str, argparse.Action] = {}
    for f in dataclasses.fields(TrainSpec):
        if (f.name == "teacher" and not distill) or f.name in skip:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        default = defaults.get(f.name, getattr(base, f.name))
        if f.name == "data":
            action = parser.add_argument(flag, action="append", required=not optional_data, metavar="DIR",
                                         help=helps.get(f.name, "folder of images (with .pts, or without for distillation); repeatable"))
        elif f.name == "data_weights":
            action = parser.add_argument("--data-weight", dest="data_weights", action="append", type=float, default=[], metavar="W",
                                         help="per --data folder, in order: how many times each of its faces is drawn per epoch "
                                              "(default 1 each; 0.5 draws a seeded half)")
        elif f.name == "teacher":
            action = parser.add_argument(flag, required=True, help="teacher checkpoint or registry name (e.g. an official 2DFAN-4 .pth.tar)")
        elif f.name == "head_stride":
            action = parser.add_argument(flag, type=head_stride_arg, default=default, metavar="S",
                                         help="4: FAN's heatmaps (a quarter of the input); 2: fine heads, heatmaps at half the "
                                              "input (weights without them start the heads at their own heatmaps); default: the model's")
        elif f.name == "fine_every_stack":
            action = parser.add_argument(flag, action="store_true",
                                         help="with fine heads: run and supervise every stack's in training (about "
                                              "twice the time of a step; trains the heads an early exit uses), not only the last one's")
        elif f.name == "autocast":
            action = parser.add_argument(flag, choices=("bf16",), default=default,
                                         help="bf16: forward passes in bfloat16 (weights, loss and validation stay fp32): "
                                              "about 1.7x faster on CPUs with AVX-512 BF16 or AMX; refused on others. "
                                              "Can change on resume (docs/zoo.md, Training notes)")
        elif f.name == "ema":
            action = parser.add_argument(flag, type=float, default=default, metavar="DECAY",
                                         help="keep an exponential moving average of the weights (e.g. 0.999: about the last "
                                              "1,000 steps) and validate and save it; the raw weights' --val figure is logged "
                                              "beside it as raw_nme_io in the log (default: none)")
        elif f.name == "init":
            action = parser.add_argument(flag, default=None, metavar="CKPT",
                                         help=helps.get(f.name, "start from this checkpoint's or zoo model's weights (any input "
                                                        "size; extra stacks copy its last stack; a narrower checkpoint is "
                                                        "widened, starting at its own heatmaps; a deeper hourglass loses "
                                                        "its innermost levels)"))
        else:
            original = getattr(base, f.name)
            kind = type(original) if original is not None else (int if f.name == "input_size" else float if f.name in (
                "reference_scale", "center_shift", "max_minutes", "max_label_disagreement") else int if f.name == "max_batches" else str)
            action = parser.add_argument(flag, type=SPEC_TYPES.get(f.name, kind), default=default,
                                         help=helps.get(f.name, f"default: {default}"))
        added[f.name] = action
    return added


def spec_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainSpec fields a training-like command's flags set (fan-train, fan-distill, fan-prune, fan-quantize --qat)."""
    import dataclasses

    from ..train.spec import TrainSpec

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSpec) if hasattr(args, f.name)}


def training_exit(result: dict[str, Any]) -> int:
    """A stop the user asked for (--max-minutes, --max-batches) is a success; a signal is not."""
    return 130 if result.get("reason") == "signal" else 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import TrainSpec, train

    return training_exit(train(TrainSpec(**spec_values(args)), resume=not args.fresh))


def build_parser(distill: bool) -> argparse.ArgumentParser:
    prog = "fan-distill" if distill else "fan-train"
    desc = (
        "Train a FAN student against a teacher's heatmaps (and ground truth where .pts exist)."
        if distill
        else "Train a FAN variant on folders of images with .pts (heatmap loss on every stack)."
    )
    parser = OneLineParser(prog=prog, description=desc)
    debug_arg(parser)
    parser.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out and start from scratch")
    spec_arguments(parser, distill)
    parser.set_defaults(handler=cmd_train)
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    return run_built("fan-train", lambda: build_parser(distill=False), argv)


def distill_main(argv: Sequence[str] | None = None) -> int:
    return run_built("fan-distill", lambda: build_parser(distill=True), argv)
