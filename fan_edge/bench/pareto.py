"""The Pareto plot of fan-bench: error against latency, one point per row, the front drawn.

A point is on the front when no other row is both faster (p50) and more
accurate. The y axis is NME inter-ocular; without data (latency-only runs) it
is the artifact size, the other thing an edge deployment trades for speed.
Every point is labelled with its model and target (``fan2-w64-i128-300w
onnxruntime:int8``), and the legend says what each marker and colour means
(:data:`LEGEND`). matplotlib (the ``bench`` extra), with the Agg backend: no
display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import BenchError
from ..rows import BenchRow, Status

FRONT_COLOUR, OTHER_COLOUR = "tab:red", "tab:blue"
# What the plot's markers and colours mean, as its legend says (the keys of the entries a plot can show).
LEGEND = {
    "front": "red: on the Pareto front (no row both faster and more accurate)",
    "behind": "blue: behind the front (another row is faster and more accurate)",
    "torch": "square: PyTorch eager, timed here",
    "artifact": "circle: exported artifact, timed here",
    "estimate": "triangle: NPU, latency estimated by its compiler (never on the front)",
    "failed": "hollow: failed the accuracy tolerance",
}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point beats on both coordinates (both minimised), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _unoverlap(fig: Any, labels: Sequence[Any], xy: Sequence[tuple[float, float]], step: float = 9.0) -> None:
    """Lift labels (matplotlib annotations, offset in points) until none overlaps another, left to right: neighbours
    such as fp32 rows of equal NME stay legible. Measured with the renderer, so long model names are accounted for."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for i in sorted(range(len(labels)), key=lambda k: xy[k]):
        label = labels[i]
        x_off, y_off = label.xyann
        for lift in range(len(labels) + 1):
            label.xyann = (x_off, y_off + step * lift)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(box)


def is_estimate(row: BenchRow) -> bool:
    """Whether the row's latency is an estimate (an NPU compiler's), not a timing."""
    return "estimate" in str(row.latency_source or "")


def model_name(row: BenchRow) -> str:
    """The row's model as a point's label names it: a registry name as it is, a file by its name."""
    model = str(row.model or "?")
    return Path(model).name if "/" in model or "\\" in model else model


def point_label(row: BenchRow) -> str:
    """A point's label: model and target, e.g. ``fan2-w64-i128-300w onnxruntime:int8`` (``@npu`` off the CPU)."""
    text = f"{row.target}:{row.precision}" + ("" if row.device in (None, "cpu") else f"@{row.device}")
    return f"{model_name(row)} {text}"


def legend_keys(rows: Sequence[BenchRow], front: Sequence[int]) -> list[str]:
    """The :data:`LEGEND` entries that the plotted ``rows`` (``front``: indices on the front) need, in order."""
    keys = ["front"] + (["behind"] if len(front) < len(rows) else [])
    keys += ["torch"] if any(r.target == "torch" for r in rows) else []
    keys += ["artifact"] if any(r.target != "torch" and not is_estimate(r) for r in rows) else []
    keys += ["estimate"] if any(is_estimate(r) for r in rows) else []
    keys += ["failed"] if any(r.status is Status.FAILED_ACCURACY for r in rows) else []
    return keys


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_pareto(rows: Sequence[BenchRow | Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Write the PNG; rows without a latency (failed, device absent) are left out. A row may be a
    :class:`~fan_edge.rows.BenchRow` or its JSON object (read back from fan-bench's file)."""
    try:
        import matplotlib
    except ImportError:
        raise BenchError("the Pareto plot needs matplotlib: pip install 'fan-edge[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = [BenchRow.from_dict(r) for r in rows]
    use_nme = any(_number(r.nme_io) for r in rows)
    y_label = "NME inter-ocular (%)" if use_nme else "artifact size (MB)"
    y_of = (lambda r: r.nme_io) if use_nme else (lambda r: r.size_mb)
    shown = [r for r in rows if _number(r.latency_ms_p50) and _number(y_of(r))]
    if not shown:
        raise BenchError("nothing to plot: no row has both a latency and " + ("an NME" if use_nme else "a size"))
    xy = [(float(r.latency_ms_p50), float(y_of(r))) for r in shown]  # type: ignore[arg-type]
    # An estimated latency (Vela's, of another chip) is not a timing on this machine: shown, never on the front.
    measured = [i for i, r in enumerate(shown) if not is_estimate(r)]
    front = [measured[j] for j in pareto_front([xy[i] for i in measured])]

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    texts = [point_label(r) + (" (failed acc.)" if r.status is Status.FAILED_ACCURACY else "")
             + (" (estimated)" if is_estimate(r) else "") for r in shown]
    labels = []
    for i, (r, (x, y)) in enumerate(zip(shown, xy)):
        failed = r.status is Status.FAILED_ACCURACY
        torch_row = r.target == "torch"
        ax.scatter(
            [x],
            [y],
            s=60 if i in front else 40,
            marker="s" if torch_row else ("^" if is_estimate(r) else "o"),
            facecolors="none" if failed else (FRONT_COLOUR if i in front else OTHER_COLOUR),
            edgecolors=FRONT_COLOUR if i in front else OTHER_COLOUR,
            zorder=3,
        )
        labels.append(ax.annotate(texts[i], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7))
    fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
    ax.step(fx, fy, where="post", color=FRONT_COLOUR, linewidth=1.2, label="Pareto front (line)", zorder=2)
    ax.set_xscale("log")
    xs = [x for x, _ in xy]
    ax.set_xlim(min(xs) / 1.5, max(xs) * 4.0)  # room on the right for the labels of the slowest points
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("latency p50 (ms, batch 1, log scale)")
    ax.set_ylabel(y_label)
    ax.set_title(title or ("accuracy against latency" if use_nme else "size against latency (no data: latency only)"))
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    # One entry per marker and colour the plot shows, in words (a legend of shapes alone says nothing).
    styles = {"front": ("o", FRONT_COLOUR, True), "behind": ("o", OTHER_COLOUR, True), "torch": ("s", "grey", True),
              "artifact": ("o", "grey", True), "estimate": ("^", "grey", True), "failed": ("o", "grey", False)}
    handles, _ = ax.get_legend_handles_labels()
    for k in legend_keys(shown, front):
        marker, colour, filled = styles[k]
        handles.append(Line2D([], [], marker=marker, linestyle="none", color=colour, markerfacecolor=colour if filled else "none",
                              label=LEGEND[k]))
    # Below the axes, where it hides no point.
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7, title="markers",
              title_fontsize=7, frameon=False)
    fig.tight_layout()
    _unoverlap(fig, labels, xy)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)
