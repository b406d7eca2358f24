"""Checks on an artifact's own bytes that hold on every machine, whatever CPU exported or verifies it.

A parity run proves an artifact on the CPU it ran on; these prove what no run
on one CPU can: that ONNX int8 sums cannot saturate on x86 CPUs without VNNI
(:mod:`fan_edge.export.int8_overflow`), and that a graph declared with a
static batch has that batch in every activation (NPU compilers refuse
anything else). ``fan-edge check ARTIFACT`` runs them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ExportError
from ..runtime.contract import read_sidecar


def onnx_batch_mismatches(proto, batch: int) -> list[str]:
    """Activations of rank 4 (tensors computed from the graph's inputs, after shape inference; weights and their
    dequantized copies left out) whose batch axis is not ``batch`` (symbolic ones included)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    graph = inferred.graph
    weights = {t.name for t in graph.initializer}
    live = {i.name for i in graph.input if i.name not in weights}
    for node in graph.node:  # topological order, as the ONNX standard requires
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    bad = []
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.name not in live or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and not (dims[0].HasField("dim_value") and dims[0].dim_value == batch):
            first = dims[0].dim_value if dims[0].HasField("dim_value") else (dims[0].dim_param or "?")
            bad.append(f"{vi.name} batch {first}")
    return bad


def check_artifact(path: str | Path) -> list[str]:
    """Every portability problem of the artifact at ``path`` (an empty list when it has none)."""
    from .int8_overflow import u8s8_overflow

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    contract = read_sidecar(path)
    problems: list[str] = []
    if path.suffix == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ExportError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
        problems += [f"int8 overflow without VNNI: {site}" for site in u8s8_overflow(proto)]
        if contract is not None and contract.batch is not None:
            problems += [f"not batch {contract.batch}: {m}" for m in onnx_batch_mismatches(proto, contract.batch)]
    elif path.suffix == ".tflite":
        from .tflite_export import batch_mismatches

        batch = contract.batch if contract is not None and contract.batch is not None else 1
        problems += [f"not batch {batch}: {m}" for m in batch_mismatches(path.read_bytes(), batch)]
    else:
        raise ExportError(f"{path}: fan-edge check reads .onnx and .tflite artifacts")
    return problems
