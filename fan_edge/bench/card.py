"""The measured part of a zoo model's card: parameters, MACs, accuracy on held-out faces and CPU latency.

Measured afresh at bundling (``fan-edge bundle``), never copied from a
training log; :func:`fan_edge.models.bundle.bundle` writes it into the card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def measure_card(checkpoint: str | Path, data: str | Path, threads: int = 2) -> dict[str, Any]:
    """Parameters, MACs, accuracy on ``data`` and CPU latency of a checkpoint."""
    from ..evaluation import evaluate_model
    from .latency import torch_latency
    from ..runtime.cpu import cpu_label
    from ..models import count_macs, count_parameters, create_model

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
        cpu=cpu_label(),  # name and int8 instruction sets: latency and int8 kernels differ between them
    )
    return {
        "parameters": count_parameters(model),
        "macs": count_macs(model, model.config.input_size),
        "figures": figures,
    }
