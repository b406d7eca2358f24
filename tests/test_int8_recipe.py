"""The int8 recipe of an export: one frozen, checked object (fan_edge.export.int8.Int8Recipe), made concrete per
target, handed to each target's int8 function, and recorded in the artifact's contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fan_edge.errors import ExportError
from fan_edge.export import Int8Recipe, export_model
from fan_edge.export.int8 import card_activation_bits
from fan_edge.rows import Status


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(activation_bits=12), "int8 activations are 8 or 16 bits, got 12"),
        (dict(activation_bits=True), "int8 activations are 8 or 16 bits, got True"),
        (dict(per_channel="yes"), "int8 recipe: per_channel must be True or False, got 'yes'"),
        (dict(vnni_safe=None), "int8 recipe: vnni_safe must be True or False, got None"),
        (dict(method="percentile"), "unknown int8 calibration method 'percentile'; expected one of: mean_minmax"),
        (dict(calib_faces=0), "calibration faces must be an integer from 1 to 100000, got 0"),
        (dict(calib_faces=4.5), "calibration faces must be an integer from 1 to 100000, got 4.5"),
        (dict(calib=""), "int8 recipe: calib must be a folder, got ''"),
        (dict(keep_float="conv1"), "int8 float layers must be a list of module-name patterns, got 'conv1'"),
        (dict(keep_float=["conv_last(1"]), "int8 float layer 'conv_last(1' is not a regular expression"),
    ],
)
def test_every_value_is_checked_once_in_one_line(kwargs, expected):
    with pytest.raises(ExportError) as info:
        Int8Recipe(**kwargs)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_recipe_is_frozen_and_made_concrete_per_target(tmp_path):
    recipe = Int8Recipe.from_options(calib=tmp_path / "helen_train", calib_faces=4, int8_float=["conv1", "l0"])
    assert recipe == Int8Recipe(calib=str(tmp_path / "helen_train"), calib_faces=4, keep_float=("conv1", "l0"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.per_channel = False  # type: ignore[misc]
    # Activation bits: the options', else the model card's measurement for the device where the target has W8A16.
    card = {"export": {"int8_activations": {"qnn": 16, "cpu": 8}}}
    assert recipe.for_target("onnx", card, "qnn").activation_bits == 16
    assert recipe.for_target("onnx", card, "cpu").activation_bits == 8
    assert recipe.for_target("tflite", card, "qnn").activation_bits == 8  # no W8A16 there: never from a card
    assert dataclasses.replace(recipe, activation_bits=8).for_target("onnx", card, "qnn").activation_bits == 8
    assert card_activation_bits({"export": {"int8_activations": {"cpu": 4}}}, "cpu") == 8  # a card's nonsense is 8
    # What the contract records: the choices as the target followed them, the calibration folder by its name only.
    onnx = recipe.for_target("onnx", card, "qnn").record("onnx")
    assert onnx == {"activation_bits": 16, "per_channel": True, "method": "mean_minmax", "calib": "helen_train",
                    "calib_faces": 4, "keep_float": ["conv1", "l0"], "vnni_safe": True}
    assert "vnni_safe" not in recipe.for_target("openvino").record("openvino")
    assert Int8Recipe().for_target("openvino").record("openvino")["keep_float"] == []  # the target's own list
    assert recipe.record("coreml", weights_only=True) == {"weights_only": True, "per_channel": True}
    json.dumps(onnx)


def test_what_the_targets_cannot_follow_is_refused():
    w8a16 = Int8Recipe(activation_bits=16, calib="faces")
    w8a16.check("onnx", "int8")
    for target, precision in (("tflite", "int8"), ("openvino", "int8"), ("onnx", "fp16")):
        with pytest.raises(ExportError, match=r"16-bit activations \(W8A16\) are an ONNX int8 option"):
            w8a16.check(target, precision)
    with pytest.raises(ExportError, match=r"int8 needs calibration faces: pass --calib DIR"):
        Int8Recipe().check("onnx", "int8")
    Int8Recipe().check("coreml", "int8", needs_calibration=False)  # weights only
    Int8Recipe().check("onnx", "fp32")


def test_onnx_runtimes_form_of_the_recipe():
    pytest.importorskip("onnxruntime")
    from fan_edge.export.onnx_export import OnnxInt8Recipe, onnx_int8_recipe

    assert onnx_int8_recipe(Int8Recipe()) == onnx_int8_recipe(None) == OnnxInt8Recipe()  # U8S8, 7-bit weights, checked
    w8a16 = onnx_int8_recipe(Int8Recipe(activation_bits=16, keep_float=("l0",)))
    assert (w8a16.activation_type, w8a16.reduce_range, w8a16.check_overflow, w8a16.keep_float) == ("QUInt16", False, True, ("l0",))
    vnni = onnx_int8_recipe(Int8Recipe(vnni_safe=False, per_channel=False))
    assert (vnni.activation_type, vnni.reduce_range, vnni.check_overflow, vnni.per_channel) == ("QUInt8", False, False, False)


def test_the_recipe_is_the_only_way_to_give_int8_options(tiny_checkpoint, synthetic_faces, tmp_path):
    """No loose calib/calib_faces/int8_float/int8_activations keywords beside ``int8``: one typed seam."""
    for loose in (dict(calib=synthetic_faces), dict(calib_faces=4), dict(int8_float=["conv1"]), dict(int8_activations=16)):
        with pytest.raises(TypeError):
            export_model(str(tiny_checkpoint), "onnx", "int8", verify=False, output=tmp_path / "x.onnx", **loose)
    with pytest.raises(ExportError, match="int8 must be an Int8Recipe, got dict"):
        export_model(str(tiny_checkpoint), "onnx", "int8", int8={"calib": str(synthetic_faces)}, verify=False,
                     output=tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_export_follows_and_records_its_recipe(tiny_checkpoint, synthetic_faces, tmp_path):
    """Per-tensor, full-range (not VNNI-safe) weights: what the graph holds and what its contract says; the fp32
    artifact of the same call records no int8 recipe."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from fan_edge.runtime.contract import METADATA_KEY, ModelContract, read_sidecar

    recipe = Int8Recipe(calib=Path(synthetic_faces), calib_faces=4, per_channel=False, vnni_safe=False)
    fp32, int8 = export_model(str(tiny_checkpoint), "onnx", "fp32,int8", int8=recipe, verify=False, output=tmp_path)
    assert fp32.status is int8.status is Status.NOT_VERIFIED  # no faces asked for: never compared with PyTorch
    assert "int8" not in fp32.contract.extra
    expected = {"activation_bits": 8, "per_channel": False, "method": "mean_minmax", "calib": Path(synthetic_faces).name,
                "calib_faces": 4, "keep_float": [], "vnni_safe": False}
    assert int8.contract.extra["int8"] == expected == read_sidecar(int8.path).extra["int8"]
    model = onnx.load(str(int8.path))
    embedded = ModelContract.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert embedded.extra["int8"] == expected
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].dtype.name == "int8" and inits[n.input[0]].ndim == 4]
    assert weights and all(inits[n.input[1]].ndim == 0 for n in weights)  # one scale per tensor
    assert max(int(abs(inits[n.input[0]].astype(int)).max()) for n in weights) > 64  # full 8-bit range, unchecked


