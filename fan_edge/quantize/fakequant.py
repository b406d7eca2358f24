"""int8 of one layer at a time, simulated on a PyTorch FAN with hooks (fast, any subset of layers): the per-layer
sensitivity ranking of ``fan-quantize --sensitivity``.

It models ONNX Runtime's conv-level QDQ arithmetic with 7-bit weights (tests/test_quantize.py checks it
against such an artifact). The shipped ONNX recipe goes further (the whole graph, BatchNorms as depthwise
convolutions, 7-bit weights: :class:`fan_edge.export.onnx_export.OnnxInt8Recipe`), so the ranking is of
layers, and an export's parity check is what measures the whole artifact.

Quantization points, named by PyTorch module:

- a convolution ``NAME`` (kind ``conv``): its weights (symmetric int8 per
  output channel, levels -64..64: :data:`WEIGHT_LEVELS`), its input and its output (asymmetric
  8-bit per tensor); what ONNX Runtime's QDQ does to a Conv, and what
  OpenVINO and TFLite do to one too;
- a block input ``NAME`` (kind ``stream``, the ``bn1`` of a
  :class:`~fan_edge.models.blocks.ConvBlock`): the residual stream where a
  block reads it (the output of an add, a pooling or an upsampling), which
  TFLite's full-integer graphs quantize and ONNX Runtime's conv-only QDQ
  does not.

A convolution whose only consumer is a BatchNorm (FAN's stem ``conv1`` ->
``bn1`` and each stack's ``conv_last{i}`` -> ``bn_end{i}``) is simulated as
every exporter runs it, with the BN folded in: its weights are quantized
after folding and its output is quantized after the BN.

Activation ranges follow :mod:`fan_edge.export.int8`: each face's minimum
and maximum, averaged over the calibration faces (``"mean"``), or the
global extremes (``"minmax"``, the estimator that failed). A range always
contains 0 and the zero point is an integer, as in every backend here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.blocks import ConvBlock

ESTIMATORS = ("mean", "minmax")


@dataclass(frozen=True)
class Layer:
    """One unit of the sensitivity report."""

    name: str
    kind: str  # "conv" or "stream"
    macs: int  # multiply-accumulates per face (convolutions; 0 for stream points)


def fake_quant_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Asymmetric 8-bit per-tensor quantize-dequantize with a range that contains 0."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-8) / 255.0
    zero = round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


# Weight levels each side of zero: 64 is ONNX Runtime's reduce_range, the 7-bit weights every ONNX int8 export ships
# (no 16-bit overflow on CPUs without VNNI); TFLite and OpenVINO use 127.
WEIGHT_LEVELS = 64


def fake_quant_weight(w: torch.Tensor, levels: int = WEIGHT_LEVELS) -> torch.Tensor:
    """Symmetric int8 per output channel (levels -levels..levels)."""
    scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / float(levels)
    return torch.clamp(torch.round(w / scale), -levels, levels) * scale


def _folded_pairs(model: nn.Module) -> dict[str, str]:
    """FAN's convolutions whose output feeds a BatchNorm and nothing else, by name: conv -> bn."""
    stacks = getattr(getattr(model, "config", None), "stacks", 0)
    return {"conv1": "bn1", **{f"conv_last{i}": f"bn_end{i}" for i in range(stacks)}}


