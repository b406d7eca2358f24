"""The preprocessing contract of an exported artifact: defined once, read by every runtime.

An artifact (``model.onnx``, ``model.xml``...) is useless without knowing how
to feed it and how to read what comes out: input size and layout, channel
order, value range, FAN's crop recipe, what the outputs are, how heatmaps
decode. :class:`ModelContract` holds all of it. The exporter writes it twice:
inside the artifact, in the format's own metadata (ONNX ``metadata_props``,
OpenVINO ``rt_info``) under :data:`METADATA_KEY`, and as a sidecar JSON beside
it (``ARTIFACT + ".json"``). :class:`fan_edge.runtime.session.LandmarkSession`
configures itself from it.

Metadata comes from files that anyone may have written, so parsing is
defensive: sizes are bounded, every field is type-checked, and any problem is
a one-line :class:`~fan_edge.errors.ContractError`. Unknown keys are kept (in
``extra``) rather than refused, so that an older runtime can still read an
artifact from a newer exporter that adds informational fields; a newer
``schema_version`` is refused.

Conventions of the outputs (see :mod:`fan_edge.runtime.decode`):

- ``outputs == "heatmaps"``: one output (N, K, H, W) float32; decode with
  ``decode_heatmaps(heatmaps, input_size, refine)``.
- ``outputs == "landmarks"``: decoding is inside the graph; two outputs,
  landmarks (N, K, 2) float32 as (x, y) in crop pixels (0-based pixel
  centres) and scores (N, K) float32 (the heatmap peak).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ContractError
from .crop import CropSpec
from .scheme import MIRROR_PAIRS

SCHEMA_VERSION = 1
# Key of the contract JSON in ONNX metadata_props; OpenVINO rt_info path is RT_INFO_PATH.
METADATA_KEY = "fan_edge.contract"
RT_INFO_PATH = ("fan_edge", "contract")
SIDECAR_SUFFIX = ".json"

MAX_JSON_BYTES = 1 << 20  # a contract is a few kB; anything near this is not one
MAX_CARD_BYTES = 64 << 10
MAX_TEXT = 1000

OUTPUT_KINDS = ("heatmaps", "landmarks")
OUTPUT_ROLES = {"heatmaps": ("heatmaps",), "landmarks": ("landmarks", "scores")}
PRECISIONS = ("fp32", "fp16", "int8")
LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB",)
REFINEMENTS = ("quarter", "gaussian")


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"contract field {name} must be an integer, got {_short(value)}")
    if not lo <= value <= hi:
        raise ContractError(f"contract field {name} must be in {lo}..{hi}, got {value}")
    return value


def _check_str(name: str, value: Any, choices: tuple[str, ...] | None = None, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ContractError(f"contract field {name} must be a string, got {_short(value)}")
    if len(value) > max_len:
        raise ContractError(f"contract field {name} is longer than {max_len} characters")
    if choices is not None and value not in choices:
        raise ContractError(f"contract field {name} must be one of {', '.join(choices)}, got {_short(value)}")
    return value


def _check_object(name: str, value: Any, max_bytes: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContractError(f"contract field {name} must be a JSON object, got {_short(value)}")
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ContractError(f"contract field {name} is not plain JSON ({exc})") from None
    if size > max_bytes:
        raise ContractError(f"contract field {name} is {size} bytes, more than {max_bytes}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class ModelContract:
    """Everything a runtime needs to feed an artifact and read its outputs.

    ``batch`` is None for a dynamic batch axis, else the fixed batch size.
    ``output_names`` lists the graph's output names in the order of the roles
    of :data:`OUTPUT_ROLES` for ``outputs``. ``verification`` is the parity
    report of the export (sidecar only: it is measured after the artifact is
    written).
    """

    input_size: int
    heatmap_size: int
    outputs: str = "heatmaps"
    refine: str = "quarter"
    num_landmarks: int = 68
    crop: CropSpec = field(default_factory=CropSpec)
    layout: str = "NCHW"
    channel_order: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    input_name: str = "input"
    output_names: tuple[str, ...] = ("heatmaps",)
    batch: int | None = None
    mirror_pairs: tuple[tuple[int, int], ...] = MIRROR_PAIRS
    model: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    target: str = ""
    fan_edge_version: str = ""
    schema_version: int = SCHEMA_VERSION
    verification: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_int("schema_version", self.schema_version, 1, SCHEMA_VERSION)
        _check_int("input_size", self.input_size, 1, 8192)
        _check_int("heatmap_size", self.heatmap_size, 1, self.input_size)
        _check_int("num_landmarks", self.num_landmarks, 1, 10000)
        _check_str("outputs", self.outputs, OUTPUT_KINDS)
        _check_str("refine", self.refine, REFINEMENTS)
        _check_str("layout", self.layout, LAYOUTS)
        _check_str("channel_order", self.channel_order, CHANNEL_ORDERS)
        _check_str("precision", self.precision, PRECISIONS)
        for name in ("input_name", "model", "target", "fan_edge_version"):
            _check_str(name, getattr(self, name))
        if not isinstance(self.crop, CropSpec):
            raise ContractError(f"contract field crop must be a CropSpec, got {_short(self.crop)}")
        vr = self.value_range
        if (
            not isinstance(vr, (tuple, list))
            or len(vr) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vr)
            or not vr[0] < vr[1]
        ):
            raise ContractError(f"contract field value_range must be two finite increasing numbers, got {_short(vr)}")
        object.__setattr__(self, "value_range", (float(vr[0]), float(vr[1])))
        names = self.output_names
        roles = OUTPUT_ROLES[self.outputs]
        if not isinstance(names, (tuple, list)) or len(names) != len(roles):
            raise ContractError(f"contract field output_names must list {len(roles)} names ({', '.join(roles)}) for {self.outputs} outputs")
        object.__setattr__(self, "output_names", tuple(_check_str("output_names", n) for n in names))
        if self.batch is not None:
            _check_int("batch", self.batch, 1, 1 << 16)
        pairs = self.mirror_pairs
        if not isinstance(pairs, (tuple, list)) or len(pairs) > self.num_landmarks:
            raise ContractError("contract field mirror_pairs must be a list of index pairs")
        checked = []
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ContractError(f"contract field mirror_pairs holds {_short(pair)}, not an index pair")
            checked.append(tuple(_check_int("mirror_pairs", i, 0, self.num_landmarks - 1) for i in pair))
        object.__setattr__(self, "mirror_pairs", tuple(checked))
        _check_object("config", self.config, MAX_CARD_BYTES)
        _check_object("card", self.card, MAX_CARD_BYTES)
        if self.verification is not None:
            _check_object("verification", self.verification, MAX_CARD_BYTES)
        _check_object("extra", self.extra, MAX_CARD_BYTES)

    # ---- derived facts -------------------------------------------------------------------------

    @property
    def heatmap_stride(self) -> float:
        """Crop pixels per heatmap cell (4 for FAN)."""
        return self.input_size / self.heatmap_size

    def output_name(self, role: str) -> str:
        """Graph output name of ``role`` ("heatmaps", or "landmarks" and "scores")."""
        roles = OUTPUT_ROLES[self.outputs]
        if role not in roles:
            raise ContractError(f"a {self.outputs} artifact has no {role} output")
        return self.output_names[roles.index(role)]

    def replace(self, **changes: Any) -> "ModelContract":
        return dataclasses.replace(self, **changes)

    # ---- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "crop":
                value = value.to_dict()
            elif f.name in ("value_range", "output_names"):
                value = list(value)
            elif f.name == "mirror_pairs":
                value = [list(p) for p in value]
            elif f.name == "verification" and value is None:
                continue
            d[f.name] = value
        d["heatmap_stride"] = self.heatmap_stride
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelContract":
        if not isinstance(data, dict):
            raise ContractError(f"contract must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise ContractError(
                f"contract schema_version {version} is newer than this fan-edge understands ({SCHEMA_VERSION}); upgrade fan-edge"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for required in ("input_size", "heatmap_size"):
            if required not in data:
                raise ContractError(f"contract has no {required}")
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "heatmap_stride"}
        if "crop" in values:
            try:
                values["crop"] = CropSpec.from_dict(values["crop"])
            except ValueError as exc:
                raise ContractError(f"contract field crop: {exc}") from None
        for key in ("value_range", "output_names", "mirror_pairs"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
        if "output_names" not in values and values.get("outputs") in OUTPUT_ROLES:
            values["output_names"] = OUTPUT_ROLES[values["outputs"]]
        try:
            contract = cls(**values, extra=extra)
        except TypeError as exc:
            raise ContractError(f"bad contract: {exc}") from None
        stride = data.get("heatmap_stride")
        if stride is not None and (
            isinstance(stride, bool) or not isinstance(stride, (int, float)) or abs(stride - contract.heatmap_stride) > 1e-6
        ):
            raise ContractError(
                f"contract heatmap_stride {_short(stride)} disagrees with input_size/heatmap_size ({contract.heatmap_stride})"
            )
        return contract

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelContract":
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ContractError("contract is not UTF-8 text") from None
        if not isinstance(text, str):
            raise ContractError(f"contract must be JSON text, got {type(text).__name__}")
        if len(text) > MAX_JSON_BYTES:
            raise ContractError(f"contract is {len(text)} bytes, more than {MAX_JSON_BYTES}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ContractError(f"contract is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
        return cls.from_dict(data)


def sidecar_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    p = Path(artifact)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_sidecar(artifact: str | Path) -> ModelContract | None:
    """The contract in the sidecar beside ``artifact``, or None when there is no sidecar."""
    path = sidecar_path(artifact)
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ContractError(f"{path}: larger than {MAX_JSON_BYTES} bytes, not a contract")
    try:
        return ModelContract.from_json(path.read_bytes())
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from None
