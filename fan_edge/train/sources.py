"""Training data as several sources: ground-truth folders and teacher-labelled ones, each with its weight.

A source's weight is how many times each of its faces is drawn per epoch (a
fraction draws a seeded share of them), so a small hand-annotated set can
count as much as a large teacher-labelled one without copying files. A
folder written by ``fan-edge label`` also carries each face's teacher
disagreement, and ``max_label_disagreement`` leaves out the faces above it.
Every draw is a function of ``(seed, epoch)``, so resuming to the batch holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import AugmentSpec
from ..data.dataset import FaceFolder
from ..errors import ConfigError, DataError
from ..files.labels import read_label_job
from ..models.fan import FAN
from .spec import TrainSpec


@dataclass
class SourceInfo:
    """What a model card says about one training source."""

    folder: str
    faces: int
    weight: float
    kind: str  # "ground truth" or "teacher labels"
    teachers: list[str] = field(default_factory=list)
    left_out: int = 0
    max_label_disagreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}

    def describe(self) -> str:
        text = f"{self.folder}: {self.faces} faces ({self.kind}"
        if self.teachers:
            text += f" by {' + '.join(self.teachers)}"
        if self.max_label_disagreement is not None:
            text += f"; {self.left_out} left out above {self.max_label_disagreement:g}% teacher disagreement"
        return text + f"), drawn {self.weight:g}x per epoch"


class ConcatFaces(torch.utils.data.Dataset):
    """Several face folders as one dataset, sharing epoch and seed.

    Index ``d * len(self) + i`` is draw ``d`` of face ``i`` (see :func:`epoch_pool`).
    """

    def __init__(self, parts: list[FaceFolder], weights: list[float] | None = None,
                 sources: list[SourceInfo] | None = None) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.weights = list(weights) if weights is not None else [1.0] * len(parts)
        self.sources = sources or []

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        draw, flat = divmod(int(index), len(self))
        part = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        local = flat - int(self.offsets[part])
        sample = self.parts[part][draw * len(self.parts[part]) + local]
        sample["index"] = np.int64(flat)
        return sample


def epoch_pool(dataset: ConcatFaces, seed: int, epoch: int) -> np.ndarray:
    """The indices drawn in one epoch: each source's faces ``weight`` times (a fraction: a seeded share of them)."""
    pool: list[np.ndarray] = []
    total = len(dataset)
    for k, (part, weight) in enumerate(zip(dataset.parts, dataset.weights)):
        n, start = len(part), int(dataset.offsets[k])
        faces = np.arange(start, start + n)
        whole, share = divmod(weight, 1.0)
        for d in range(int(whole)):
            pool.append(faces + d * total)
        extra = int(round(share * n))
        if extra:
            rng = np.random.default_rng([seed, epoch, 104729, k])
            pool.append(rng.choice(faces, extra, replace=False) + int(whole) * total)
    return np.concatenate(pool) if pool else np.zeros(0, np.int64)


def label_filter(folder: FaceFolder, root: Path, max_disagreement: float | None) -> SourceInfo:
    """Describe a source; for a ``fan-edge label`` folder, drop faces whose teachers disagree above the limit."""
    job = read_label_job(root)
    if job is None:
        return SourceInfo(str(root), len(folder), 1.0, "ground truth")
    settings, records = job
    teachers = [str(t) for t in settings.get("teachers", [])]
    info = SourceInfo(str(root), len(folder), 1.0, "teacher labels", teachers)
    if max_disagreement is None:
        return info
    keep = []
    for i, item in enumerate(folder.items):
        record = records.get(item.pts.relative_to(root).as_posix()) if item.pts is not None else None
        spread = record.get("disagreement") if record else None
        if not isinstance(spread, (int, float)) or spread <= max_disagreement:
            keep.append(i)  # a face the job has no record of (added by hand) is ground truth to it
    info.left_out = len(folder) - len(keep)
    info.max_label_disagreement = max_disagreement
    if not keep:
        raise DataError(f"{root}: every face is above --max-label-disagreement {max_disagreement:g}")
    folder.select(keep)
    info.faces = len(folder)
    return info


def build_datasets(spec: TrainSpec, model: FAN, require_points: bool, teacher_size: int | None = None) -> ConcatFaces:
    """The spec's ``--data`` folders as one dataset, with their weights and quality filter applied."""
    if not spec.data:
        raise DataError("no training data: give at least one --data folder")
    weights = list(spec.data_weights) or [1.0] * len(spec.data)
    if len(weights) != len(spec.data):
        raise ConfigError(f"{len(weights)} --data-weight for {len(spec.data)} --data folders: give one per folder, in order")
    if any(not np.isfinite(w) or w <= 0 or w > 100 for w in weights):
        raise ConfigError("--data-weight must be in (0, 100]: how many times each face of that folder is drawn per epoch")
    if spec.max_label_disagreement is not None and not 0 < spec.max_label_disagreement < 1000:
        raise ConfigError("--max-label-disagreement is an NME io in percent, above 0")
    augment = AugmentSpec(
        flip=spec.flip,
        rotation=spec.rotation,
        scale=(spec.scale_min, spec.scale_max),
        shift=spec.shift,
        color=spec.color,
        occlusion=spec.occlusion,
    )
    parts, sources = [], []
    for d, w in zip(spec.data, weights):
        part = FaceFolder(d, model.config.input_size, model.weights.crop, augment, spec.sigma, spec.seed,
                          require_points=require_points, teacher_size=teacher_size,
                          heatmap_size=model.config.heatmap_size)
        info = label_filter(part, Path(d), spec.max_label_disagreement)
        info.weight = w
        parts.append(part)
        sources.append(info)
    return ConcatFaces(parts, weights, sources)
