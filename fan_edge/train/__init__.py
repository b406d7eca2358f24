"""Training and distillation of FAN variants (``fan-train``, ``fan-distill``)."""

from .spec import TrainSpec
from .trainer import train

__all__ = ["TrainSpec", "train"]
