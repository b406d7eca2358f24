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
defensive: sizes are bounded (the JSON text, a sidecar before it is read,
each free-form object), nesting is at most :data:`MAX_DEPTH` deep, JSON's
non-standard NaN and Infinity are refused, every field is type- and
range-checked (sizes, counts, indices, finite numbers, the crop recipe within
sane bounds), and any problem is a one-line
:class:`~fan_edge.errors.ContractError`. Unknown keys are kept (in
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

from .. import limits
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
MAX_DEPTH = 32  # nesting of JSON objects and arrays; fan-edge writes 4
# Input size, landmark count and a fixed batch within the bounds every FANConfig obeys (fan_edge.limits): an
# artifact's contract cannot ask the runtime for more than a config could.
MAX_INPUT_SIZE = limits.MAX_INPUT_SIZE
MAX_LANDMARKS = limits.MAX_LANDMARKS
# The crop recipe (runtime/crop.py): side = window * (w + h) / reference_scale, centre moved up by center_shift * h.
# FAN's 195 / 0.12 / 200; the bounds refuse recipes whose crops would be degenerate or absurd.
CROP_SIDE_RATIO = (0.05, 20.0)  # window / reference_scale: the crop side over (w + h) of the box
MAX_CENTER_SHIFT = 1.0  # in box heights

# The fields that change what a session computes from an image (how it crops, feeds, runs and decodes): where the
# sidecar and the contract inside the artifact both exist, they must agree on these (read_contract in session.py).
RESULT_FIELDS = (
    "input_size", "heatmap_size", "outputs", "refine", "num_landmarks", "crop", "layout", "channel_order",
    "value_range", "input_name", "output_names", "batch", "mirror_pairs",
)

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
        raise ContractError(f"contract field {name} must be in {lo}..{hi}, got {_short(value)}")
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
    except (TypeError, ValueError, RecursionError) as exc:
        raise ContractError(f"contract field {name} is not plain JSON ({exc})") from None
    if size > max_bytes:
        raise ContractError(f"contract field {name} is {size} bytes, more than {max_bytes}")
    return value


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a deep structure; an int past the digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _finite_number(value: Any) -> bool:
    """A real, finite int or float (an int too large for a float is not finite here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def json_depth(data: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of JSON-like ``data`` (a scalar is 0), counted up to ``limit + 1`` and without recursion, so
    that any depth is safe to measure."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            deepest = max(deepest, depth)
            if depth > limit:
                break
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_depth(data: Any) -> None:
    if json_depth(data) > MAX_DEPTH:
        raise ContractError(f"contract is nested more than {MAX_DEPTH} levels deep")


def _check_crop(crop: Any) -> None:
    if not isinstance(crop, CropSpec):
        raise ContractError(f"contract field crop must be a CropSpec, got {_short(crop)}")
    values = (crop.reference_scale, crop.window, crop.center_shift)
    if not all(_finite_number(v) for v in values) or crop.reference_scale <= 0 or crop.window <= 0:
        raise ContractError("contract field crop needs finite numbers, reference_scale and window positive")
    ratio = crop.window / crop.reference_scale
    lo, hi = CROP_SIDE_RATIO
    if not lo <= ratio <= hi:
        raise ContractError(f"contract field crop: window / reference_scale is {ratio:.3g}, outside {lo}..{hi}")
    if abs(crop.center_shift) > MAX_CENTER_SHIFT:
        raise ContractError(
            f"contract field crop: center_shift {crop.center_shift:.3g} is more than {MAX_CENTER_SHIFT} box heights"
        )


def _refuse_constant(name: str) -> Any:
    raise ContractError(f"contract is not standard JSON ({name} is not a JSON number)")


@dataclass(frozen=True)
class ModelContract:
    """Everything a runtime needs to feed an artifact and read its outputs.

    ``batch`` is None for a dynamic batch axis, else the fixed batch size.
    ``output_names`` lists the graph's output names in the order of the roles
    of :data:`OUTPUT_ROLES` for ``outputs``. ``mirror_pairs`` None means
    FAN's 68-point pairs for 68 landmarks, none otherwise. ``verification`` is the parity
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
    mirror_pairs: tuple[tuple[int, int], ...] | None = None
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
        _check_int("input_size", self.input_size, 1, MAX_INPUT_SIZE)
        _check_int("heatmap_size", self.heatmap_size, 1, self.input_size)
        _check_int("num_landmarks", self.num_landmarks, 1, MAX_LANDMARKS)
        _check_str("outputs", self.outputs, OUTPUT_KINDS)
        _check_str("refine", self.refine, REFINEMENTS)
        _check_str("layout", self.layout, LAYOUTS)
        _check_str("channel_order", self.channel_order, CHANNEL_ORDERS)
        _check_str("precision", self.precision, PRECISIONS)
        for name in ("input_name", "model", "target", "fan_edge_version"):
            _check_str(name, getattr(self, name))
        _check_crop(self.crop)
        vr = self.value_range
        if not isinstance(vr, (tuple, list)) or len(vr) != 2 or not all(_finite_number(v) for v in vr) or not vr[0] < vr[1]:
            raise ContractError(f"contract field value_range must be two finite increasing numbers, got {_short(vr)}")
        object.__setattr__(self, "value_range", (float(vr[0]), float(vr[1])))
        names = self.output_names
        roles = OUTPUT_ROLES[self.outputs]
        if not isinstance(names, (tuple, list)) or len(names) != len(roles):
            raise ContractError(f"contract field output_names must list {len(roles)} names ({', '.join(roles)}) for {self.outputs} outputs")
        object.__setattr__(self, "output_names", tuple(_check_str("output_names", n) for n in names))
        if len(set(self.output_names)) != len(self.output_names):
            raise ContractError(f"contract field output_names repeats a name: {_short(list(self.output_names))}")
        if self.batch is not None:
            _check_int("batch", self.batch, 1, limits.MAX_BATCH_SIZE)
        if self.mirror_pairs is None:
            object.__setattr__(self, "mirror_pairs", MIRROR_PAIRS if self.num_landmarks == 68 else ())
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

    def result_differences(self, other: "ModelContract") -> list[str]:
        """The :data:`RESULT_FIELDS` on which ``other`` differs from this contract (informational fields such as the
        model card, the version or the verification record are not compared)."""
        return [f for f in RESULT_FIELDS if getattr(self, f) != getattr(other, f)]

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
        _check_depth(data)
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
            except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: an integer too large for a float
                raise ContractError(f"contract field crop: {_short(str(exc))}") from None
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
        if stride is not None and (not _finite_number(stride) or not abs(float(stride) - contract.heatmap_stride) <= 1e-6):
            raise ContractError(
                f"contract heatmap_stride {_short(stride)} disagrees with input_size/heatmap_size ({contract.heatmap_stride})"
            )
        return contract

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelContract":
        if isinstance(text, (bytes, bytearray)):
            if len(text) > MAX_JSON_BYTES:
                raise ContractError(f"contract is {len(text)} bytes, more than {MAX_JSON_BYTES}")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ContractError("contract is not UTF-8 text") from None
        if not isinstance(text, str):
            raise ContractError(f"contract must be JSON text, got {type(text).__name__}")
        if len(text) > MAX_JSON_BYTES:
            raise ContractError(f"contract is {len(text)} bytes, more than {MAX_JSON_BYTES}")
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ContractError(f"contract is not valid JSON ({first[:120]})") from None
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
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ContractError(f"larger than {MAX_JSON_BYTES} bytes, not a contract")
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)  # bounded even if the file grew since stat
        return ModelContract.from_json(data)
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ContractError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
