"""Property tests of the preprocessing contract's parser: hostile metadata never escapes as anything but ContractError.

The contract is read from files anyone may have written (ONNX metadata_props,
OpenVINO rt_info, TFLite metadata, sidecar JSON): arbitrary JSON values,
valid contracts with one field replaced by anything, deep nesting, numbers
beyond float range, NaN spelled in JSON, and raw bytes. Valid contracts
round-trip through their JSON. (The coverage-guided fuzzer of the same parser
is fuzz/fuzz_artifact.py --target=contract.)
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fan_edge.errors import ContractError
from fan_edge.runtime.contract import (
    CROP_SIDE_RATIO,
    MAX_DEPTH,
    MAX_INPUT_SIZE,
    MAX_JSON_BYTES,
    OUTPUT_ROLES,
    ModelContract,
    read_sidecar,
    sidecar_path,
)
from fan_edge.runtime.crop import CropSpec
from fan_edge.runtime.scheme import MIRROR_PAIRS

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "input_size", "heatmap_size", "outputs", "refine", "num_landmarks", "crop", "layout", "channel_order", "value_range",
    "input_name", "output_names", "batch", "mirror_pairs", "model", "config", "card", "precision", "target",
    "fan_edge_version", "schema_version", "verification", "heatmap_stride", "an_unknown_field",
]


def _valid() -> dict:
    return json.loads(ModelContract(input_size=128, heatmap_size=32, model="fan1", card={"figures": {"nme": 4.1}}).to_json())


def _parse(value) -> ModelContract | None:
    """from_dict on ``value``: a contract, or None when refused with a one-line ContractError (anything else fails)."""
    try:
        contract = ModelContract.from_dict(value)
    except ContractError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
        return None
    assert ModelContract.from_json(contract.to_json()) == contract, "a parsed contract does not round-trip"
    return contract


@FAST
@given(json_values)
def test_arbitrary_json_values_are_contracts_or_contract_errors(value):
    _parse(value)
    try:
        text = json.dumps(value)
    except (ValueError, OverflowError):
        return
    try:
        ModelContract.from_json(text)
    except ContractError:
        pass


@FAST
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_one_field_replaced_by_anything(field, value):
    data = _valid()
    data[field] = value
    contract = _parse(data)
    if contract is not None and field in ("input_size", "heatmap_size", "num_landmarks", "batch"):
        value = getattr(contract, field)
        assert (value is None and field == "batch") or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


@FAST
@given(st.binary(max_size=300))
def test_raw_bytes_never_escape(data):
    try:
        ModelContract.from_json(data)
    except ContractError:
        pass


@st.composite
def valid_contracts(draw) -> ModelContract:
    heatmap = draw(st.integers(1, 128))
    outputs = draw(st.sampled_from(sorted(OUTPUT_ROLES)))
    k = draw(st.integers(1, 200))
    window = draw(st.floats(1.0, 1000.0))
    lo, hi = CROP_SIDE_RATIO
    reference = draw(st.floats(window / hi, window / lo))
    return ModelContract(
        input_size=draw(st.integers(heatmap, MAX_INPUT_SIZE)),
        heatmap_size=heatmap,
        outputs=outputs,
        refine=draw(st.sampled_from(["quarter", "gaussian"])),
        num_landmarks=k,
        crop=CropSpec(reference_scale=reference, center_shift=draw(st.floats(-1.0, 1.0)), window=window),
        layout=draw(st.sampled_from(["NCHW", "NHWC"])),
        value_range=tuple(sorted(draw(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2, unique=True)))),
        output_names=tuple(draw(st.lists(st.text(min_size=1, max_size=10), min_size=len(OUTPUT_ROLES[outputs]),
                                         max_size=len(OUTPUT_ROLES[outputs]), unique=True))),
        batch=draw(st.none() | st.integers(1, 64)),
        mirror_pairs=tuple(draw(st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), max_size=min(k, 10)))),
        model=draw(st.text(max_size=30)),
        card=draw(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3)),
        precision=draw(st.sampled_from(["fp32", "fp16", "int8"])),
    )


@FAST
@given(valid_contracts())
def test_valid_contracts_round_trip(contract):
    text = contract.to_json()
    assert ModelContract.from_json(text) == contract
    assert ModelContract.from_json(text.encode()) == contract
    assert json.loads(text)["heatmap_stride"] == contract.input_size / contract.heatmap_size


@pytest.mark.parametrize("where", ["card", "config", "extra_field", "verification"])
def test_deep_nesting_is_refused(where):
    nested: object = 1
    for _ in range(MAX_DEPTH + 1):
        nested = [nested]
    data = _valid()
    data[where] = {"x": nested}
    with pytest.raises(ContractError, match="nested more than"):
        ModelContract.from_dict(data)
    with pytest.raises(ContractError):
        ModelContract.from_json("[" * 50_000 + "]" * 50_000)


@pytest.mark.parametrize(
    "field, value",
    [
        ("input_size", 10**30),
        ("input_size", MAX_INPUT_SIZE + 1),
        ("value_range", [0, 10**400]),
        ("heatmap_stride", 10**400),
        ("heatmap_stride", float("nan")),
        ("crop", {"reference_scale": 10**400}),
        ("crop", {"reference_scale": 1e-300}),
        ("crop", {"window": 1e300}),
        ("crop", {"center_shift": 5.0}),
        ("num_landmarks", 0),
        ("output_names", ["same", "same"]),
        ("batch", 0),
    ],
)
def test_numbers_out_of_range_are_refused(field, value):
    data = _valid()
    if field == "output_names":
        data["outputs"] = "landmarks"
    data[field] = value
    with pytest.raises(ContractError) as info:
        ModelContract.from_dict(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spelling", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_numbers_are_refused(spelling):
    text = json.dumps(_valid()).replace('"card": {', f'"card": {{"x": {spelling}, ', 1)
    with pytest.raises(ContractError, match="not standard JSON"):
        ModelContract.from_json(text)


def test_mirror_pairs_default_follows_the_landmark_count():
    assert ModelContract(input_size=128, heatmap_size=32).mirror_pairs == MIRROR_PAIRS  # 29 pairs; 10 points on the axis
    five = ModelContract(input_size=16, heatmap_size=4, num_landmarks=5)
    assert five.mirror_pairs == ()
    data = json.loads(five.to_json())
    del data["mirror_pairs"]
    assert ModelContract.from_dict(data) == five


def test_oversized_sidecar_is_refused_before_reading(tmp_path):
    artifact = tmp_path / "m.onnx"
    side = sidecar_path(artifact)
    with open(side, "wb") as fh:  # sparse: MAX_JSON_BYTES + 1 bytes of nothing, never read
        fh.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(ContractError, match="larger than"):
        read_sidecar(artifact)


def test_unreadable_sidecar_is_a_contract_error(tmp_path, monkeypatch):
    artifact = tmp_path / "m.onnx"
    sidecar_path(artifact).write_text(json.dumps(_valid()))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("fan_edge.runtime.contract.open", refuse, raising=False)  # as for a file root cannot read either
    with pytest.raises(ContractError, match="cannot be read"):
        read_sidecar(artifact)


def test_finite_checks_do_not_overflow():
    data = _valid()
    data["value_range"] = [-(10**400), 0]
    with pytest.raises(ContractError, match="value_range"):
        ModelContract.from_dict(data)
