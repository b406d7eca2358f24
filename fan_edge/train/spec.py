"""Everything that defines a training run, as plain data.

The spec is saved inside every checkpoint and model card: a run resumes with
exactly the settings it started with, and a card can print the command that
reproduces it.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any

from .ema import check_decay
from ..limits import MAX_BATCH_SIZE, MAX_INPUT_SIZE, MAX_WORKERS, check_batch, check_int


@dataclass
class TrainSpec:
    model: str = "default"
    init: str | None = None  # start from this checkpoint's weights (extra stacks copy its last one; narrower ones are widened, deeper hourglasses made shallower)
    data: list[str] = field(default_factory=list)
    data_weights: list[float] = field(default_factory=list)  # per --data folder: draws of each face per epoch
    max_label_disagreement: float | None = None  # leave out teacher-labelled faces above this NME io %
    val: str | None = None
    out: str = "runs/train"
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | rmsprop (the paper's)
    schedule: str = "cosine"  # cosine | step (the paper's)
    step_epochs: int = 30  # step schedule: lr x0.1 every step_epochs
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0
    loss: str = "mse"  # mse (the paper's) | awing (adaptive wing)
    sigma: float = 1.0  # Gaussian target, heatmap cells
    stack_weights: str = "equal"  # equal | last (later stacks weigh more)
    rotation: float = 50.0
    scale_min: float = 0.8
    scale_max: float = 1.2
    shift: float = 0.05
    flip: float = 0.5
    color: float = 0.8
    occlusion: float = 0.3
    input_size: int | None = None
    head_stride: int | None = None
    fine_every_stack: bool = False  # fine heads: train every stack's (early exits) rather than only the last one's  # 2: fine heads, heatmaps at half the input (models/fine_head.py); None: the model's
    reference_scale: float | None = None
    center_shift: float | None = None
    refine: str | None = None
    teacher: str | None = None
    distill_weight: float = 0.5  # share of the loss against the teacher's heatmaps
    seed: int = 0
    ema: float | None = None  # keep an exponential moving average of the weights with this decay (train/ema.py); it is what is validated and saved
    autocast: str | None = None  # "bf16": forward passes in bfloat16 (train/compute.py); weights and loss stay fp32
    workers: int = 1
    device: str = "auto"
    max_minutes: float | None = None  # stop (resumably) after this long
    max_batches: int | None = None  # stop (resumably) after this many batches in this invocation
    checkpoint_minutes: float = 5.0
    val_every: int = 1

    def __post_init__(self) -> None:
        """Refuse sizes that would exhaust the machine before anything runs (a spec also comes from a resumed
        ``last.ckpt``): batch size, input size and data-loading processes within :mod:`fan_edge.limits`."""
        check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.input_size is not None:
            check_int("input_size", self.input_size, 1, MAX_INPUT_SIZE)
            check_batch(self.batch_size, self.input_size)
        check_int("workers", self.workers, 0, MAX_WORKERS)
        check_decay(self.ema)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def command(self) -> str:
        """The ``fan-train``/``fan-distill`` command line that reproduces this run."""
        default = TrainSpec()
        tool = "fan-distill" if self.teacher else "fan-train"
        parts = [tool, "--model", self.model]
        for d in self.data:
            parts += ["--data", d]
        for w in self.data_weights:
            parts += ["--data-weight", f"{w:g}"]
        for f in dataclasses.fields(self):
            if f.name in ("model", "data", "data_weights", "workers", "device", "max_minutes", "max_batches", "checkpoint_minutes"):
                continue
            value = getattr(self, f.name)
            if value == getattr(default, f.name) or value is None:
                continue
            flag = f"--{f.name.replace('_', '-')}"
            parts += [flag] if value is True else [flag, str(value)]  # a switch (store_true) takes no value
        return " ".join(shlex.quote(p) for p in parts)
