"""Arm Ethos-U NPUs (U55, U65, U85): compile an int8 ``.tflite`` with Arm's Vela and report what it did.

An Ethos-U runs only what Vela has compiled ahead of time: Vela replaces every
run of supported int8 operators by one ``ethos-u`` custom operator (command
stream plus encoded weights) and leaves the rest for the CPU (TFLite Micro on
the Cortex-M next to the NPU). It needs no device, so fan-edge can tell
offline, per chip, whether the whole network lands on the NPU and what it
costs:

- ``npu_ops`` / ``cpu_ops`` are counted in the input model's TFLite
  operators: the CPU ones are the operators Vela left in the compiled graph,
  the rest went into an ``ethos-u`` operator. (Vela's own console count is of
  its internally rewritten operators and differs between chips for the same
  model, so it cannot be compared across devices.)
- ``sram_kib`` is Vela's peak SRAM use (feature maps, plus the weight
  buffering it schedules there); ``flash_kib`` is what the NPU reads from
  read-only memory: the command stream plus the encoded weights and scales,
  the constant inputs of the ``ethos-u`` operators in the compiled file.
- ``estimated_ms`` and ``cycles`` are Vela's performance model for the chosen
  system configuration (clock, memory latencies and widths), not a
  measurement: ``to_dict`` says ``"latency_source": "vela estimate"``.

Vela runs as a subprocess (``python -m ethosu.vela``, the documented command
line) rather than in-process: its C++ core prints from native code, which
redirecting ``sys.stdout`` cannot silence, and it crashes outright (SIGSEGV)
on some malformed flatbuffers, which must not take the exporter down. Inputs
are checked first with the TFLite schema's own reader so that the common
mistakes (a float model, a batch other than 1, not a flatbuffer) get a
one-line reason instead of Vela's.

System configuration and memory mode come from the ``Arm/vela.ini`` that
Vela ships, one pair per family, so that every figure says which system it
assumes instead of Vela warning about "internal-default": U55
``Ethos_U55_High_End_Embedded`` / ``Shared_Sram`` (Vela's own U55 default:
500 MHz, feature maps in SRAM, weights in off-chip flash); U65
``Ethos_U65_High_End`` / ``Dedicated_Sram`` (1 GHz, feature maps and weights
in DRAM with the SRAM as a cache, the mode that exists for the U65's second
AXI port); U85 ``Ethos_U85_SYS_DRAM_Mid`` / ``Dedicated_Sram_384KB`` (Vela's
own U85 default: 1 GHz, DRAM with a 384 KB SRAM cache). ``compile_ethos_u``
takes other sections of that file by keyword.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError

# fan-edge device name -> Vela --accelerator-config (the same strings: Vela's
# own names, as `vela --help` lists them in ethos-u-vela 5.2).
ETHOS_U_DEVICES: dict[str, str] = {
    name: name
    for name in (
        "ethos-u55-32",
        "ethos-u55-64",
        "ethos-u55-128",
        "ethos-u55-256",
        "ethos-u65-256",
        "ethos-u65-512",
        "ethos-u85-128",
        "ethos-u85-256",
        "ethos-u85-512",
        "ethos-u85-1024",
        "ethos-u85-2048",
    )
}

VELA_CONFIG = "Arm/vela.ini"  # shipped inside ethos-u-vela; Vela resolves this relative name itself
# family ("ethos-u55") -> (system config, memory mode) in VELA_CONFIG
SYSTEM_DEFAULTS: dict[str, tuple[str, str]] = {
    "ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u65": ("Ethos_U65_High_End", "Dedicated_Sram"),
    "ethos-u85": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB"),
}
VELA_TIMEOUT_S = 600
ETHOS_U_OP = "ethos-u"  # custom code of the operator Vela puts in place of what runs on the NPU
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier at bytes 4..8 of every .tflite

# tflite tensor types (flatbuffer_utils.type_to_name) of the feature maps an Ethos-U computes
_INTEGER_FEATURE_MAPS = {"INT8", "UINT8", "INT16"}


@dataclass(frozen=True)
class VelaReport:
    """What Vela made of one model for one Ethos-U configuration (see the module docstring for each figure's
    meaning). Figures are Vela's static estimates for ``system_config`` / ``memory_mode``, not measurements."""

    device: str
    vela_version: str
    system_config: str
    memory_mode: str
    clock_mhz: float
    npu_ops: int
    cpu_ops: int
    npu_op_share: float
    cpu_operators: tuple[str, ...]  # "TYPE -> output tensor: Vela's reason" for each operator left on the CPU
    sram_kib: float
    flash_kib: float
    estimated_ms: float
    cycles: int
    compiled: Path
    summary_csv: Path
    per_layer_csv: Path | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings), with ``latency_source`` so that nobody mistakes the estimate for a
        timing on silicon."""
        out = asdict(self)
        out["cpu_operators"] = list(self.cpu_operators)
        for key in ("compiled", "summary_csv", "per_layer_csv"):
            out[key] = None if out[key] is None else str(out[key])
        out["latency_source"] = "vela estimate"
        return out


def vela_available() -> bool:
    """True when ethos-u-vela is installed in this interpreter (``compile_ethos_u`` runs it with
    ``sys.executable``, so a ``vela`` on PATH from another environment does not count)."""
    try:
        return importlib.util.find_spec("ethosu.vela") is not None
    except (ImportError, ValueError):
        return False


def vela_version() -> str:
    """The installed ethos-u-vela's version (its package metadata; reading it imports nothing)."""
    try:
        return importlib.metadata.version("ethos-u-vela")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def compile_ethos_u(
    tflite: Path,
    device: str,
    out_dir: Path,
    *,
    system_config: str | None = None,
    memory_mode: str | None = None,
) -> VelaReport:
    """Compile an int8 ``tflite`` for ``device`` (a key of :data:`ETHOS_U_DEVICES`) with Vela into ``out_dir``.

    Writes Vela's outputs there, named ``STEM_DEVICE_...`` so that several chips can share a folder:
    ``STEM_DEVICE_vela.tflite`` (the model to deploy with TFLite Micro and the Ethos-U driver),
    ``STEM_DEVICE_summary_SYSTEMCONFIG.csv`` and ``STEM_DEVICE_per-layer.csv`` (placement, cycles and memory per
    operator). They are produced in a scratch folder and moved in only when Vela succeeds, so a failed run
    never leaves a half-written or stale-looking result. ``system_config`` / ``memory_mode`` override the
    family's defaults (sections of Vela's ``Arm/vela.ini``). Vela's console output is discarded unless
    ``FAN_EDGE_EXPORT_VERBOSE=1`` (then it goes to stderr).

    Raises ExportError (one line) for an unknown device, a missing or non-TFLite file, a float model, a model
    already compiled by Vela, tensors without a static batch of 1, Vela missing, and Vela failing.
    """
    accelerator = ETHOS_U_DEVICES.get(device)
    if accelerator is None:
        raise ExportError(f"unknown Ethos-U device {device!r}; known: {', '.join(ETHOS_U_DEVICES)}")
    tflite = Path(tflite)
    if not tflite.is_file():
        raise ExportError(f"no such TFLite file: {tflite}")
    if not vela_available():
        raise ExportError("Ethos-U compilation needs Arm's Vela: pip install ethos-u-vela")
    input_ops = check_vela_input(tflite)

    family = accelerator.rsplit("-", 1)[0]
    default_system, default_memory = SYSTEM_DEFAULTS[family]
    system_config = system_config or default_system
    memory_mode = memory_mode or default_memory

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vela-", dir=out_dir) as scratch:
        command = [
            sys.executable, "-m", "ethosu.vela", str(tflite.resolve()),
            "--output-dir", scratch,
            "--accelerator-config", accelerator,
            "--config", VELA_CONFIG,
            "--system-config", system_config,
            "--memory-mode", memory_mode,
            "--verbose-performance",  # writes the per-layer CSV (placement and cost of each operator)
        ]  # fmt: skip
        output = _run_vela(command, cwd=scratch, what=f"{tflite.name} for {device}")
        produced = {p.name: p for p in Path(scratch).iterdir() if p.is_file()}
        for needed in (f"{tflite.stem}_vela.tflite", f"{tflite.stem}_summary_{system_config}.csv"):
            if needed not in produced:
                raise ExportError(f"Vela finished on {tflite.name} for {device} but wrote no {needed}")
        # Vela names its files after the input only; the device goes into the name so that compiling one model
        # for several chips into one folder keeps every result (STEM_DEVICE_vela.tflite, ...).
        for name, path in produced.items():
            if name.startswith(tflite.stem + "_"):
                name = f"{tflite.stem}_{device}{name[len(tflite.stem):]}"
            os.replace(path, out_dir / name)

    base = f"{tflite.stem}_{device}"
    compiled = out_dir / f"{base}_vela.tflite"
    summary_csv = out_dir / f"{base}_summary_{system_config}.csv"
    summary = _read_summary(summary_csv)
    placement = _compiled_placement(compiled)
    cpu_ops = len(placement["cpu"])
    npu_ops = max(input_ops - cpu_ops, 0)
    reasons = _cpu_reasons(output)
    cpu_operators = tuple(
        f"{op} -> {name}" + (f": {reasons[name]}" if name in reasons else "") for op, name in placement["cpu"]
    )
    clock_hz = _number(summary, "core_clock")
    seconds = _number(summary, "inference_time")
    per_layer = out_dir / f"{base}_per-layer.csv"
    return VelaReport(
        device=device,
        vela_version=vela_version(),
        system_config=str(summary.get("system_config") or system_config),
        memory_mode=str(summary.get("memory_mode") or memory_mode),
        clock_mhz=clock_hz / 1e6,
        npu_ops=npu_ops,
        cpu_ops=cpu_ops,
        npu_op_share=npu_ops / (npu_ops + cpu_ops) if npu_ops + cpu_ops else 0.0,
        cpu_operators=cpu_operators,
        sram_kib=_number(summary, "sram_memory_used"),
        flash_kib=placement["npu_read_only_bytes"] / 1024.0,
        estimated_ms=seconds * 1000.0,
        cycles=int(_number(summary, "cycles_total")),
        compiled=compiled,
        summary_csv=summary_csv,
        per_layer_csv=per_layer if per_layer.is_file() else None,
    )


