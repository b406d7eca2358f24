"""The registry as a table (``fan-edge models``): Table 5 of the paper, measured.

Parameters and MACs of every registry entry, from its card or in closed form
from its config (no torch); accuracy and latency from the cards of trained zoo
models (written by :func:`fan_edge.models.bundle.bundle`). Zoo models whose
card cannot be read are listed as unavailable, with the reason.
"""

from __future__ import annotations

from typing import Any

from .complexity import entry_complexity
from .config import FANConfig
from .pretrained import CONFIG_METADATA_KEY, WEIGHTS_METADATA_KEY, Weights, split_config
from .storage import network_keys


def fan_edge_file_summary(path: str) -> tuple[FANConfig, Weights] | None:
    """The architecture and weights record of a fan-edge ``.safetensors`` file from its header alone, without torch;
    None for any other file, or one whose tensors do not add up to its config (the full reader then says why).

    Its header's shapes must hold exactly the values its config implies (:attr:`FANConfig.num_values`), so a file
    whose metadata disagrees with its tensors is never summarised from the metadata.
    """
    import json
    import math

    try:
        from safetensors import safe_open
    except ImportError:  # a runtime-only install: the full reader decides
        return None
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            if CONFIG_METADATA_KEY not in metadata or WEIGHTS_METADATA_KEY not in metadata:
                return None
            values = sum(math.prod(f.get_slice(k).get_shape()) for k in network_keys(f.keys()))
        config, _ = split_config(json.loads(metadata[CONFIG_METADATA_KEY]))
        weights = Weights.from_preprocessing(json.loads(metadata[WEIGHTS_METADATA_KEY]), file=path)
    except Exception:  # noqa: BLE001 - anything unexpected: the full, checked reader reports it in one line
        return None
    return (config, weights) if values == config.num_values else None


def model_summary(name: str, trust: bool = False) -> dict[str, Any]:
    """Variant, architecture, parameters and MACs, and the crop and refinement of its weights (``fan-edge info``).

    A registry name is answered from its model card and config alone (counts in closed form,
    :func:`fan_edge.models.complexity.entry_complexity`; crop and refinement from its weights record): no torch, no
    forward pass. A checkpoint is read and built.
    """
    from .complexity import config_macs, config_parameters
    from .factory import is_checkpoint_path
    from .registry import get_entry

    described = fan_edge_file_summary(name) if is_checkpoint_path(name) else None
    if described is not None:
        cfg, weights = described
        trained, parameters, macs = True, config_parameters(cfg), config_macs(cfg)
    elif is_checkpoint_path(name):
        from . import count_parameters, create_model

        model = create_model(name, trust=trust)
        cfg, trained, weights = model.config, True, model.weights
        parameters, macs = count_parameters(model), config_macs(cfg, exit_stack=model.exit_stack)
    else:
        entry = get_entry(name)
        cfg, trained, weights = entry.config, entry.trained, entry.weights_record()
        parameters, macs = entry_complexity(entry)
    return {
        "model": name,
        "stacks": cfg.stacks,
        "width": cfg.width,
        "input_size": cfg.input_size,
        "heatmap_size": cfg.heatmap_size,
        "num_landmarks": cfg.num_landmarks,
        "parameters": parameters,
        "macs": macs,
        "trained": trained,
        "crop": weights.crop.to_dict(),
        "refine": weights.refine,
    }


def zoo_rows() -> list[dict[str, Any]]:
    """One row per registry entry: parameters and MACs from its card, or in closed form from its config
    (:func:`fan_edge.models.complexity.entry_complexity`, no forward pass, no torch); figures from its card (if
    trained). Then one row per unavailable zoo model (``available`` false, the reason as its description)."""
    from .registry import get_entry, list_models, unavailable_models

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
                "figures": figures if isinstance(figures, dict) else {},
            }
        )
    for name, reason in unavailable_models().items():
        rows.append(
            {
                "model": name, "stacks": None, "width": None, "input_size": None, "parameters": None, "macs": None,
                "trained": False, "available": False, "description": f"unavailable: {reason}", "figures": {},
            }
        )
    return rows


def _count(value: Any, text: Any) -> str:
    return "-" if value is None else text(value)


_COLUMNS = [
    ("model", "model", lambda r: r["model"]),
    ("stacks", "stacks", lambda r: _count(r["stacks"], str)),
    ("width", "width", lambda r: _count(r["width"], str)),
    ("input", "input", lambda r: _count(r["input_size"], str)),
    ("params", "params (M)", lambda r: _count(r["parameters"], lambda v: f"{v / 1e6:.2f}")),
    ("gmacs", "GMACs", lambda r: _count(r["macs"], lambda v: f"{v / 1e9:.3f}")),
    ("nme_io", "NME io %", lambda r: _fig(r, "nme_io", 2)),
    ("nme_box", "NME box %", lambda r: _fig(r, "nme_box", 2)),
    ("auc7", "AUC@7 %", lambda r: _fig(r, "auc7", 1)),
    ("fr7", "FR@7 %", lambda r: _fig(r, "fr7", 2)),
    ("ms", "torch CPU ms", lambda r: _fig(r, "torch_cpu_ms_p50", 1)),
]


def _fig(row: dict[str, Any], key: str, digits: int) -> str:
    value = row["figures"].get(key)
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _notes(row: dict[str, Any]) -> str:
    if row.get("available", True) is False or row["trained"]:
        return row["description"]
    return "untrained; " + row["description"]


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """Table 5 of the paper, measured: architecture against accuracy and latency."""
    cells = [[fn(r) for _, _, fn in _COLUMNS] + [_notes(r)] for r in rows]
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
