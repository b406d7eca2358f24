"""The CPU a figure was measured on: its name and the instruction sets that change int8 results and speed.

int8 kernels differ by instruction set: ONNX Runtime's uint8 x int8 kernels
on an x86 CPU without VNNI multiply pairs into 16-bit sums that saturate,
OpenVINO and XNNPACK pick other kernels again. A parity or latency figure
without the CPU it came from cannot be compared with anything, so every
report carries :func:`cpu_record`.

Read from ``/proc/cpuinfo`` (Linux) and ``platform`` elsewhere. Under a user
mode emulator (``qemu-x86_64 -cpu Haswell``) the file still describes the
host; such runs say so themselves (``FAN_EDGE_CPU_NOTE``).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

# The flags that decide which int8 kernels run (x86: pair sums of 16 bits without VNNI; Arm: SDOT/I8MM).
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name or platform.processor() or platform.machine(), frozenset(flags)


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 9R14"), or the machine type where the OS does not say."""
    return _cpuinfo()[0]


def cpu_isa() -> list[str]:
    """The int8-relevant instruction sets of :data:`ISA_FLAGS` this CPU reports, in that order."""
    flags = _cpuinfo()[1]
    return [f for f in ISA_FLAGS if f in flags]


def has_vnni() -> bool:
    """Whether uint8 x int8 dot products have a VNNI instruction (no 16-bit intermediate sums)."""
    flags = _cpuinfo()[1]
    return "avx512_vnni" in flags or "avx_vnni" in flags


def has_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (x86 AVX-512 BF16 or AMX; Arm BF16): without them a bfloat16
    convolution is emulated, slower than fp32."""
    flags = _cpuinfo()[1]
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def format_cpu(record: dict[str, Any]) -> str:
    """One line for a table or a plot from a :func:`cpu_record`: name and int8 instruction sets
    ("AMD EPYC (avx2, avx512_vnni)"), and the note where one was set."""
    isa = record.get("isa") or []
    text = f"{record.get('name', '?')} ({', '.join(isa) if isa else 'no int8 extensions reported'})"
    return f"{text} [{record['note']}]" if record.get("note") else text


def cpu_label() -> str:
    """This CPU as one line (:func:`format_cpu` of :func:`cpu_record`)."""
    return format_cpu(cpu_record())


def cpu_record() -> dict[str, Any]:
    """What a report stores: name, machine, int8 instruction sets, VNNI, logical CPUs (and a note where set)."""
    record: dict[str, Any] = {
        "name": cpu_name(),
        "machine": platform.machine(),
        "isa": cpu_isa(),
        "vnni": has_vnni(),
        "cpus": os.cpu_count(),
    }
    note = os.environ.get("FAN_EDGE_CPU_NOTE", "").strip()
    if note:
        record["note"] = note
    return record
