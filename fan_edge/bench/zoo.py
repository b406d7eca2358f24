"""Bundling a trained checkpoint into the zoo, with figures measured here and now.

A zoo card's figures are never copied from training logs: ``bundle`` re-reads
the weights, evaluates them on the given folder with the project's own
evaluation, times them, and writes weights and card into the package.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import ConfigError
from ..models.complexity import entry_complexity
from ..models.registry import ARCHITECTURE_NAME, WEIGHTS_PACKAGE

# Torch (the model, the evaluation, the timing) is imported by the functions that measure: ``fan-edge models`` reads
# cards and counts in closed form, and starts without it.


def measure_card(checkpoint: str | Path, data: str | Path, threads: int = 2) -> dict[str, Any]:
    """Parameters, MACs, accuracy on ``data`` and CPU latency of a checkpoint."""
    from ..models import count_macs, count_parameters, create_model
    from ..runtime.cpu import cpu_name
    from .evaluate import evaluate_model
    from .latency import torch_latency

    model = create_model(checkpoint)
    evaluation = evaluate_model(model, data)
    latency = torch_latency(model, model.config.input_size, threads=threads)
    figures = {k: round(v, 3) for k, v in evaluation.scores.as_percent().items()}
    figures.update(
        data=str(Path(data).name),
        boxes="ground-truth landmark boxes",
        torch_cpu_ms_p50=round(latency.p50_ms, 2),
        torch_cpu_ms_p90=round(latency.p90_ms, 2),
        threads=threads,
        cpu=cpu_name(),
    )
    return {
        "parameters": count_parameters(model),
        "macs": count_macs(model, model.config.input_size),
        "figures": figures,
    }


def bundle(
    checkpoint: str | Path,
    name: str,
    data: str | Path,
    default: bool = False,
    description: str = "",
    folder: str | Path | None = None,
    notes: str = "",
    recipe: str = "",
) -> Path:
    """Copy ``checkpoint`` into the package (or ``folder``) as zoo model ``name`` with a freshly measured card."""
    if ARCHITECTURE_NAME.fullmatch(name) or name == "default":
        raise ConfigError(f"zoo name {name!r} would shadow a registry variant; pick another (e.g. add a suffix)")
    from ..models import create_model, read_checkpoint, save_checkpoint

    source = read_checkpoint(checkpoint)
    measured = measure_card(checkpoint, data)
    folder = Path(folder) if folder is not None else Path(str(resources.files(WEIGHTS_PACKAGE)))
    card = {k: v for k, v in source.card.items() if k not in ("figures", "parameters", "macs")}
    card.update(measured)
    card.update(name=name, description=description or card.get("description", ""), default=default)
    if notes:
        card["notes"] = notes
    if recipe:  # a multi-stage run: the whole chain, so that the card's command starts from scratch
        card["recipe"] = recipe
    if default:
        for other in folder.glob("*.json"):
            data_ = json.loads(other.read_text())
            if data_.get("default") and other.stem != name:
                data_["default"] = False
                write_text_atomic(other, json.dumps(data_, indent=2, sort_keys=True) + "\n")
    card.pop("config", None)
    return save_checkpoint(create_model(checkpoint), folder / f"{name}.safetensors", card)


def zoo_rows() -> list[dict[str, Any]]:
    """One row per registry entry: parameters and MACs from its card, or in closed form from its config
    (:func:`fan_edge.models.complexity.entry_complexity`, no forward pass, no torch); figures from its card (if trained)."""
    from ..models.registry import get_entry, list_models

    rows = []
    for name in list_models():
        entry = get_entry(name)
        parameters, macs = entry_complexity(entry)
        figures = entry.card().get("figures", {})
        rows.append(
            {
                "model": name,
                "stacks": entry.config.stacks,
                "width": entry.config.layout.trunk,  # a channel-pruned model's trunk, not the width it was cut from
                "input_size": entry.config.input_size,
                "parameters": parameters,
                "macs": macs,
                "trained": entry.trained,
                "description": entry.description,
                "figures": figures,
            }
        )
    return rows


_COLUMNS = [
    ("model", "model", lambda r: r["model"]),
    ("stacks", "stacks", lambda r: str(r["stacks"])),
    ("width", "width", lambda r: str(r["width"])),
    ("input", "input", lambda r: str(r["input_size"])),
    ("params", "params (M)", lambda r: f"{r['parameters'] / 1e6:.2f}"),
    ("gmacs", "GMACs", lambda r: f"{r['macs'] / 1e9:.3f}"),
    ("nme_io", "NME io %", lambda r: _fig(r, "nme_io", 2)),
    ("nme_box", "NME box %", lambda r: _fig(r, "nme_box", 2)),
    ("auc7", "AUC@7 %", lambda r: _fig(r, "auc7", 1)),
    ("fr7", "FR@7 %", lambda r: _fig(r, "fr7", 2)),
    ("ms", "torch CPU ms", lambda r: _fig(r, "torch_cpu_ms_p50", 1)),
]


def _fig(row: dict[str, Any], key: str, digits: int) -> str:
    value = row["figures"].get(key)
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """Table 5 of the paper, measured: architecture against accuracy and latency."""
    cells = [[fn(r) for _, _, fn in _COLUMNS] + [("" if r["trained"] else "untrained; ") + r["description"]] for r in rows]
    header = [title for _, title, _ in _COLUMNS] + ["notes"]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header[:-1])]
    fmt = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    lines = [fmt(header[:-1]) + "  notes", "-" * (sum(widths) + 2 * len(widths) + 5)]
    lines += [fmt(c[:-1]) + "  " + c[-1] for c in cells]
    return "\n".join(lines)