def check_vela_input(tflite: Path) -> int:
    """Refuse, in one line, what Vela would reject less clearly or compile uselessly; return the model's
    operator count (the denominator of the NPU share).

    A float model would compile "successfully" with every operator on the CPU; an input that is not a
    flatbuffer can crash Vela; a dynamic or larger batch is rejected by the NPU's operators one by one. Types
    and shapes are read with the TFLite schema's reader (``ai_edge_litert.tools.flatbuffer_utils``)."""
    model = _read_tflite(tflite)
    codes = model.operatorCodes or []
    subgraphs = model.subgraphs or []
    if any(_custom_code(codes[op.opcodeIndex]) == ETHOS_U_OP for sg in subgraphs for op in sg.operators or []):
        raise ExportError(f"{tflite.name} is already compiled by Vela (it holds an ethos-u operator); give the int8 model")

    from ai_edge_litert.tools import flatbuffer_utils

    activation_types: set[str] = set()
    for sg in subgraphs:
        tensors = sg.tensors or []
        io = set(list(sg.inputs if sg.inputs is not None else []) + list(sg.outputs if sg.outputs is not None else []))
        for index, tensor in enumerate(tensors):
            if _is_constant(model, tensor):
                continue
            activation_types.add(flatbuffer_utils.type_to_name(tensor.type))
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            signature = [int(d) for d in (tensor.shapeSignature if tensor.shapeSignature is not None else shape)]
            if not (len(shape) == 4 or (index in io and len(shape) >= 2)):
                continue  # batch is the leading axis of NHWC feature maps and of the graph's inputs/outputs
            if signature and signature[0] == -1:
                raise ExportError(
                    f"{tflite.name}: tensor {_text(tensor.name)!r} has a dynamic batch; Ethos-U needs a static "
                    "batch of 1 everywhere (re-export: fan-export writes batch 1 for TFLite)"
                )
            if shape and shape[0] != 1:
                raise ExportError(
                    f"{tflite.name}: tensor {_text(tensor.name)!r} has batch {shape[0]} (shape {shape}); "
                    "Ethos-U needs a static batch of 1 everywhere"
                )
    if not activation_types & _INTEGER_FEATURE_MAPS:
        kinds = "/".join(sorted(t.lower() for t in activation_types)) or "no"
        raise ExportError(
            f"{tflite.name} is not an int8 model ({kinds} activations); Ethos-U runs int8: export with --precision int8"
        )
    return sum(len(sg.operators or []) for sg in subgraphs)