def test_the_calibration_count_is_the_options_else_the_cards_measured_one(tiny_checkpoint, synthetic_faces, tmp_path):
    """A model whose int8 needed more calibration faces to pass says so in its card (``export.calib_faces``); an
    export without --calib-faces follows it, one with it follows the option, and a card's nonsense is the default."""
    from fan_edge.export.int8 import DEFAULT_CALIB_FACES, card_calib_faces
    from fan_edge.models import create_model, save_checkpoint

    card = {"export": {"calib_faces": 5}}
    assert Int8Recipe().with_card(card).calib_faces == 5
    assert Int8Recipe(calib_faces=3).with_card(card).calib_faces == 3
    assert Int8Recipe().with_card({}).calib_faces == DEFAULT_CALIB_FACES
    for nonsense in (0, -1, True, "256", 10**9, None):
        assert card_calib_faces({"export": {"calib_faces": nonsense}}) == DEFAULT_CALIB_FACES
    assert Int8Recipe().record("tflite")["calib_faces"] == DEFAULT_CALIB_FACES  # never recorded as undecided

    hinted = save_checkpoint(create_model(str(tiny_checkpoint)), tmp_path / "hinted.safetensors", card)
    (result,) = export_model(str(hinted), "onnx", "int8", int8=Int8Recipe(calib=Path(synthetic_faces)), verify=False,
                             output=tmp_path / "h.onnx")
    assert result.contract.extra["int8"]["calib_faces"] == 5
