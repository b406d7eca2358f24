"""Static check of an int8 ONNX graph: can a uint8 x int8 pair sum overflow 16 bits?

Why: x86 CPUs without VNNI (AVX2, and AVX-512 without VNNI) compute uint8 x
int8 dot products with ``vpmaddubsw``, which adds two adjacent products into a
signed 16-bit lane **with saturation**. ONNX Runtime's U8S8 kernels use it
there, so a convolution whose weights hold two large values of the same sign
next to each other silently clips whenever the activations are large: the
default model lost accuracy on such a CPU and none on a VNNI one (figures:
docs/npu.md, "int8 on CPUs without VNNI"). A test on the exporting machine
cannot see this; the weights can. With weights
of at most 64 in magnitude (ONNX Runtime's ``reduce_range``, 7-bit weights)
``2 x 255 x 64 = 32,640`` fits, on every CPU.

The bound is independent of how a kernel packs the reduction axis: for each
output channel, the two largest same-sign weight magnitudes times 255 (the
largest uint8 activation) must stay within 32,767. It covers QDQ graphs
(``DequantizeLinear`` of uint8 activations and int8 weights feeding a
``Conv``, ``ConvTranspose``, ``MatMul`` or ``Gemm``) and operator-format graphs
(``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError

INT16_MAX = 32767
UINT8_MAX = 255
QDQ_CONSUMERS = {"Conv": (0, 1), "ConvTranspose": (0, 1), "MatMul": (0, 1), "Gemm": (0, 1)}
# operator format: (activation input index, weight input index)
QOPERATORS = {"QLinearConv": (0, 3), "QLinearMatMul": (0, 3), "ConvInteger": (0, 1), "MatMulInteger": (0, 1)}


@dataclass(frozen=True)
class OverflowSite:
    """A node whose uint8 x int8 pair sums can leave the int16 range, with its worst case."""

    node: str
    op_type: str
    weight: str
    worst_pair_sum: int  # 255 x (the two largest same-sign |w| of one output channel)
    channels: int  # output channels that can overflow
    total_channels: int

    def __str__(self) -> str:
        return (f"{self.op_type} {self.node or '(unnamed)'}: weight {self.weight} reaches a pair sum of "
                f"{self.worst_pair_sum} > {INT16_MAX} in {self.channels}/{self.total_channels} output channels")


def worst_pair_sums(weights: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """Per output channel: 255 x the larger of (two largest positive weights) and (two largest negative magnitudes)."""
    w = np.moveaxis(np.asarray(weights, dtype=np.int64), channel_axis, 0).reshape(np.shape(weights)[channel_axis], -1)
    pos = np.sort(np.where(w > 0, w, 0), axis=1)[:, ::-1]
    neg = np.sort(np.where(w < 0, -w, 0), axis=1)[:, ::-1]
    top = lambda a: a[:, 0] + (a[:, 1] if a.shape[1] > 1 else 0)  # noqa: E731
    return UINT8_MAX * np.maximum(top(pos), top(neg))


def _load(model: Any):
    import onnx

    if isinstance(model, (str, Path)):
        try:
            return onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise ExportError(f"{model}: not an ONNX model ({type(exc).__name__})") from None
    return model


def u8s8_overflow(model: Any) -> list[OverflowSite]:
    """Every node of ``model`` (ModelProto or path) whose uint8 x int8 pair sums can overflow int16."""
    from onnx import TensorProto, numpy_helper

    proto = _load(model)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    constants = {node.output[0]: node.attribute[0].t for node in graph.node
                 if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t")}

    def tensor(name: str):
        return inits.get(name) or constants.get(name)

    def elem_type(name: str) -> int | None:
        t = tensor(name)
        if t is not None:
            return t.data_type
        node = producers.get(name)
        if node is not None and node.op_type == "QuantizeLinear":  # its type is its zero point's (uint8 by default)
            zp = tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            return zp.data_type if zp is not None else TensorProto.UINT8
        for vi in [*graph.value_info, *graph.input]:
            if vi.name == name:
                return vi.type.tensor_type.elem_type
        return None

    def dequantized_from(name: str) -> str | None:
        """The quantized tensor behind a DequantizeLinear output (None if ``name`` is not one)."""
        node = producers.get(name)
        return node.input[0] if node is not None and node.op_type == "DequantizeLinear" else None

    sites = []
    for node in graph.node:
        if node.op_type in QOPERATORS:
            a_idx, w_idx = QOPERATORS[node.op_type]
            activation, weight = node.input[a_idx], node.input[w_idx]
        elif node.op_type in QDQ_CONSUMERS and len(node.input) > 1:
            activation, weight = dequantized_from(node.input[0]), dequantized_from(node.input[1])
            if activation is None or weight is None:
                continue  # a float node
        else:
            continue
        w_tensor = tensor(weight)
        if w_tensor is None or w_tensor.data_type != TensorProto.INT8 or elem_type(activation) != TensorProto.UINT8:
            continue
        w = numpy_helper.to_array(w_tensor)
        # Conv weights are (out, in/groups, kh, kw); MatMul/Gemm B is (in, out), its output channels on axis 1.
        axis = 1 if node.op_type in ("MatMul", "QLinearMatMul", "MatMulInteger", "Gemm") and w.ndim == 2 else 0
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            axis = 0
        sums = worst_pair_sums(w, axis) if w.ndim >= 1 and w.size else np.zeros(0, np.int64)
        bad = sums > INT16_MAX
        if bad.any():
            sites.append(OverflowSite(node.name, node.op_type, weight, int(sums.max()), int(bad.sum()), int(sums.size)))
    return sites


def check_u8s8_overflow(model: Any, what: str = "the int8 graph") -> None:
    """Refuse ``model`` in one line when any uint8 x int8 pair sum can overflow 16 bits (see the module docstring)."""
    sites = u8s8_overflow(model)
    if sites:
        raise ExportError(
            f"{what} can overflow 16-bit sums on x86 CPUs without VNNI ({len(sites)} nodes, e.g. {sites[0]}); "
            "quantize its weights to 7 bits (reduce_range)"
        )