# ---- helpers --------------------------------------------------------------------------------------------------


def _read_tflite(path: Path) -> Any:
    """The model as the schema's object tree, or a one-line ExportError for anything that is not one."""
    try:
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as e:
        raise ExportError("checking a .tflite needs ai-edge-litert (the tflite extra)") from e
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise ExportError(f"{path.name} is not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = flatbuffer_utils.read_model(str(path))
    except Exception:  # the generated reader raises whatever a bad offset triggers
        raise ExportError(f"{path.name} is not a readable TFLite flatbuffer (truncated or corrupt)") from None
    if not model.subgraphs:
        raise ExportError(f"{path.name} has no subgraph")
    return model


def _custom_code(code: Any) -> str | None:
    return _text(code.customCode) if code.customCode is not None else None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _is_constant(model: Any, tensor: Any) -> bool:
    buffer = model.buffers[tensor.buffer] if model.buffers and tensor.buffer < len(model.buffers) else None
    return buffer is not None and (
        (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "size", 0))
    )


def _run_vela(command: list[str], cwd: str, what: str) -> str:
    """Run Vela; its combined output (echoed to stderr with FAN_EDGE_EXPORT_VERBOSE=1), or a one-line
    ExportError with Vela's first meaningful error."""
    verbose = os.environ.get("FAN_EDGE_EXPORT_VERBOSE") == "1"
    try:
        done = subprocess.run(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            timeout=VELA_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ExportError(f"Vela did not finish {what} within {VELA_TIMEOUT_S} s") from None
    except OSError as e:
        raise ExportError(f"cannot run Vela ({e.strerror or e})") from None
    if verbose:
        sys.stderr.write(done.stdout)
        sys.stderr.flush()
    if done.returncode != 0:
        raise ExportError(f"Vela failed on {what}: {vela_error_line(done.stdout, done.returncode)}")
    return done.stdout


def vela_error_line(output: str, returncode: int) -> str:
    """The line of Vela's output that says what went wrong, without the traceback around it.

    Vela reports user errors as ``Error: ...`` (printed, or as the message of a raised exception that ends a
    traceback); its C++ core prints its own message before dying; a crash has only a signal."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        at = line.rfind("Error: ")
        if at >= 0 and not line.startswith("Warning"):
            return line[at + len("Error: ") :].strip().strip("'\"")
    if any(line.startswith("Traceback") for line in lines):
        for line in reversed(lines):
            match = re.match(r"^[\w.]*(?:Error|Exception)\w*: (.+)$", line)
            if match:
                return match.group(1).strip().strip("'\"")
    skip = ("Warning", "Reason:", "Feature-map", "Traceback", "File ", "^", "~")
    meaningful = [line for line in lines if not line.startswith(skip)]
    crash = ""
    if returncode < 0:
        try:
            crash = f"crashed with {signal.Signals(-returncode).name}"
        except ValueError:
            crash = f"crashed with signal {-returncode}"
    if meaningful and crash:
        return f"{meaningful[-1]} ({crash})"
    return meaningful[-1] if meaningful else crash or f"exit status {returncode}, no message"


def _read_summary(path: Path) -> dict[str, str]:
    """Vela's ``--summary`` CSV: one header row, one row of figures for the network."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ExportError(f"Vela's summary {path.name} has no figures")
    return dict(zip(rows[0], rows[1]))


def _number(summary: dict[str, str], key: str) -> float:
    try:
        value = float(summary[key])
    except (KeyError, ValueError):
        raise ExportError(f"Vela's summary has no usable {key!r} (ethos-u-vela {vela_version()})") from None
    if not math.isfinite(value):
        raise ExportError(f"Vela's summary gives {key}={summary[key]}")
    return value


def _compiled_placement(compiled: Path) -> dict[str, Any]:
    """From Vela's output model: the operators left to the CPU as (TYPE, output name), and the bytes of the
    ethos-u operators' constant inputs (command stream, encoded weights and scales: what sits in flash)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read_tflite(compiled)
    cpu: list[tuple[str, str]] = []
    read_only = 0
    for sg in model.subgraphs:
        tensors = sg.tensors or []
        for op in sg.operators or []:
            if _custom_code(model.operatorCodes[op.opcodeIndex]) == ETHOS_U_OP:
                for i in op.inputs if op.inputs is not None else []:
                    if i >= 0 and _is_constant(model, tensors[i]):
                        buffer = model.buffers[tensors[i].buffer]
                        read_only += len(buffer.data) if buffer.data is not None else int(buffer.size)
                continue
            outputs = [_text(tensors[i].name) for i in (op.outputs if op.outputs is not None else []) if i >= 0]
            cpu.append((flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) or "?", ", ".join(outputs)))
    return {"cpu": cpu, "npu_read_only_bytes": read_only}


def _cpu_reasons(output: str) -> dict[str, str]:
    """Vela's reason for each operator it placed on the CPU, by output tensor name, from its warnings:
    ``Warning (supported operators) operator: OP, ofm: 'NAME'`` followed by ``Reason: ...``."""
    reasons: dict[str, str] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^Warning \(supported operators\) operator: .*?, ofm: '(.*)'\s*$", line.strip())
        if match and i + 1 < len(lines) and lines[i + 1].strip().startswith("Reason:"):
            reasons.setdefault(match.group(1), lines[i + 1].strip()[len("Reason:") :].strip())
    return reasons


__all__ = [
    "ETHOS_U_DEVICES",
    "SYSTEM_DEFAULTS",
    "VelaReport",
    "check_vela_input",
    "compile_ethos_u",
    "vela_available",
    "vela_error_line",
    "vela_version",
]
