"""``fan-export``: a FAN to ONNX / OpenVINO / TFLite / Core ML artifacts with their contract, checked against PyTorch
(:func:`fan_edge.export.exporter.export_model`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..limits import MAX_INPUT_SIZE, input_size_arg
from .common import DEFAULT_VERIFY, OneLineParser, debug_arg, model_arg, run_built, shared_data, stderr

def verify_folder(args: argparse.Namespace) -> str | Path | bool | None:
    """What ``export_model`` gets as ``verify``: False (--no-verify), the folder named, None for --calib's
    folder, else the checkout's AFW faces when present (None when absent: the exporter asks for a folder)."""
    if args.no_verify:
        return False
    if args.verify:
        return args.verify
    if args.calib:
        return None
    return shared_data(*DEFAULT_VERIFY)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.exporter import export_model, format_npu, format_table, results_json
    from ..export.int8 import Int8Recipe

    int8 = Int8Recipe.from_options(calib=args.calib, calib_faces=args.calib_faces, int8_float=args.int8_float,
                                   int8_activations=args.int8_activations)
    results = export_model(
        args.model,
        args.target,
        args.precision,
        outputs=args.outputs,
        output=args.output,
        int8=int8,
        input_size=args.input_size,
        verify=verify_folder(args),
        verify_faces=args.verify_faces,
        trust=args.trust,
        log=None if args.json else stderr,
        device=args.device,
        soc=args.soc,
    )
    if args.json:
        print(results_json(results))
    else:
        first = next((r.parity for r in results if r.parity), None)
        if first is not None:
            print(f"\nparity with PyTorch on {first.faces} faces of {first.data} (boxes from ground-truth points; px are crop pixels), "
                  f"on {first.backend_device}, CPU: {first.cpu_label}")
        print(format_table(results))
        for r in results:
            if r.npu is not None:
                print(format_npu(r))
        for r in results:  # where each file went, in full: --output defaults to the working directory
            for path in r.files:
                print(f"wrote {Path(path).resolve()}")
        for r in results:
            if r.parity is not None and not r.parity.passed:
                print(f"{r.path}: failed accuracy: {r.parity.failure} (artifact kept)", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    """``fan-export``: a FAN to ONNX / OpenVINO / TFLite / Core ML artifacts with their contract, checked against PyTorch."""
    from ..export.exporter import TARGETS

    parser = OneLineParser(
        prog="fan-export",
        description="Export a FAN to a deployable artifact (contract inside and in ARTIFACT.json), "
        "then check it against the PyTorch model on real faces. Exit 1 when the accuracy check fails "
        "(the artifact is kept; its sidecar says 'failed accuracy'). Prints the full path of every file written.",
    )
    debug_arg(parser)
    parser.add_argument("--target", required=True, metavar="{" + ",".join(TARGETS) + "}",
                        help="format; a comma list exports several (then --output is a folder)")
    model_arg(parser, positional=False)
    parser.add_argument("--precision", default="fp32", metavar="{fp32,fp16,int8}", help="default fp32; a comma list exports several")
    parser.add_argument("--calib", metavar="DIR", help="calibration faces (images with .pts) for int8; also the default --verify folder")
    parser.add_argument("--calib-faces", type=int, default=None, metavar="N", help="faces used for int8 calibration, spread over the folder (default: the model card's measured count, else 128)")
    parser.add_argument("--input-size", type=input_size_arg, metavar="N",
                        help=f"override the model's input resolution (up to {MAX_INPUT_SIZE})")
    parser.add_argument("--outputs", choices=("heatmaps", "landmarks"), default="heatmaps",
                        help="heatmaps (default), or landmarks: decoding inside the graph, (x, y) crop pixels and scores")
    parser.add_argument("--output", metavar="PATH", help="artifact path (or folder); default: the current folder, "
                        "./NAME-PRECISION[-landmarks].SUFFIX (the full paths written are printed)")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--verify", metavar="DIR", help="faces for the parity check (default: --calib, else "
                        f"{'/'.join(('..', 'shared', 'data', *DEFAULT_VERIFY))} beside the checkout or the current folder, "
                        "if present)")
    verify.add_argument("--no-verify", action="store_true", help="skip the parity check")
    parser.add_argument("--verify-faces", type=int, default=None, metavar="N",
                        help="faces for the parity check, spread over the folder (default 64; 8 for --device npu, whose "
                        "check runs on an emulator of the chip at seconds per face)")
    parser.add_argument("--int8-float", action="append", metavar="LAYER",
                        help="int8: keep this layer (PyTorch module name or regex, e.g. conv_last1) float instead of the "
                        "recipe's choice; repeatable (fan-quantize --sensitivity recommends them)")
    parser.add_argument("--int8-activations", type=int, choices=(8, 16), default=None, metavar="BITS",
                        help="ONNX int8: 16 keeps int8 weights with 16-bit activations (W8A16; Qualcomm's NPU runs it "
                        "natively) for a model whose 8-bit activations fail the parity check (default: what the model "
                        "card measured for the device, else 8)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="compile for an NPU too: npu (Qualcomm Hexagon via ONNX Runtime QNN; with --target onnx "
                        "--precision int8 and --soc) or ethos-u55-128, ethos-u65-256, ethos-u85-256... (Arm, Vela; with "
                        "--target tflite --precision int8); static batch 1, full offload required (docs/npu.md)")
    parser.add_argument("--soc", metavar="CHIP", help="Snapdragon for --device npu: SM8650 (default), SM8550, SM8750, "
                        "SC8380XP..., or a QNN soc_model number")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.set_defaults(handler=cmd_export)
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    return run_built("fan-export", build_parser, argv)
