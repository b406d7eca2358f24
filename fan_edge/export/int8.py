"""FAN's int8 recipe, shared by the three post-training quantizers (ONNX Runtime, NNCF for OpenVINO, ai-edge-quantizer
for TFLite). Measured on the bundled default (docs/quantization.md has the commands and tables).

- **Ranges: per-face minima and maxima, averaged over the calibration faces.**
  FAN's activations (the residual stream, the concatenated block outputs)
  carry rare large values; a global min/max over batches of faces spends the
  8 bits on them (ΔNME on AFW +0.57 ONNX, +0.36 OpenVINO, +0.35 TFLite,
  failing the 0.15-point tolerance), a percentile clip or the mean of
  per-face extremes does not. Every target uses the mean of per-face extremes,
  each with its own library's estimator: ONNX Runtime MinMax with
  ``CalibMovingAverage``, NNCF ``MEAN_MINMAX``, ai-edge-quantizer's moving
  average, all fed one face per sample by
  :class:`fan_edge.calibration.FaceCrops` (faces chosen to cover pose and
  lighting, :func:`fan_edge.calibration.calibration_faces`).
- **Layers kept float: by measured sensitivity, per target** (:data:`FLOAT_LAYERS`),
  from ``fan-quantize --sensitivity`` (:mod:`fan_edge.quantize.sensitivity`),
  which quantizes one layer at a time in a fake-quant simulation and ranks
  layers by the ΔNME they cause. Weights are int8 per output channel,
  activations uint8 (ONNX Runtime, OpenVINO) or int8 (TFLite) per tensor.

Layers are named by their PyTorch module (``m0.b1_4.conv2``, ``l1``); the
exporters find the matching node in each format (ONNX: the convolution whose
weight initializer is ``NAME.weight``; OpenVINO: the Convolution whose weight
constant carries that name; TFLite: the op whose scope names the module path).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Convolutions (by PyTorch module name, regular expressions) each target keeps float. Empty: every convolution int8.
# Measured on the bundled default (docs/quantization.md): with the ranges above no layer needs to stay float on any
# target (the sensitivity report's whole-model ΔNME is within its 0.05-point budget; the most sensitive points,
# conv_last1 and the stream into top_m_1, cost under 0.15 pp alone), and each float layer costs speed.
FLOAT_LAYERS: dict[str, tuple[str, ...]] = {
    "onnx": (),
    "openvino": (),
    "tflite": (),
}


def float_layers(target: str, override: Sequence[str] | None = None) -> tuple[str, ...]:
    """The layer patterns ``target`` keeps float (``override`` replaces the recipe's)."""
    return tuple(override) if override is not None else FLOAT_LAYERS.get(target, ())


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether the module ``name`` matches one of ``patterns`` (full match)."""
    return any(re.fullmatch(p, name) for p in patterns)


def is_float_conv_weight(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` is the weight (``MODULE.weight``) of a convolution that ``patterns`` keep float."""
    return name.endswith(".weight") and matches(name[: -len(".weight")], patterns)


def tflite_scope(name: str) -> str:
    """A regular expression for the ai-edge-quantizer scope of the ops of the PyTorch module ``name``.

    litert-torch names tensors by module path, each step ``Class_attribute``
    (``.../HourGlass_m0/ConvBlock_b1_4/Conv2d_conv2;1``); an op's scope is
    its output tensor names, each followed by ``;``.
    """
    steps = "/".join(rf"[^/;]*_{re.escape(part)}" for part in name.split("."))
    return rf"FAN_module/{steps}(;\d*)?;?$"
