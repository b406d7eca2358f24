"""``fan-bench``: accuracy against latency for models x targets x precisions, or existing artifacts
(:func:`fan_edge.bench.runner.run_bench`), with the Pareto plot (:func:`fan_edge.bench.pareto.plot_pareto`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..limits import MAX_THREADS, threads_arg
from .common import DEFAULT_CALIB, DEFAULT_VERIFY, OneLineParser, debug_arg, run_built, shared_data, stderr, trust_arg

def model_names(values: Sequence[str] | None) -> list[str]:
    """``--model`` flags, each a name or a comma list."""
    return [m.strip() for text in (values or []) for m in text.split(",") if m.strip()]


def cmd_bench(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..bench.pareto import plot_pareto
    from ..bench.report import format_table, to_json, write_csv, write_json
    from ..bench.runner import BenchOptions, run_bench
    from ..bench.settings import bench_settings, format_settings, measured_run
    from ..bench.targets import DEFAULT_TARGETS, parse_targets
    from ..errors import BenchError
    from ..rows import Status

    missing = [a for a in args.artifact if not Path(a).exists()]
    if missing:  # a typo is bad input, not a benchmark result (run_bench itself makes it a failed row)
        raise BenchError(f"--artifact {missing[0]}: no such file")
    # Where the results go, checked before the benchmark runs (its files are written at the end).
    check_writable(args.out, "--out", kind="folder")
    for flag, path in (("--csv", args.csv), ("--plot", args.plot), ("--json", None if args.json == "-" else args.json)):
        if path:
            check_writable(path, flag)
    models = model_names(args.model)
    if not models and not args.artifact:
        models = ["default"]
    data = Path(args.data) if args.data else None
    calib = Path(args.calib) if args.calib else (shared_data(*DEFAULT_CALIB) or data)
    # Exports are checked on the scored faces, else on the checkout's AFW faces: never on the calibration faces
    # alone, where int8 is at its best.
    verify = data or shared_data(*DEFAULT_VERIFY) or calib
    options = BenchOptions(
        models=models, targets=parse_targets(args.targets or [DEFAULT_TARGETS]), artifacts=list(args.artifact),
        data=data, calib=calib, verify=verify, calib_faces=args.calib_faces, faces=args.faces, threads=args.threads, runs=args.runs,
        warmup=args.warmup, rounds=args.rounds, out=Path(args.out), verify_export=not args.no_verify_export, fresh=args.fresh, trust=args.trust,
        timeout_s=args.timeout, soc=args.soc, npu_faces=args.npu_faces,
    )
    rows, load = measured_run(lambda: run_bench(options, log=stderr))
    settings = bench_settings(options, load)
    if args.csv:
        stderr(f"wrote {Path(write_csv(args.csv, rows)).resolve()}")
    if args.plot:
        stderr(f"wrote {Path(plot_pareto(rows, args.plot)).resolve()}")
    if args.json == "-":
        print(to_json(rows, settings))
    else:
        if args.json:
            stderr(f"wrote {Path(write_json(args.json, rows, settings)).resolve()}")
        print(format_table(rows, markdown=args.markdown))
        print(f"\n{format_settings(settings)}")
    return 1 if any(r.status is Status.FAILED for r in rows) else 0


def build_parser() -> argparse.ArgumentParser:
    """``fan-bench``: accuracy against latency for models x targets x precisions, or existing artifacts."""
    from ..bench.targets import DEFAULT_TARGETS

    parser = OneLineParser(
        prog="fan-bench",
        description="Export as needed, then measure every model x target (or --artifact): status, size, NME, AUC@7, FR@7, "
        "latency p50/p90 (batch 1, fixed threads, a fresh process per row), FPS, speed-up against PyTorch eager fp32, peak memory. "
        "Exit 1 when a row failed. See docs/bench.md.",
    )
    debug_arg(parser)
    parser.add_argument("--model", action="append", metavar="NAME", help="registry name or checkpoint; repeatable or a comma list "
                        "(default: default, unless only --artifact is given)")
    trust_arg(parser)
    parser.add_argument("--targets", action="append", metavar="SPEC",
                        help=f"runtime:precision[@device] comma list (runtimes torch, onnxruntime, openvino, litert; "
                        f"precisions fp32, fp16, int8; devices cpu, gpu, npu); default {DEFAULT_TARGETS}")
    parser.add_argument("--artifact", action="append", default=[], metavar="PATH", help="an exported artifact to bench as it is; repeatable")
    parser.add_argument("--data", metavar="DIR", help="faces with .pts to score every row on (without it: latency only)")
    parser.add_argument("--faces", type=int, metavar="N", help="score N faces spread over --data (default: all)")
    parser.add_argument("--calib", metavar="DIR", help="int8 calibration faces (default: "
                        f"{'/'.join(('..', 'shared', 'data', *DEFAULT_CALIB))} beside the checkout or the current folder if "
                        "present, else --data)")
    parser.add_argument("--calib-faces", type=int, default=None, metavar="N", help="faces used for int8 calibration (default: each model card's measured count, else 128)")
    parser.add_argument("--threads", type=threads_arg, default=2,
                        help=f"intra-op threads of every runtime (1..{MAX_THREADS}; default 2)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per row, over all rounds (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs at the start of each round (default 10)")
    parser.add_argument("--rounds", type=int, default=10, metavar="N",
                        help="interleaved timing rounds: each times every row in turn, so that the machine's drift "
                        "weighs on every row alike (default 10; at most --runs)")
    parser.add_argument("--out", default="fan-bench-artifacts", metavar="DIR", help="where artifacts are exported and reused (default ./fan-bench-artifacts)")
    parser.add_argument("--fresh", action="store_true", help="re-export even when --out holds the same export")
    parser.add_argument("--no-verify-export", action="store_true", help="skip the exporter's own parity check (default: on --data, else on "
                        f"{'/'.join(('..', 'shared', 'data', *DEFAULT_VERIFY))} when present, else on --calib; the benchmark still scores every row)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="S", help="limit per timing process (default 1800 s)")
    parser.add_argument("--soc", metavar="CHIP", help="Snapdragon of onnxruntime:int8@npu rows (default SM8650; QNN emulator)")
    parser.add_argument("--npu-faces", type=int, default=64, metavar="N",
                        help="faces scored on the QNN emulator, with PyTorch on the same faces (seconds each; default 64)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="JSON {\"rows\": [...]} on stdout instead of the table, or to PATH")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    parser.add_argument("--plot", metavar="PNG", help="also write the Pareto plot (NME against latency, log scale; one marker per "
                        "row, named by model and target, the legend says what each marker means)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.set_defaults(handler=cmd_bench)
    return parser


def bench_main(argv: Sequence[str] | None = None) -> int:
    return run_built("fan-bench", build_parser, argv)