class FakeQuantFAN:
    """A FAN plus calibrated activation ranges; :meth:`quantized` simulates int8 on any subset of its layers."""

    def __init__(self, model: nn.Module, estimator: str = "mean") -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown range estimator {estimator!r}; expected one of {ESTIMATORS}")
        self.model = model.eval()
        self.estimator = estimator
        self.convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.blocks = {n: m for n, m in model.named_modules() if isinstance(m, ConvBlock)}
        modules = dict(model.named_modules())
        self.folded = {n: modules[bn] for n, bn in _folded_pairs(model).items() if n in self.convs and bn in modules}
        self.ranges: dict[str, tuple[float, float]] = {}
        self.layers = self._layers()

    def _layers(self) -> list[Layer]:
        macs: dict[str, int] = {}
        hooks = [
            m.register_forward_hook(
                lambda mod, inp, out, n=n: macs.__setitem__(n, int(out[0].numel() * mod.in_channels // mod.groups * np.prod(mod.kernel_size)))
            )
            for n, m in self.convs.items()
        ]
        s = self.model.config.input_size
        try:
            with torch.no_grad():
                self.model(torch.zeros(1, 3, s, s))
        finally:
            for h in hooks:
                h.remove()
        convs = [Layer(n, "conv", macs.get(n, 0)) for n in self.convs if n in macs]
        return convs + [Layer(f"{n}.bn1", "stream", 0) for n in self.blocks]

    # ---- calibration ---------------------------------------------------------------------------------

    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Activation ranges of every point from ``batches`` of faces (statistics per face)."""
        low: dict[str, list[torch.Tensor]] = {}
        high: dict[str, list[torch.Tensor]] = {}

        def observe(key: str, x: torch.Tensor) -> None:
            flat = x.detach().flatten(1)
            low.setdefault(key, []).append(flat.amin(1))
            high.setdefault(key, []).append(flat.amax(1))

        hooks = []
        for n, m in self.convs.items():
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, n=n: observe(f"{n}:in", inp[0])))
            producer = self.folded.get(n, m)  # a folded conv's output is its BN's
            hooks.append(producer.register_forward_hook(lambda mod, inp, out, n=n: observe(f"{n}:out", out)))
        for n, m in self.blocks.items():
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, n=n: observe(f"{n}.bn1:in", inp[0])))
        try:
            with torch.no_grad():
                for batch in batches:
                    self.model(batch)
        finally:
            for h in hooks:
                h.remove()
        for key in low:
            lo, hi = torch.cat(low[key]), torch.cat(high[key])
            if self.estimator == "mean":
                self.ranges[key] = (float(lo.mean()), float(hi.mean()))
            else:
                self.ranges[key] = (float(lo.min()), float(hi.max()))

    # ---- simulation ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def quantized(self, layers: Iterable[str]) -> Iterator[nn.Module]:
        """The model with ``layers`` (names of :attr:`layers`) in simulated int8, restored on exit."""
        if not self.ranges:
            raise RuntimeError("calibrate() first")
        names = set(layers)
        unknown = names - {layer.name for layer in self.layers}
        if unknown:
            raise KeyError(f"unknown layers: {sorted(unknown)[:5]}")
        hooks = []
        saved: dict[str, torch.Tensor] = {}

        def act(key: str):
            lo, hi = self.ranges[key]
            return lambda t: fake_quant_activation(t, lo, hi)

        try:
            for n, m in self.convs.items():
                if n not in names:
                    continue
                saved[n] = m.weight.data
                bn = self.folded.get(n)
                if bn is None:
                    m.weight.data = fake_quant_weight(m.weight.data)
                else:  # quantize the BN-folded weights, then unfold (the BN after it scales them back)
                    k = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(-1, 1, 1, 1)
                    m.weight.data = fake_quant_weight(m.weight.data * k) / torch.where(k == 0, torch.ones_like(k), k)
                q_in, q_out = act(f"{n}:in"), act(f"{n}:out")
                hooks.append(m.register_forward_pre_hook(lambda mod, inp, q=q_in: (q(inp[0]), *inp[1:])))
                hooks.append((bn or m).register_forward_hook(lambda mod, inp, out, q=q_out: q(out)))
            for n, m in self.blocks.items():
                if f"{n}.bn1" in names:
                    q = act(f"{n}.bn1:in")
                    hooks.append(m.register_forward_pre_hook(lambda mod, inp, q=q: (q(inp[0]), *inp[1:])))
            yield self.model
        finally:
            for h in hooks:
                h.remove()
            for n, w in saved.items():
                self.convs[n].weight.data = w

    def names(self, kind: str | None = None) -> list[str]:
        return [layer.name for layer in self.layers if kind is None or layer.kind == kind]
