"""The ``--targets`` spec of fan-bench: ``runtime:precision[@device]``, comma separated.

A benchmark target is a runtime that executes the model (PyTorch eager, or one
of the torch-free backends of :mod:`fan_edge.runtime.backends`), a precision,
and a device family. Each runtime maps to the ``fan-export`` target that
produces its artifact, so ``onnxruntime:int8`` means "export ONNX int8, run it
with ONNX Runtime". The spec is checked whole before anything runs: one bad
item is a one-line error naming what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import BenchError
from ..export.ethos_u import ETHOS_U_DEVICES

TORCH = "torch"
# runtime -> (fan-export target, precisions it can bench)
RUNTIMES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    TORCH: (None, ("fp32",)),  # eager, as users run it today: the baseline of every speed-up
    "onnxruntime": ("onnx", ("fp32", "fp16", "int8")),
    "openvino": ("openvino", ("fp32", "fp16", "int8")),
    "litert": ("tflite", ("fp32", "fp16", "int8")),
}
DEVICES = ("cpu", "gpu", "npu")
# NPUs whose latency comes from their compiler's estimate (Arm's Vela), named as fan-export --device names them.
ESTIMATED_DEVICES = tuple(ETHOS_U_DEVICES)
# Common spellings of the runtimes, accepted and normalised.
ALIASES = {"pytorch": TORCH, "ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino", "tflite": "litert"}

DEFAULT_TARGETS = "torch:fp32,onnxruntime:fp32,onnxruntime:int8,openvino:fp32,openvino:int8,litert:fp32"


@dataclass(frozen=True)
class BenchTarget:
    runtime: str
    precision: str = "fp32"
    device: str = "cpu"

    @property
    def export_target(self) -> str | None:
        """The fan-export target that writes this runtime's artifact (None for PyTorch eager)."""
        return RUNTIMES[self.runtime][0]

    @property
    def npu_export(self) -> str | None:
        """The fan-export --device this row's artifact is compiled for (None: the portable artifact)."""
        if self.device in ESTIMATED_DEVICES:
            return self.device
        if self.device == "npu" and self.runtime == "onnxruntime" and self.precision == "int8":
            return "npu"  # Qualcomm, through ONNX Runtime's QNN plugin
        return None

    @property
    def is_torch(self) -> bool:
        return self.runtime == TORCH

    @property
    def label(self) -> str:
        return f"{self.runtime}:{self.precision}" + ("" if self.device == "cpu" else f"@{self.device}")

    def __str__(self) -> str:
        return self.label


def parse_target(item: str) -> BenchTarget:
    """One ``runtime[:precision][@device]`` item (precision fp32 and device cpu when left out)."""
    text = item.strip().lower()
    if not text:
        raise BenchError("empty item in --targets")
    spec, _, device = text.partition("@")
    runtime, _, precision = spec.partition(":")
    runtime = ALIASES.get(runtime.strip(), runtime.strip())
    precision = precision.strip() or "fp32"
    device = device.strip() or "cpu"
    if runtime not in RUNTIMES:
        raise BenchError(f"unknown target {item.strip()!r}: runtime must be one of {', '.join(RUNTIMES)}")
    allowed = RUNTIMES[runtime][1]
    if precision not in allowed:
        raise BenchError(f"unknown target {item.strip()!r}: {runtime} precisions are {', '.join(allowed)}")
    if device not in DEVICES and device not in ESTIMATED_DEVICES:
        raise BenchError(f"unknown target {item.strip()!r}: device must be one of {', '.join(DEVICES)} (as @gpu, @npu) "
                         f"or an Ethos-U NPU (@ethos-u55-128, ...)")
    if device in ESTIMATED_DEVICES and (runtime, precision) != ("litert", "int8"):
        raise BenchError(f"unknown target {item.strip()!r}: an Ethos-U NPU runs litert:int8")
    return BenchTarget(runtime, precision, device)


def parse_targets(spec: str | Iterable[str]) -> list[BenchTarget]:
    """Every item of a comma list (or of several lists), in order, duplicates dropped."""
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p for text in items for p in str(text).split(",")]
    if not any(p.strip() for p in parts):
        raise BenchError("no targets given")
    targets = [parse_target(p) for p in parts if p.strip()]
    return list(dict.fromkeys(targets))
