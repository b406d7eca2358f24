"""``fan-quantize``: per-layer int8 sensitivity (:func:`fan_edge.quantize.sensitivity.sensitivity_job`),
quantization-aware training (:func:`fan_edge.quantize.qat.train_qat`) and the compression report
(:func:`fan_edge.quantize.report.write_compression_report`)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from .common import OneLineParser, command_argv, debug_arg, run_built, stderr
from .train import spec_arguments, spec_values, training_exit

# fan-quantize --qat fine-tuning defaults: a short, gentle schedule from a converged model (AdamW, the zoo recipe's
# augmentation), distilled from the float model itself.
QAT_TRAIN_DEFAULTS = {"epochs": 4, "lr": 2e-5, "loss": "awing", "optimizer": "adamw", "weight_decay": 0.0, "warmup_epochs": 0.2,
                      "rotation": 30.0, "scale_min": 0.85, "val_every": 1}


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..errors import ConfigError

    if args.report:
        from ..quantize.report import write_compression_report

        models = {k: v for k, v in {"float": args.float_model, "qat": args.qat_model, "pruned": args.pruned,
                                    "pruned+qat": args.pruned_qat}.items() if v}
        text, (json_path, md_path) = write_compression_report(args.bench, models, args.out or "runs/compression")
        print(text)
        print(f"wrote {json_path} and {md_path}")
        return 0
    if not args.data:
        raise ConfigError("--data DIR is required (faces to score on with --sensitivity, training faces with --qat)")

    if args.sensitivity:
        from ..quantize.sensitivity import sensitivity_job

        report, (json_path, md_path) = sensitivity_job(
            args.model, args.data[0], args.out or "runs/sensitivity", calib=args.calib, calib_faces=args.calib_faces,
            faces=args.faces or None, scheme=args.scheme, estimator=args.estimator, budget=args.budget, log=stderr,
        )
        print(report.to_markdown())
        print(f"wrote {json_path} and {md_path} ({report.seconds:.0f} s)")
        return 0

    from ..quantize.qat import QATSpec, train_qat
    from ..train import TrainSpec

    values = spec_values(args)
    values["out"] = args.out or "runs/qat"
    check_writable(values["out"], "--out", kind="folder")  # before the model loads and training starts
    values["teacher"] = None if args.teacher == "none" else (args.model if args.teacher == "self" else args.teacher)
    spec = QATSpec(TrainSpec(**values), calib=args.calib, calib_faces=args.calib_faces, keep_float=list(args.keep_float))
    command = " ".join(shlex.quote(a) for a in ["fan-quantize", *command_argv(args)])
    return training_exit(train_qat(spec, resume=not args.fresh, command=command, log_fn=stderr))


def build_parser() -> argparse.ArgumentParser:
    """``fan-quantize``: the per-layer int8 sensitivity report, or quantization-aware training (NNCF)."""
    parser = OneLineParser(
        prog="fan-quantize",
        description="--sensitivity: rank the model's layers by the ΔNME their int8 alone causes (simulated), write "
        "OUT/sensitivity.json and .md, recommend the layers to keep float. --qat: quantization-aware training with NNCF "
        "into OUT (resumable: the same command continues); export the result with fan-export --precision int8. "
        "--report: the compression table (float, PTQ, QAT, pruned, pruned+QAT) from fan-bench JSON rows. "
        "See docs/quantization.md.",
    )
    debug_arg(parser)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sensitivity", action="store_true", help="per-layer sensitivity report (--data: faces to score on)")
    mode.add_argument("--qat", action="store_true", help="quantization-aware training (--data: training faces)")
    mode.add_argument("--report", action="store_true", help="compression report from fan-bench JSON rows (--bench, --float, "
                      "--qat-model, --pruned, --pruned-qat)")
    parser.add_argument("--bench", action="append", default=[], metavar="JSON", help="--report: fan-bench JSON file; repeatable")
    parser.add_argument("--float", dest="float_model", metavar="MODEL", help="--report: the float model as the rows name it")
    parser.add_argument("--qat-model", metavar="MODEL", help="--report: its quantization-aware-trained checkpoint")
    parser.add_argument("--pruned", metavar="MODEL", help="--report: a pruned checkpoint")
    parser.add_argument("--pruned-qat", metavar="MODEL", help="--report: the pruned checkpoint after QAT")
    parser.add_argument("--fresh", action="store_true", help="--qat: start over, ignoring OUT/last.ckpt")
    parser.add_argument("--calib", metavar="DIR", help="calibration faces (default: the first --data folder)")
    parser.add_argument("--calib-faces", type=int, default=128, metavar="N", help="calibration faces, chosen to cover pose and lighting (default 128)")
    parser.add_argument("--keep-float", action="append", default=[], metavar="LAYER",
                        help="--qat: keep this layer (module name or regex) float while training (the artifacts: "
                        "fan-export --int8-float); repeatable (default: none)")
    parser.add_argument("--teacher", default="self", help="--qat: distillation teacher: 'self' (the float --model, default), "
                        "a registry name or checkpoint, or 'none'")
    parser.add_argument("--faces", type=int, default=64, metavar="N",
                        help="--sensitivity: faces scored, spread over --data (default 64; 0: all of them)")
    parser.add_argument("--scheme", choices=("full", "conv"), default="full",
                        help="--sensitivity: what is quantized: full (convolutions and the residual stream, as TFLite) or conv "
                        "(convolutions only, as ONNX Runtime)")
    parser.add_argument("--budget", type=float, default=0.05, metavar="PP", help="--sensitivity: |ΔNME| the recommendation must reach (default 0.05)")
    parser.add_argument("--estimator", choices=("mean", "minmax"), default="mean",
                        help="--sensitivity: activation ranges: mean of per-face extremes (the export recipe) or global min/max")
    helps = {name: f"--qat, default: {value}" for name, value in QAT_TRAIN_DEFAULTS.items()}
    helps["out"] = "output folder (default runs/qat, runs/sensitivity or runs/compression)"
    # No --autocast: fake quantization simulates int8 from fp32 activations. No --ema: QAT fine-tunes briefly from
    # converged weights, and an average of fake-quantized weights would mix quantizer ranges.
    spec_arguments(parser, distill=False, defaults={**QAT_TRAIN_DEFAULTS, "out": None}, helps=helps,
                   optional_data=True, skip=("autocast", "ema"))  # --sensitivity and --qat check --data; --report reads no faces
    parser.set_defaults(handler=cmd_quantize, argv=None)
    return parser


def quantize_main(argv: Sequence[str] | None = None) -> int:
    return run_built("fan-quantize", build_parser, argv, record_argv=True)
