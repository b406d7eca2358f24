"""``fan-edge``: the umbrella command, one subcommand per module of this package."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import __version__
from . import check, label, models, predict
from .common import OneLineParser, debug_arg, run
from .eval import add_eval


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fan-edge", description="FAN face alignment from training to the edge.")
    parser.add_argument("--version", action="version", version=f"fan-edge {__version__}")
    debug_arg(parser)
    sub = parser.add_subparsers(metavar="COMMAND")
    models.add_info(sub)
    models.add_models(sub)
    add_eval(sub)
    models.add_bundle(sub)
    predict.add_predict(sub)
    label.add_label(sub)
    check.add_check(sub)
    check.add_soak(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
