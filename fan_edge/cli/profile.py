"""``fan-profile``: latency of an artifact on a real device (:mod:`fan_edge.bench.profile`): adb or ssh."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..limits import MAX_THREADS, threads_arg
from .common import OneLineParser, debug_arg, run_built


def build_parser() -> argparse.ArgumentParser:
    """``fan-profile``: one fan-bench row measured on an Android device (adb) or a Linux edge box (ssh)."""
    parser = OneLineParser(
        prog="fan-profile",
        description="Latency of an exported artifact on a real device, as a fan-bench row (docs/profile.md). "
        "Exit 0 when timed, 1 when the artifact failed there, 3 when the device asked for is absent there.",
    )
    debug_arg(parser)
    sub = parser.add_subparsers(metavar="{adb,ssh}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=threads_arg, metavar="N",
                       help=f"inference threads (1..{MAX_THREADS}; default: the runtime's own)")
        p.add_argument("--runs", type=int, default=100, metavar="N", help="timed runs (default 100)")
        p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs first (default 10)")
        p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="limit for each step in seconds (default 600)")
        out = p.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help='print {"rows": [ROW]} as fan-bench --json does')
        out.add_argument("--csv", action="store_true", help="print a header line and the row (fan-bench's columns first)")

    p = sub.add_parser("adb", help="an Android device over adb, timed by LiteRT's benchmark_model")
    p.add_argument("artifact", help=".tflite exported by fan-export (its .json sidecar, if present, names the row)")
    p.add_argument("--benchmark-binary", required=True, metavar="PATH",
                   help="benchmark_model built for the device (e.g. LiteRT's android_arm64 benchmark_model); pushed with the model")
    p.add_argument("--serial", help="device serial (required when several are attached; see adb devices)")
    p.add_argument("--xnnpack", action=argparse.BooleanOptionalAction, default=None,
                   help="force the XNNPACK CPU delegate on or off (default: the tool's own choice)")
    p.add_argument("--gpu", action="store_true", help="GPU delegate (--use_gpu=true)")
    p.add_argument("--nnapi", action="store_true", help="NNAPI delegate (--use_nnapi=true)")
    p.add_argument("--op-profiling", action="store_true", help="--enable_op_profiling=true (per-op table in --log; slows every run)")
    p.add_argument("--no-peak-memory", action="store_true", help="do not pass --report_peak_memory_footprint=true")
    p.add_argument("--benchmark-arg", action="append", default=[], metavar="FLAG", help="extra benchmark_model flag, e.g. --benchmark-arg=--use_npu=true (repeatable)")
    p.add_argument("--taskset", metavar="MASK", help="pin benchmark_model to these cores (device taskset mask, e.g. f0)")
    p.add_argument("--adb", default="adb", metavar="PATH", help="adb executable (default: adb on PATH)")
    p.add_argument("--remote-dir", default="/data/local/tmp", help="device folder for the pushed files (default /data/local/tmp)")
    p.add_argument("--keep", action="store_true", help="leave the pushed binary and model on the device")
    p.add_argument("--log", metavar="FILE", help="save benchmark_model's full output here")
    common(p)

    def adb_handler(args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..bench.profile import AdbOptions, profile_adb

        options = AdbOptions(serial=args.serial, threads=args.threads, xnnpack=args.xnnpack, gpu=args.gpu, nnapi=args.nnapi,
                             runs=args.runs, warmup=args.warmup, peak_memory=not args.no_peak_memory, op_profiling=args.op_profiling,
                             extra_args=tuple(args.benchmark_arg), taskset=args.taskset, remote_dir=args.remote_dir, adb=args.adb, timeout_s=args.timeout,
                             keep=args.keep, log=Path(args.log) if args.log else None)
        return print_profile(profile_adb(args.artifact, args.benchmark_binary, options), args)

    p.set_defaults(handler=adb_handler)

    p = sub.add_parser("ssh", help="a Linux edge box over ssh, timed there by python -m fan_edge.ondevice.bench")
    p.add_argument("artifact", help=".onnx, .xml (with its .bin) or .tflite exported by fan-export; copied with its .json sidecar")
    p.add_argument("--host", required=True, help="[user@]host, or a Host alias of your ssh config")
    p.add_argument("--port", type=int, help="ssh port (default: ssh's own, i.e. 22 or your config)")
    p.add_argument("--user", help="remote user (default: from --host, your ssh config, or your login)")
    p.add_argument("--identity", metavar="KEY", help="private key file (ssh -i)")
    p.add_argument("--ssh-config", metavar="FILE", help="ssh config file (ssh -F; default ~/.ssh/config)")
    p.add_argument("-o", "--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="extra ssh/scp option (repeatable)")
    p.add_argument("--connect-timeout", type=int, default=10, metavar="S", help="ssh ConnectTimeout (default 10)")
    p.add_argument("--python", default="python3", help="remote interpreter with fan-edge installed (default python3; a shell word, e.g. ~/venv/bin/python)")
    p.add_argument("--backend", default="auto", help="auto (by suffix), onnxruntime, openvino or litert")
    p.add_argument("--device", default="auto", help="auto or cpu, gpu, npu (as the remote runtime names them)")
    common(p)

    def ssh_handler(args: argparse.Namespace) -> int:
        from ..bench.profile import SshOptions, profile_ssh

        options = SshOptions(host=args.host, port=args.port, user=args.user, identity=args.identity, ssh_config=args.ssh_config,
                             ssh_options=tuple(args.ssh_option), python=args.python, backend=args.backend, device=args.device,
                             threads=args.threads, runs=args.runs, warmup=args.warmup, connect_timeout_s=args.connect_timeout,
                             timeout_s=args.timeout)
        return print_profile(profile_ssh(args.artifact, options), args)

    p.set_defaults(handler=ssh_handler)
    return parser


def print_profile(row: dict[str, Any], args: argparse.Namespace) -> int:
    """Print one fan-profile row as asked; the exit status follows fan_edge.ondevice.bench (0 timed, 1 failed, 3 device absent)."""
    from ..bench.profile import ordered_row
    from ..bench.profile.output import format_row
    from ..rows import Status

    row = ordered_row(row)
    print(format_row(row, "json" if args.json else "csv" if args.csv else "table"))
    return 0 if row["status"] == Status.PASSED else 3 if row["status"] == Status.DEVICE_ABSENT else 1


def profile_main(argv: Sequence[str] | None = None) -> int:
    return run_built("fan-profile", build_parser, argv)
