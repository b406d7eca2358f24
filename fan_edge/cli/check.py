"""``fan-edge check`` (artifact checks that hold on every CPU) and ``fan-edge soak`` (an artifact under load)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_check(args: argparse.Namespace) -> int:
    from ..export.portability import check_artifact

    failed = 0
    for path in args.artifact:
        problems = check_artifact(path)
        failed += bool(problems)
        print(f"{path}: " + ("ok (no int8 16-bit overflow without VNNI, static batch as declared)" if not problems
                             else f"{len(problems)} problems"))
        for line in problems[: None if args.all else 10]:
            print(f"  {line}")
        if len(problems) > 10 and not args.all:
            print(f"  ... {len(problems) - 10} more (--all)")
    return 1 if failed else 0


def cmd_soak(args: argparse.Namespace) -> int:
    from ..ondevice.soak import run_from_args

    return run_from_args(args)


def add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="checks of an artifact that hold on every CPU: ONNX int8 sums that can saturate "
                       "16 bits on x86 without VNNI, a static batch in every activation (exit 1 on a problem)")
    p.add_argument("artifact", nargs="+", help=".onnx or .tflite")
    p.add_argument("--all", action="store_true", help="list every problem, not the first ten")
    p.set_defaults(handler=cmd_check)


def add_soak(sub: Any) -> None:
    from ..ondevice.soak import add_arguments

    p = sub.add_parser("soak", help="an artifact under many threads: every result against a sequential run, errors, memory "
                       "growth after warm-up (torch-free; python -m fan_edge.ondevice.soak)")
    add_arguments(p)
    p.set_defaults(handler=cmd_soak)
