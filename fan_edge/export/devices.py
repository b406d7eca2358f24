"""``fan-export --device``: the NPUs an artifact is compiled and checked for, one row each.

A device row says which portable artifact its compiler starts from (target,
precision), the static batch the compiler needs, where the parity check runs,
and the step that compiles it after the artifact is written:

- ``npu`` (alias ``qnn``): Qualcomm's Hexagon NPU through ONNX Runtime's QNN
  plugin (:mod:`fan_edge.export.qnn`), for ``--soc`` (default SM8650). The
  fixed-batch QDQ graph must run wholly on the NPU (no CPU fallback, no
  unsupported node), an EPContext model precompiled for that SoC is written
  beside it, and the parity check runs on QNN's x86 emulator of the chip, on
  a few faces (seconds per face).
- ``ethos-u55-128`` and the other Arm Ethos-U configurations
  (:mod:`fan_edge.export.ethos_u`): Vela compiles the int8 TFLite for the
  NPU, its report (op share, SRAM, flash, estimated latency) goes into the
  sidecar, and the portable ``.tflite`` runs on the CPU for parity.

The compiled files commit together with the artifact and its sidecar, all
or nothing, and the compile report is part of the sidecar's
``verification``. Adding an NPU is one row and one compile function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError

DEFAULT_SOC = "SM8650"
QNN_PARITY_FACES = 8  # the emulator takes seconds per face


@dataclass(frozen=True)
class CompiledFiles:
    """What a device's compile step left in the staging folder (file names) and its report for the sidecar."""

    names: list[str]
    report: dict[str, Any]


@dataclass(frozen=True)
class Device:
    name: str  # as given to --device
    family: str  # "qnn" or "ethos-u"
    target: str  # the fan-export target its compiler reads
    precision: str  # the only precision its compiler takes
    batch: int  # static batch in every tensor
    parity_device: str  # the runtime device of the parity check ("npu": the QNN emulator)
    parity_faces: int | None  # faces for parity (None: --verify-faces)
    soc: str | None = None  # QNN only

    @property
    def file_tag(self) -> str:
        """What default artifact names add, so that an NPU artifact never replaces the CPU one."""
        return f"-{(self.soc or DEFAULT_SOC).lower()}" if self.family == "qnn" else f"-{self.name}"

    def contract_extra(self) -> dict[str, Any]:
        """The entry the artifact's contract carries for this device (the runtime reads the SoC from it)."""
        if self.family == "qnn":
            from .qnn import contract_entry

            return {"qnn": contract_entry(self.soc or DEFAULT_SOC)}
        return {"ethos_u": {"device": self.name}}

    def compile(self, staged: Path) -> CompiledFiles:
        """Compile the staged portable artifact; its outputs go beside it, into the staging folder."""
        compiled = COMPILERS[self.family](self, staged)
        compiled.report["files"] = list(compiled.names)
        return compiled


def _compile_qnn(device: Device, staged: Path) -> CompiledFiles:
    from .qnn import check_offload, compile_context

    soc = device.soc or DEFAULT_SOC
    report = check_offload(staged, soc)
    if not report.full_offload:
        first = report.error or (report.unsupported[0] if report.unsupported else "no node")
        raise ExportError(f"{len(report.unsupported)} of {report.nodes} nodes do not run on the {soc} NPU (e.g. {first})")
    context = staged.with_name(f"{staged.stem}_{soc.lower()}_ctx.onnx")
    compile_context(staged, soc, context)
    return CompiledFiles([context.name], {"compiler": "qnn", **report.to_dict(), "context_model": context.name,
                                          "context_mb": round(context.stat().st_size / 1e6, 3),
                                          "latency_source": "not measurable offline (x86 emulator)"})


def _compile_ethos_u(device: Device, staged: Path) -> CompiledFiles:
    from .ethos_u import compile_ethos_u

    report = compile_ethos_u(staged, device.name, staged.parent)
    if report.cpu_ops:
        raise ExportError(f"{report.cpu_ops} ops stay off the {device.name} NPU (e.g. {report.cpu_operators[0]})")
    names = [p.name for p in (report.compiled, report.summary_csv, report.per_layer_csv) if p is not None]
    data = report.to_dict()
    for key in ("compiled", "summary_csv", "per_layer_csv"):  # names beside the artifact, not this machine's paths
        data[key] = Path(data[key]).name if data.get(key) else None
    return CompiledFiles(names, {"compiler": "vela", **data})


COMPILERS: dict[str, Callable[[Device, Path], CompiledFiles]] = {"qnn": _compile_qnn, "ethos-u": _compile_ethos_u}


def device_names() -> list[str]:
    """Every --device value: cpu, npu (Qualcomm, with --soc), and the Ethos-U configurations."""
    from .ethos_u import ETHOS_U_DEVICES

    return ["cpu", "npu", *ETHOS_U_DEVICES]


def resolve_device(name: str | None, soc: str | None = None) -> Device | None:
    """The device row for ``name`` (None for the CPU, where nothing is compiled); one-line errors for the rest."""
    from .ethos_u import ETHOS_U_DEVICES

    text = (name or "cpu").strip().lower()
    if soc is not None and text not in ("npu", "qnn"):
        raise ExportError("--soc names a Qualcomm chip: it goes with --device npu")
    if text == "cpu":
        return None
    if text in ("npu", "qnn"):
        from .qnn import resolve_soc

        soc_name, _ = resolve_soc(soc or DEFAULT_SOC)
        return Device("npu", "qnn", "onnx", "int8", 1, "npu", QNN_PARITY_FACES, soc_name)
    if text in ETHOS_U_DEVICES:
        return Device(text, "ethos-u", "tflite", "int8", 1, "cpu", None)
    raise ExportError(f"unknown device {name!r}; expected one of: {', '.join(device_names())}")


def check_combination(device: Device, target: str, precision: str) -> None:
    if target != device.target or precision != device.precision:
        raise ExportError(f"--device {device.name} compiles {device.target} {device.precision} artifacts, "
                          f"not {target} {precision}: pass --target {device.target} --precision {device.precision}")
