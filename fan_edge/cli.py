"""Command-line entry points: ``fan-edge`` (info, models, eval) and the per-task commands.

Errors a user can cause are ``FanEdgeError``s and print as one line with a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .errors import FanEdgeError


def _model_arg(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    help_text = "registry name (see `fan-edge models`) or checkpoint path (.safetensors, .pth.tar, TorchScript .zip)"
    if positional:
        parser.add_argument("model", nargs="?", default="default", help=help_text)
    else:
        parser.add_argument("--model", default="default", help=help_text)
    parser.add_argument("--trust", action="store_true", help="allow TorchScript archives, which run code on loading")


def model_summary(name: str, trust: bool = False) -> dict[str, Any]:
    """Variant, architecture, parameters and MACs (counted by torch's FlopCounterMode)."""
    from .models import count_macs, count_parameters, create_model, get_entry
    from .models.factory import _looks_like_path

    model = create_model(name, trust=trust)
    cfg = model.config
    trained = True
    if not _looks_like_path(name):
        entry = get_entry(name)
        trained = entry.trained
    return {
        "model": name,
        "stacks": cfg.stacks,
        "width": cfg.width,
        "input_size": cfg.input_size,
        "heatmap_size": cfg.heatmap_size,
        "num_landmarks": cfg.num_landmarks,
        "parameters": count_parameters(model),
        "macs": count_macs(model, cfg.input_size),
        "trained": trained,
        "crop": cfg.crop.to_dict(),
    }


def _cmd_info(args: argparse.Namespace) -> int:
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


def _cmd_models(args: argparse.Namespace) -> int:
    from .bench.zoo import format_table, zoo_rows

    rows = zoo_rows()
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
    else:
        print(format_table(rows, markdown=args.markdown))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .bench.evaluate import evaluate_model
    from .models import create_model

    model = create_model(args.model, trust=args.trust)
    result = evaluate_model(model, args.data, batch_size=args.batch_size)
    figures = result.scores.as_percent()
    if args.json:
        print(json.dumps({"model": args.model, "data": str(args.data), **figures}, indent=2))
        return 0
    print(f"{args.model} on {args.data}: {figures['faces']} faces (boxes from ground-truth landmarks)")
    print(f"NME inter-ocular {figures['nme_io']:.2f} %   NME box {figures['nme_box']:.2f} %   AUC@7 {figures['auc7']:.1f} %   FR@7 {figures['fr7']:.2f} %")
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from .bench.zoo import bundle

    path = bundle(args.checkpoint, args.name, args.data, default=args.default, description=args.description, notes=args.notes)
    card = json.loads(path.with_suffix(".json").read_text())
    print(f"bundled {args.name} -> {path}")
    print(json.dumps(card["figures"], indent=2))
    return 0


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except FanEdgeError as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fan-edge", description="FAN face alignment from training to the edge.")
    parser.add_argument("--version", action="version", version=f"fan-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("info", help="variant, stacks, width, input size, parameters and MACs of a model")
    _model_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_info)

    p = sub.add_parser("models", help="the registry and each model card's figures (Table 5, measured)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="as a markdown table (docs/zoo.md is this output)")
    p.set_defaults(handler=_cmd_models)

    p = sub.add_parser("eval", help="landmark accuracy on a folder of images with .pts")
    _model_arg(p)
    p.add_argument("--data", required=True, help="folder of images with .pts annotations")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("bundle", help="add a trained checkpoint to the packaged zoo with freshly measured figures")
    p.add_argument("checkpoint")
    p.add_argument("--name", required=True, help="zoo name, e.g. fan2-w64-i128-300w")
    p.add_argument("--data", required=True, help="folder the card's figures are measured on (never trained on)")
    p.add_argument("--default", action="store_true", help="make it the bundled default model")
    p.add_argument("--description", default="")
    p.add_argument("--notes", default="", help="anything the recipe alone does not say (e.g. a schedule changed mid-run)")
    p.set_defaults(handler=_cmd_bundle)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser(), argv)


def _spec_arguments(parser: argparse.ArgumentParser, distill: bool) -> None:
    """One flag per TrainSpec field, so the CLI and the model cards' recipes cannot drift apart."""
    import dataclasses

    from .train.spec import TrainSpec

    defaults = TrainSpec()
    for f in dataclasses.fields(TrainSpec):
        if f.name == "teacher" and not distill:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name)
        if f.name == "data":
            parser.add_argument(flag, action="append", required=True, metavar="DIR",
                                help="folder of images (with .pts, or without for distillation); repeatable")
            continue
        if f.name == "teacher":
            parser.add_argument(flag, required=True, help="teacher checkpoint or registry name (e.g. an official 2DFAN-4 .pth.tar)")
            continue
        kind = type(default) if default is not None else (int if f.name == "input_size" else float if f.name in (
            "reference_scale", "center_shift", "max_minutes") else int if f.name == "max_batches" else str)
        if f.name == "init":
            parser.add_argument(flag, default=None, metavar="CKPT",
                                help="start from this checkpoint's weights (same width; extra stacks copy its last stack)")
            continue
        parser.add_argument(flag, type=kind, default=default, help=f"default: {default}")


