"""FAN's int8 recipe, shared by the three post-training quantizers (ONNX Runtime, NNCF for OpenVINO, ai-edge-quantizer
for TFLite). Measured, not guessed: docs/quantization.md has the commands and figures.

- **Ranges: per-face minima and maxima, averaged over the calibration faces.**
  FAN's activations (the residual stream, the concatenated block outputs)
  carry rare large values; a global min/max over batches of faces spends the
  8 bits on them (failing the 0.15-point tolerance on every target), a
  percentile clip or the mean of per-face extremes does not. Every target
  uses the mean of per-face extremes, each with its own library's
  estimator: ONNX Runtime MinMax with ``CalibMovingAverage``, NNCF
  ``MEAN_MINMAX``, ai-edge-quantizer's moving average, all fed one face per
  sample by
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

The options of one export are one object, :class:`Int8Recipe` (as ONNX
Runtime's are its ``StaticQuantConfig``): built and checked once by the
caller (``fan-export`` from ``--calib/--calib-faces/--int8-float/--int8-activations``
with :meth:`Int8Recipe.from_options`), given whole to
:func:`fan_edge.export.export_model` as ``int8``, made concrete for
each target (:meth:`Int8Recipe.for_target`), handed to that target's int8
function in :attr:`fan_edge.export.job.ExportJob.int8`, and recorded in the
artifact's contract (``extra["int8"]``, :meth:`Int8Recipe.record`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ExportError

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


# ---- the recipe of one export ---------------------------------------------------------------------

ACTIVATION_BITS = (8, 16)
W8A16_TARGETS = ("onnx",)  # targets with 16-bit activations and int8 weights (ONNX Runtime's QUInt16 QDQ)
# Range estimators: "mean_minmax", the mean over the calibration faces of each face's minimum and maximum (ONNX
# Runtime MinMax with CalibMovingAverage, NNCF MEAN_MINMAX, ai-edge-quantizer's moving average; see above).
METHODS = ("mean_minmax",)
DEFAULT_CALIB_FACES = 128
MAX_CALIB_FACES = 100_000


@dataclass(frozen=True)
class Int8Recipe:
    """How an export quantizes to int8, for every target: one frozen, checked object.

    - ``activation_bits``: 8, or 16 with int8 weights (W8A16: ONNX only; Qualcomm's NPU runs it natively) for a
      model whose 8-bit activations fail the tolerance; None: what the model card measured for the device
      (``export.int8_activations``, ONNX only), else 8 (:meth:`for_target` decides).
    - ``per_channel``: weights int8 per output channel (True) or per tensor, on every target.
    - ``method``: how activation ranges are estimated (:data:`METHODS`).
    - ``calib`` / ``calib_faces``: the calibration faces (a folder of images with .pts) and how many, spread over
      the folder (:func:`fan_edge.calibration.calibration_faces`); ``calib_faces`` None: what the model card
      measured (``export.calib_faces``), else :data:`DEFAULT_CALIB_FACES` (:meth:`with_card` decides). Core ML
      quantizes weights only and needs none.
    - ``keep_float``: PyTorch module-name patterns whose layers stay float, replacing :data:`FLOAT_LAYERS`
      (None: the target's own, measured list).
    - ``vnni_safe`` (ONNX, 8-bit activations): weights in 7 bits, so that x86 CPUs without VNNI never saturate
      the 16-bit sums of their uint8 x int8 kernels, and the graph is refused if one could
      (:mod:`fan_edge.export.int8_overflow`); False: full 8-bit weights, unchecked, for VNNI CPUs and NPUs only.

    Every value is checked here, at construction (one-line :class:`~fan_edge.errors.ExportError`); what depends on
    the targets is checked by :meth:`check`.
    """

    activation_bits: int | None = None
    per_channel: bool = True
    method: str = "mean_minmax"
    calib: str | None = None
    calib_faces: int | None = None
    keep_float: tuple[str, ...] | None = None
    vnni_safe: bool = True

    def __post_init__(self) -> None:
        bits = self.activation_bits
        if bits is not None and (isinstance(bits, bool) or bits not in ACTIVATION_BITS):
            raise ExportError(f"int8 activations are 8 or 16 bits, got {bits!r}")
        for name in ("per_channel", "vnni_safe"):
            if not isinstance(getattr(self, name), bool):
                raise ExportError(f"int8 recipe: {name} must be True or False, got {getattr(self, name)!r}")
        if self.method not in METHODS:
            raise ExportError(f"unknown int8 calibration method {self.method!r}; expected one of: {', '.join(METHODS)}")
        n = self.calib_faces
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CALIB_FACES):
            raise ExportError(f"calibration faces must be an integer from 1 to {MAX_CALIB_FACES}, got {n!r}")
        if self.calib is not None:
            if not isinstance(self.calib, (str, Path)) or not str(self.calib):
                raise ExportError(f"int8 recipe: calib must be a folder, got {self.calib!r}")
            object.__setattr__(self, "calib", str(self.calib))
        if self.keep_float is not None:
            if isinstance(self.keep_float, str) or not all(isinstance(p, str) for p in self.keep_float):
                raise ExportError(f"int8 float layers must be a list of module-name patterns, got {self.keep_float!r}")
            patterns = tuple(self.keep_float)
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ExportError(f"int8 float layer {pattern!r} is not a regular expression: {exc}") from None
            object.__setattr__(self, "keep_float", patterns)

    @classmethod
    def from_options(
        cls,
        *,
        calib: str | Path | None = None,
        calib_faces: int | None = None,
        int8_float: Sequence[str] | None = None,
        int8_activations: int | None = None,
    ) -> Int8Recipe:
        """The recipe of ``fan-export``'s options (``--calib``, ``--calib-faces``, ``--int8-float``, ``--int8-activations``)."""
        return cls(activation_bits=int8_activations, calib=calib, calib_faces=calib_faces,
                   keep_float=None if int8_float is None else tuple(int8_float))

    def check(self, target: str, precision: str, needs_calibration: bool = True) -> None:
        """Refuse, in one line, a recipe that ``target`` at ``precision`` cannot follow."""
        if self.activation_bits == 16 and (target not in W8A16_TARGETS or precision != "int8"):
            raise ExportError("16-bit activations (W8A16) are an ONNX int8 option: --target onnx --precision int8")
        if precision == "int8" and needs_calibration and self.calib is None:
            raise ExportError("int8 needs calibration faces: pass --calib DIR (images with .pts)")

    def with_card(self, card: dict[str, Any] | None) -> Int8Recipe:
        """This recipe with its calibration count decided: the options', else the model card's measured one
        (``export.calib_faces``: a model whose int8 needed more faces to pass), else :data:`DEFAULT_CALIB_FACES`."""
        if self.calib_faces is not None:
            return self
        return replace(self, calib_faces=card_calib_faces(card or {}))

    def for_target(self, target: str, card: dict[str, Any] | None = None, family: str = "cpu") -> Int8Recipe:
        """This recipe for one target, every choice made: the activation bits the options gave, else the model
        card's measurement for the device ``family`` ("cpu", "qnn") where the target has 16-bit activations, else 8."""
        bits = self.activation_bits
        if bits is None:
            bits = card_activation_bits(card or {}, family) if target in W8A16_TARGETS else 8
        return replace(self, activation_bits=bits)

    def float_layers(self, target: str) -> tuple[str, ...]:
        """The layer patterns ``target`` keeps float under this recipe."""
        return float_layers(target, self.keep_float)

    def record(self, target: str, weights_only: bool = False) -> dict[str, Any]:
        """What the artifact's contract records (``extra["int8"]``): the recipe as ``target`` followed it (the
        calibration folder by its name, never this machine's path). ``weights_only``: a target that quantizes weights
        alone (Core ML) records only what applies to it."""
        if weights_only:
            return {"weights_only": True, "per_channel": self.per_channel}
        entry: dict[str, Any] = {
            "activation_bits": self.activation_bits or 8,
            "per_channel": self.per_channel,
            "method": self.method,
            "calib": Path(self.calib).name if self.calib else None,
            "calib_faces": self.calib_faces if self.calib_faces is not None else DEFAULT_CALIB_FACES,
            "keep_float": list(self.float_layers(target)),
        }
        if target in W8A16_TARGETS:
            entry["vnni_safe"] = self.vnni_safe
        return entry


def card_calib_faces(card: dict[str, Any]) -> int:
    """The calibration count a model card prescribes (``export.calib_faces``), else :data:`DEFAULT_CALIB_FACES`."""
    export = card.get("export") if isinstance(card, dict) else None
    count = export.get("calib_faces") if isinstance(export, dict) else None
    valid = isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= MAX_CALIB_FACES
    return count if valid else DEFAULT_CALIB_FACES


def card_activation_bits(card: dict[str, Any], family: str) -> int:
    """The int8 activation bits a model card prescribes for a device family ("cpu", "qnn"), from its measurements."""
    export = card.get("export") if isinstance(card, dict) else None
    hint = export.get("int8_activations") if isinstance(export, dict) else None
    bits = hint.get(family, 8) if isinstance(hint, dict) else 8
    return bits if bits in ACTIVATION_BITS and not isinstance(bits, bool) else 8
