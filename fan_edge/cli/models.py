"""``fan-edge info``, ``fan-edge models`` and ``fan-edge bundle``: the model zoo (:mod:`fan_edge.models.table`,
:mod:`fan_edge.models.bundle`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import model_arg


def cmd_info(args: argparse.Namespace) -> int:
    from ..models.table import model_summary

    info = model_summary(args.model, args.trust)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model        {info['model']}{'' if info['trained'] else '  (untrained)'}")
    print(f"stacks       {info['stacks']}")
    print(f"width        {info['width']}")
    print(f"input        {info['input_size']}x{info['input_size']} RGB [0,1], heatmaps {info['heatmap_size']}x{info['heatmap_size']}")
    print(f"parameters   {info['parameters']:,}")
    print(f"MACs         {info['macs'] / 1e9:.3f} G")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.table import format_table, zoo_rows

    rows = zoo_rows()
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
    else:
        print(format_table(rows, markdown=args.markdown))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from ..bench.card import measure_card
    from ..models.bundle import bundle

    path = bundle(args.checkpoint, args.name, args.data, default=args.default, description=args.description, notes=args.notes,
                  recipe=args.recipe, folder=args.out, data_root=args.data_root, storage=args.storage, measure=measure_card)
    card = json.loads(path.with_suffix(".json").read_text())
    print(f"bundled {args.name} -> {path}")
    print(json.dumps(card["figures"], indent=2))
    return 0


def add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="variant, stacks, width, input size, parameters and MACs of a model")
    model_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_info)


def add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="the registry and each model card's figures (Table 5, measured)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="as a markdown table (docs/zoo.md is this output)")
    p.set_defaults(handler=cmd_models)


def add_bundle(sub: Any) -> None:
    p = sub.add_parser("bundle", help="add a trained checkpoint to a zoo folder with freshly measured figures",
                       description="Measure a trained checkpoint afresh and write it, with its card, as NAME.safetensors and "
                       "NAME.json into --out. Without --out: the package's own zoo (fan_edge/models/weights), only when "
                       "fan-edge runs from a development checkout; an installed package needs --out. A model bundled "
                       "elsewhere loads by its path (--model DIR/NAME.safetensors). See docs/zoo.md.")
    p.add_argument("checkpoint")
    p.add_argument("--name", required=True, help="zoo name, e.g. fan2-w64-i128-300w")
    p.add_argument("--data", required=True, help="folder the card's figures are measured on (never trained on)")
    p.add_argument("--out", metavar="DIR", help="zoo folder to write into (created if missing; default: the package's "
                   "fan_edge/models/weights, in a development checkout only)")
    p.add_argument("--data-root", metavar="DIR", help="absolute data paths in the card are written relative to this "
                   "(default: the folder above --data); the card holds no absolute path")
    p.add_argument("--default", action="store_true", help="make it the default model of that folder")
    p.add_argument("--storage", default="fp32", metavar="{fp32,fp16,int8}",
                   help="how the weights are stored: fp16 halves the file, int8 quarters it (convolution kernels as "
                   "int8 with per-channel scales); either loads as fp32, and the card's figures are measured on the "
                   "stored weights; default: fp32")
    p.add_argument("--description", default="")
    p.add_argument("--notes", default="", help="anything the recipe alone does not say (e.g. a schedule changed mid-run)")
    p.add_argument("--recipe", default="", help="the command(s) that reproduce it from scratch, when the checkpoint's own "
                   "recipe is one stage of several (default: the training card's recipe)")
    p.set_defaults(handler=cmd_bundle)