def _train_parser(distill: bool) -> argparse.ArgumentParser:
    prog = "fan-distill" if distill else "fan-train"
    desc = (
        "Train a FAN student against a teacher's heatmaps (and ground truth where .pts exist)."
        if distill
        else "Train a FAN variant on folders of images with .pts (heatmap loss on every stack)."
    )
    parser = argparse.ArgumentParser(prog=prog, description=desc)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out and start from scratch")
    _spec_arguments(parser, distill)

    def handler(args: argparse.Namespace) -> int:
        import dataclasses

        from .train import TrainSpec, train

        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSpec) if hasattr(args, f.name)}
        result = train(TrainSpec(**values), resume=not args.fresh)
        # A stop the user asked for (--max-minutes, --max-batches) is a success; a signal is not.
        return 130 if result.get("reason") == "signal" else 0

    parser.set_defaults(handler=handler)
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    return _run(_train_parser(distill=False), argv)


def distill_main(argv: Sequence[str] | None = None) -> int:
    return _run(_train_parser(distill=True), argv)


def _export_parser() -> argparse.ArgumentParser:
    """``fan-export``: a FAN to ONNX / OpenVINO / TFLite / Core ML artifacts with their contract, checked against PyTorch."""
    from .export.exporter import TARGETS

    parser = argparse.ArgumentParser(
        prog="fan-export",
        description="Export a FAN to a deployable artifact (contract inside and in ARTIFACT.json), "
        "then check it against the PyTorch model on real faces. Exit 1 when the accuracy check fails "
        "(the artifact is kept; its sidecar says 'failed accuracy').",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--target", required=True, metavar="{" + ",".join(TARGETS) + "}",
                        help="format; a comma list exports several (then --output is a folder)")
    _model_arg(parser, positional=False)
    parser.add_argument("--precision", default="fp32", metavar="{fp32,fp16,int8}", help="default fp32; a comma list exports several")
    parser.add_argument("--calib", metavar="DIR", help="calibration faces (images with .pts) for int8; also the default --verify folder")
    parser.add_argument("--calib-faces", type=int, default=128, metavar="N", help="faces used for int8 calibration, spread over the folder (default 128)")
    parser.add_argument("--input-size", type=int, metavar="N", help="override the model's input resolution")
    parser.add_argument("--outputs", choices=("heatmaps", "landmarks"), default="heatmaps",
                        help="heatmaps (default), or landmarks: decoding inside the graph, (x, y) crop pixels and scores")
    parser.add_argument("--output", metavar="PATH", help="artifact path (or folder); default ./NAME-PRECISION[-landmarks].SUFFIX")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--verify", metavar="DIR", help="faces for the parity check (default: --calib, else ../shared/data/300w/afw)")
    verify.add_argument("--no-verify", action="store_true", help="skip the parity check")
    parser.add_argument("--verify-faces", type=int, default=64, metavar="N", help="faces for the parity check, spread over the folder (default 64)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")

    def handler(args: argparse.Namespace) -> int:
        from .export.exporter import export_model, format_table, results_json

        results = export_model(
            args.model,
            args.target,
            args.precision,
            outputs=args.outputs,
            output=args.output,
            calib=args.calib,
            calib_faces=args.calib_faces,
            input_size=args.input_size,
            verify=False if args.no_verify else args.verify,
            verify_faces=args.verify_faces,
            trust=args.trust,
            log=None if args.json else (lambda msg: print(msg, file=sys.stderr)),
        )
        if args.json:
            print(results_json(results))
        else:
            first = next((r.parity for r in results if r.parity), None)
            if first is not None:
                print(f"\nparity with PyTorch on {first.faces} faces of {first.data} (boxes from ground-truth points; px are crop pixels)")
            print(format_table(results))
            for r in results:
                if r.parity is not None and not r.parity.passed:
                    print(f"{r.path}: failed accuracy: {r.parity.failure} (artifact kept)", file=sys.stderr)
        return 0 if all(r.ok for r in results) else 1

    parser.set_defaults(handler=handler)
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run(_export_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
