"""The Pareto plot of fan-bench: error against latency, one point per row, the front drawn.

A point is on the front when no other row is both faster (p50) and more
accurate. The y axis is NME inter-ocular; without data (latency-only runs) it
is the artifact size, the other thing an edge deployment trades for speed.
matplotlib (the ``bench`` extra), with the Agg backend: no display needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import BenchError
from ..runtime.bench import STATUS_FAILED_ACCURACY


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point beats on both coordinates (both minimised), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _label_lifts(xy: Sequence[tuple[float, float]]) -> list[int]:
    """How many label heights to lift each point's label so that neighbours (e.g. fp32 rows of equal NME) stay legible."""
    ys = [y for _, y in xy]
    span = (max(ys) - min(ys)) or 1.0
    lifts: list[int] = []
    for i, (x, y) in enumerate(xy):
        near = [j for j in range(i) if abs(math.log10(xy[j][0] / x)) < 0.15 and abs(xy[j][1] - y) < 0.04 * span]
        lifts.append(max((lifts[j] for j in near), default=-1) + 1)
    return lifts


def is_estimate(row: dict[str, Any]) -> bool:
    """Whether the row's latency is an estimate (an NPU compiler's), not a timing."""
    return "estimate" in str(row.get("latency_source") or "")


def _label(row: dict[str, Any], several_models: bool) -> str:
    text = f"{row['target']}:{row['precision']}" + ("" if row.get("device") in (None, "cpu") else f"@{row['device']}")
    return f"{row['model']} {text}" if several_models else text


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Write the PNG; rows without a latency (failed, device absent) are left out."""
    try:
        import matplotlib
    except ImportError:
        raise BenchError("the Pareto plot needs matplotlib: pip install 'fan-edge[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    use_nme = any(isinstance(r.get("nme_io"), (int, float)) for r in rows)
    y_key, y_label = ("nme_io", "NME inter-ocular (%)") if use_nme else ("size_mb", "artifact size (MB)")
    shown = [r for r in rows if isinstance(r.get("latency_ms_p50"), (int, float)) and isinstance(r.get(y_key), (int, float))]
    if not shown:
        raise BenchError("nothing to plot: no row has both a latency and " + ("an NME" if use_nme else "a size"))
    several = len({r["model"] for r in shown}) > 1
    xy = [(float(r["latency_ms_p50"]), float(r[y_key])) for r in shown]
    # An estimated latency (Vela's, of another chip) is not a timing on this machine: shown, never on the front.
    measured = [i for i, r in enumerate(shown) if not is_estimate(r)]
    front = [measured[j] for j in pareto_front([xy[i] for i in measured])]

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    lifts = _label_lifts(xy)
    for i, (r, (x, y)) in enumerate(zip(shown, xy)):
        failed = r.get("status") == STATUS_FAILED_ACCURACY
        torch_row = r.get("target") == "torch"
        ax.scatter(
            [x],
            [y],
            s=60 if i in front else 40,
            marker="s" if torch_row else ("^" if is_estimate(r) else "o"),
            facecolors="none" if failed else ("tab:red" if i in front else "tab:blue"),
            edgecolors="tab:red" if i in front else "tab:blue",
            zorder=3,
        )
        ax.annotate(
            _label(r, several) + (" (failed acc.)" if failed else "") + (" (estimated)" if is_estimate(r) else ""),
            (x, y),
            textcoords="offset points",
            xytext=(5, 4 + 9 * lifts[i]),
            fontsize=7,
        )
    fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
    ax.step(fx, fy, where="post", color="tab:red", linewidth=1.2, label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("latency p50 (ms, batch 1, log scale)")
    ax.set_ylabel(y_label)
    ax.set_title(title or ("accuracy against latency" if use_nme else "size against latency (no data: latency only)"))
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    def key(marker: str, text: str, filled: bool = True) -> Line2D:
        return Line2D([], [], marker=marker, linestyle="none", color="tab:blue", markerfacecolor="tab:blue" if filled else "none", label=text)

    handles, _ = ax.get_legend_handles_labels()
    handles += [key("s", "PyTorch eager, timed here"), key("o", "artifact, timed here")]
    if any(is_estimate(r) for r in shown):
        handles.append(key("^", "NPU, latency estimated by its compiler"))
    if any(r.get("status") == STATUS_FAILED_ACCURACY for r in shown):
        handles.append(key("o", "failed the accuracy tolerance", filled=False))
    ax.legend(handles=handles, loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
