"""What a target's export function receives: the model, the options, the contract, a staging area."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..calibration import FaceCrops
from ..runtime.contract import ModelContract
from .int8 import Int8Recipe
from .staging import Staging


@dataclass
class ExportJob:
    """One artifact to produce.

    A target function ``export_X(job) -> list[Path]`` writes its files with
    ``job.staging.path(final)`` (never to the final names), embeds
    ``job.contract`` in the format's own metadata, and returns the final
    paths in commit order, main artifact last-but-sidecar (OpenVINO: ``.bin``
    then ``.xml``). A target may refine the contract by replacing
    ``job.contract`` (TFLite: ``layout="NHWC"`` and its I/O quantization)
    before embedding it; the orchestrator writes that one to the sidecar,
    then commits. A folder artifact (``.mlpackage``) is written whole at
    ``job.staging.path(final)`` and committed as one folder.
    ``shared`` is a cache shared by the jobs of one export call (e.g. the
    fp32 ONNX graph that several targets start from).
    """

    model: Any  # fan_edge.models.FAN, in eval mode
    target: str
    precision: str
    outputs: str
    output: Path  # the main artifact's final path
    contract: ModelContract
    staging: Staging
    calibration: FaceCrops | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    # int8 only: the recipe this target follows (fan_edge.export.int8.Int8Recipe, every choice made: activation bits,
    # per-channel weights, range method, layers kept float, VNNI safety); None: the recipe's defaults.
    int8: Int8Recipe | None = None
    # None: a dynamic batch axis where the target allows one; else that batch, static in every tensor (NPU compilers
    # reject anything else). Targets that are always static (TFLite: 1) refuse another value.
    batch: int | None = None
