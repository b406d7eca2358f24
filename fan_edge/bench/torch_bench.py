"""The PyTorch eager fp32 row's latency and memory, in a process of its own.

::

    python -m fan_edge.bench.torch_bench default --threads 2 --runs 100 --warmup 10 --json

The counterpart of :mod:`fan_edge.ondevice.bench` for the baseline users run
today: it loads the model, times it with :func:`fan_edge.bench.latency.torch_latency`
(eval mode, ``torch.no_grad``, batch 1, ``torch.set_num_threads(threads)``)
and prints one row with the same keys, peak RSS included (torch itself is
part of what that row costs). ``fan-bench`` runs it in a fresh subprocess so
that every row's peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence

from ..errors import FanEdgeError, first_line
from ..limits import MAX_THREADS, threads_arg
from ..rows import BenchRow, Status
from ..ondevice.bench import DeviceAbsent, current_rss_mb, failed_row, peak_rss_mb


def time_torch(
    model: str, threads: int = 2, runs: int = 100, warmup: int = 10, device: str = "cpu", trust: bool = False
) -> BenchRow:
    """One fan-bench row for PyTorch eager fp32 (accuracy and speed-up left null)."""
    base = current_rss_mb()
    import torch

    from ..export.exporter import resolve_model
    from .latency import torch_latency

    if device != "cpu":
        present = device == "gpu" and torch.cuda.is_available()
        # The eager baseline is timed on the CPU; a GPU row would need its own timing path (synchronisation).
        raise DeviceAbsent(f"no {device} device for PyTorch here" if not present else "PyTorch GPU timing is not wired up")
    net, name, _ = resolve_model(model, trust=trust)
    size = net.config.input_size
    latency = torch_latency(net, size, threads=threads, runs=runs, warmup=warmup)
    return BenchRow(
        model=name,
        target="torch",
        precision="fp32",
        device=device,
        status=Status.PASSED,
        # What the eager model weighs: its state dict (weights and BatchNorm statistics) in fp32.
        size_mb=round(sum(t.numel() * t.element_size() for t in net.state_dict().values()) / 1e6, 3),
        latency_ms_p50=round(latency.p50_ms, 3),
        latency_ms_p90=round(latency.p90_ms, 3),
        fps=round(1000.0 / latency.p50_ms, 2) if latency.p50_ms > 0 else None,
        peak_rss_mb=round(peak_rss_mb(), 1),
        base_rss_mb=None if base is None else round(base, 1),
        threads=threads,
        runs=runs,
        warmup=warmup,
        more={
            "batch": 1,
            "input_size": size,
            "latency_ms_samples": [round(t, 4) for t in latency.samples_ms],  # fan-bench pools them over its rounds
            "torch": torch.__version__,
            "host": platform.node(),
            "machine": platform.machine(),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fan_edge.bench.torch_bench", description="PyTorch eager fp32 latency of a model (one fan-bench row)."
    )
    parser.add_argument("model", nargs="?", default="default", help="registry name or checkpoint path")
    parser.add_argument("--threads", type=threads_arg, default=2, help=f"torch threads (1..{MAX_THREADS}; default 2)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu", "npu"))
    parser.add_argument("--trust", action="store_true", help="allow TorchScript archives")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        row, code = time_torch(args.model, args.threads, args.runs, args.warmup, args.device, args.trust), 0
    except DeviceAbsent as exc:
        row, code = (
            failed_row(args.model, str(exc), Status.DEVICE_ABSENT, target="torch", precision="fp32", device=args.device),
            3,
        )
    except FanEdgeError as exc:
        row, code = failed_row(args.model, str(exc), Status.FAILED, target="torch", precision="fp32", device=args.device), 1
    except Exception as exc:  # reported as the row's one-line reason, never a traceback
        row, code = (
            failed_row(
                args.model, first_line(exc, with_type=True), target="torch", precision="fp32", device=args.device
            ),
            1,
        )
    if args.json:
        print(json.dumps(row.to_dict()))
    elif code == 0:
        print(
            f"{row.model} torch fp32: p50 {row.latency_ms_p50:.2f} ms, p90 {row.latency_ms_p90:.2f} ms, peak RSS {row.peak_rss_mb:.0f} MB"
        )
    else:
        print(f"{args.model}: {row.status}: {row.error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
