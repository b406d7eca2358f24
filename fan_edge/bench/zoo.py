"""Bundling a trained checkpoint into the zoo, with figures measured here and now.

A zoo card's figures are never copied from training logs: ``bundle`` re-reads
the weights, evaluates them on the given folder with the project's own
evaluation, times them, and writes weights and card into the package.
"""

from __future__ import annotations

import json
import platform
from importlib import resources
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import ConfigError
from ..models import count_macs, count_parameters, create_model, read_checkpoint, save_checkpoint
from ..models.registry import WEIGHTS_PACKAGE, _NAME
from .evaluate import evaluate_model
from .latency import torch_latency


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_card(checkpoint: str | Path, data: str | Path, threads: int = 2) -> dict[str, Any]:
    """Parameters, MACs, accuracy on ``data`` and CPU latency of a checkpoint."""
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


def bundle(checkpoint: str | Path, name: str, data: str | Path, default: bool = False, description: str = "") -> Path:
    """Copy ``checkpoint`` into the package as zoo model ``name`` with a freshly measured card."""
    if _NAME.fullmatch(name) or name == "default":
        raise ConfigError(f"zoo name {name!r} would shadow a registry variant; pick another (e.g. add a suffix)")
    source = read_checkpoint(checkpoint)
    measured = measure_card(checkpoint, data)
    folder = Path(str(resources.files(WEIGHTS_PACKAGE)))
    card = {k: v for k, v in source.card.items() if k not in ("figures", "parameters", "macs")}
    card.update(measured)
    card.update(name=name, description=description or card.get("description", ""), default=default)
    if default:
        for other in folder.glob("*.json"):
            data_ = json.loads(other.read_text())
            if data_.get("default") and other.stem != name:
                data_["default"] = False
                write_text_atomic(other, json.dumps(data_, indent=2, sort_keys=True) + "\n")
    card.pop("config", None)
    return save_checkpoint(create_model(checkpoint), folder / f"{name}.safetensors", card)
