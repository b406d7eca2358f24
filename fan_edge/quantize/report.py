"""The compression report: one row per compression step and target, from fan-bench rows.

Steps (:data:`STEPS`): ``float`` (the model as trained, fp32), ``ptq``
(post-training int8 of it), ``qat`` (int8 of its quantization-aware-trained
checkpoint), ``pruned`` (fp32 of a pruned checkpoint), ``pruned+ptq`` and
``pruned+qat``. The report takes fan-bench rows (dicts with
:data:`fan_edge.ondevice.bench.ROW_KEYS`: model, target, precision, size,
NME, AUC@7, FR@7, latency...) from any number of runs, and the model behind
each step (a registry name or checkpoint path, as the rows name it); it adds
the MACs of each model and the ΔNME of every row against the float model
on the same target (and against PyTorch fp32 where the rows have it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..rows import BenchRow

STEPS = ("float", "ptq", "qat", "pruned", "pruned+ptq", "pruned+qat")
# step -> (the model key in ``models`` whose rows it takes, the precision of those rows)
_SOURCES = {
    "float": ("float", "fp32"),
    "ptq": ("float", "int8"),
    "qat": ("qat", "int8"),
    "pruned": ("pruned", "fp32"),
    "pruned+ptq": ("pruned", "int8"),
    "pruned+qat": ("pruned+qat", "int8"),
}
COLUMNS = ("step", "target", "precision", "model", "size_mb", "macs", "nme_io", "delta_nme_io", "auc7", "fr7",
           "latency_ms_p50", "speedup", "status")


def _names(row: Mapping[str, Any], model: str | None) -> bool:
    """Whether a fan-bench row is of ``model`` (rows carry a display name, the artifact or model path, and the
    registry name or checkpoint they were made from, ``source``)."""
    return model is not None and model in (row.get("model"), row.get("path"), row.get("source"))


def read_bench_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The rows of fan-bench JSON files (``{"rows": [...]}``; a bare list is accepted too)."""
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a fan-bench JSON file ({exc})") from None
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: no list of rows (fan-bench --json writes {{\"rows\": [...]}})")
        out += rows
    return out


def _macs(model: str) -> int | None:
    try:
        from ..models import count_macs, create_model

        net = create_model(model)
        return count_macs(net, net.config.input_size)
    except Exception:  # a row may name an artifact or a model this machine cannot build: leave the cell empty
        return None


def compression_rows(rows: Iterable[BenchRow | Mapping[str, Any]], models: Mapping[str, str],
                     macs: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Report rows, in step order then target order; steps whose model is not given are left out.

    ``models``: {"float": ..., "qat": ..., "pruned": ..., "pruned+qat": ...}
    (any subset; "float" is needed for the ΔNME column). ``macs``: MACs by
    model, counted with :func:`fan_edge.models.count_macs` when absent.
    """
    rows = [r.to_dict() if isinstance(r, BenchRow) else dict(r) for r in rows]  # fan-bench's rows, or their JSON objects
    unknown = set(models) - {m for m, _ in _SOURCES.values()}
    if unknown:
        raise ValueError(f"unknown model keys {sorted(unknown)}; expected some of: float, qat, pruned, pruned+qat")
    counted = dict(macs or {})
    reference = {r.get("target"): r.get("nme_io") for r in rows
                 if _names(r, models.get("float")) and r.get("precision") == "fp32" and r.get("nme_io") is not None}
    torch_float = reference.get("torch")
    out = []
    for step in STEPS:
        key, precision = _SOURCES[step]
        model = models.get(key)
        if model is None:
            continue
        if model not in counted:
            counted[model] = _macs(model)
        for r in rows:
            if not _names(r, model) or r.get("precision") != precision:
                continue
            if step.endswith("ptq") and r.get("target") == "torch":
                continue  # PyTorch has no int8 rows of its own; a torch int8 row would be another experiment
            base = reference.get(r.get("target"), torch_float)
            nme = r.get("nme_io")
            out.append({
                "step": step, "target": r.get("target"), "precision": precision, "model": model,
                "size_mb": r.get("size_mb"), "macs": counted[model], "nme_io": nme,
                "delta_nme_io": None if nme is None or base is None else nme - base,
                "auc7": r.get("auc7"), "fr7": r.get("fr7"), "latency_ms_p50": r.get("latency_ms_p50"),
                "latency_ms_p90": r.get("latency_ms_p90"),
                "speedup": r.get("speedup"), "status": r.get("status"),
            })
    return out


def fastest(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The passed row with the lowest median latency, or None.

    Fed every row of the runs (the whole zoo on every target, not only the
    report's models), this is the project's fastest artifact, which the
    pruned+QAT row is meant to be; comparing within one run keeps the machine
    the same."""
    timed = [dict(r) for r in rows if r.get("status") == "passed" and isinstance(r.get("latency_ms_p50"), (int, float))]
    return min(timed, key=lambda r: r["latency_ms_p50"]) if timed else None


def fastest_summary(rows: Iterable[Mapping[str, Any]], report: list[dict[str, Any]]) -> dict[str, Any]:
    """Which artifact of all ``rows`` is fastest, and whether a pruned+QAT row of ``report`` is that artifact.

    A pruned+QAT row whose median is within the fastest row's own 90th
    percentile counts as tied (``tied: true``): the PTQ and QAT int8 artifacts
    of one pruned network are the same graph with other constants, and which
    of the two times lower in a run is noise."""
    rows = list(rows)
    best = fastest(rows)
    best_pq = fastest(r for r in report if r["step"] == "pruned+qat")
    strictly = best is not None and best_pq is not None and best_pq["latency_ms_p50"] <= best["latency_ms_p50"]
    spread = best.get("latency_ms_p90") if best is not None else None
    tied = (not strictly and best_pq is not None and isinstance(spread, (int, float))
            and best_pq["latency_ms_p50"] <= spread)

    def brief(r: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return None if r is None else {k: r.get(k) for k in ("model", "target", "precision", "latency_ms_p50", "latency_ms_p90", "nme_io")}
    return {"rows": len(rows), "fastest": brief(best), "fastest_pruned_qat": brief(best_pq),
            "pruned_qat_is_fastest": strictly or tied, "tied": tied}


def format_fastest(summary: Mapping[str, Any]) -> str:
    """Two lines under the table: the fastest artifact among the rows, and the fastest pruned+QAT one."""
    def line(what: str, r: Mapping[str, Any] | None) -> str:
        if r is None:
            return f"- {what}: none"
        spread = f" (p90 {r['latency_ms_p90']:.2f})" if isinstance(r.get("latency_ms_p90"), (int, float)) else ""
        return f"- {what}: {r['model']} {r['target']} {r['precision']}, p50 {r['latency_ms_p50']:.2f} ms{spread}, NME io {_cell('nme_io', r['nme_io'])}%"
    verdict = "yes" if summary["pruned_qat_is_fastest"] else "no"
    if summary.get("tied"):
        verdict += ", tied: its median is within the fastest artifact's 90th percentile"
    return "\n".join([line(f"fastest passed artifact of the {summary['rows']} bench rows", summary["fastest"]),
                      line("fastest pruned+QAT artifact", summary["fastest_pruned_qat"]),
                      f"- pruned+QAT is the fastest artifact: {verdict}"]) + "\n"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "macs":
        return f"{value / 1e6:.1f}"
    if key == "delta_nme_io":
        return f"{value:+.3f}"
    if key == "speedup":
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.2f}" if key != "nme_io" else f"{value:.3f}"
    return str(value)


def format_markdown(report: list[dict[str, Any]]) -> str:
    """The report as a markdown table (MACs in millions; ΔNME in points against the float model, same target)."""
    titles = {"step": "Step", "target": "Target", "precision": "Precision", "model": "Model", "size_mb": "Size MB",
              "macs": "MMACs", "nme_io": "NME io %", "delta_nme_io": "ΔNME pp", "auc7": "AUC@7 %", "fr7": "FR@7 %",
              "latency_ms_p50": "p50 ms", "speedup": "Speed-up", "status": "Status"}
    lines = ["| " + " | ".join(titles[c] for c in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in COLUMNS) + " |" for r in report]
    return "\n".join(lines) + "\n"


def write_compression_report(bench: Iterable[str | Path], models: Mapping[str, str], out: str | Path) -> tuple[str, list[Path]]:
    """The report of ``fan-quantize --report``: read the fan-bench JSON files ``bench``, build the table and the
    fastest-artifact summary for ``models`` (step -> model, ``float`` required), write ``OUT/compression.json`` and
    ``OUT/compression.md``; returns the markdown text and the two paths."""
    from ..atomic import write_text_atomic
    from ..errors import ConfigError

    bench = list(bench)
    if not bench or "float" not in models:
        raise ConfigError("--report needs --bench JSON (fan-bench rows) and --float MODEL")
    bench_rows = read_bench_rows(bench)
    report = compression_rows(bench_rows, models)
    summary = fastest_summary(bench_rows, report)
    text = format_markdown(report) + "\n" + format_fastest(summary)
    folder = Path(out)
    paths = [folder / "compression.json", folder / "compression.md"]
    write_text_atomic(paths[0], json.dumps({"models": dict(models), "rows": report, "fastest": summary}, indent=2) + "\n")
    write_text_atomic(paths[1], text)
    return text, paths
