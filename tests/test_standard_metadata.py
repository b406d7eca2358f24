"""Each format's standard self-description: TFLite's TFLITE_METADATA, ONNX's doc strings and version.

The TFLite metadata is read back with the metadata schema's own generated
bindings, and with the TFLite Support library's ``MetadataDisplayer`` where
it is installed (CI installs it: ``FAN_EDGE_REQUIRE_TFLITE_SUPPORT=1``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("litert_torch", reason="TFLite export needs the tflite extra: pip install -c constraints.txt -e '.[tflite]'")
pytest.importorskip("ai_edge_litert", reason="the LiteRT backend needs ai-edge-litert (the tflite extra)")

from fan_edge.export import Int8Recipe, export_model  # noqa: E402
from fan_edge.export.descriptions import CONTRACT_FILE, LICENSE, numeric_version  # noqa: E402
from fan_edge.export.third_party.tflite_metadata import schema as md  # noqa: E402
from fan_edge.export.tflite_metadata import associated_files, read_model_metadata  # noqa: E402
from fan_edge.rows import Status  # noqa: E402
from fan_edge.runtime.contract import ModelContract  # noqa: E402
from fan_edge.runtime.session import LandmarkSession, read_contract  # noqa: E402


@pytest.fixture(scope="module")
def tflite_pair(tmp_path_factory, tiny_checkpoint, synthetic_faces) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tflite-md")
    common = dict(int8=Int8Recipe(calib=synthetic_faces, calib_faces=4), verify=False)  # metadata only: no parity check, no tolerance
    (heat,) = export_model(str(tiny_checkpoint), "tflite", "fp32", output=out / "heat.tflite", **common)
    (marks,) = export_model(str(tiny_checkpoint), "tflite", "int8", outputs="landmarks", output=out / "marks.tflite", **common)
    assert heat.status is marks.status is Status.NOT_VERIFIED and heat.parity is marks.parity is None
    return {"heatmaps": heat.path, "landmarks": marks.path}


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("outputs", ["heatmaps", "landmarks"])
def test_tflite_metadata_describes_input_outputs_and_carries_the_contract(tflite_pair, outputs):
    data = tflite_pair[outputs].read_bytes()
    meta = read_model_metadata(data)
    contract = read_contract(tflite_pair[outputs])
    assert _s(meta.name).startswith("fan-edge") and _s(meta.author) and _s(meta.license) == LICENSE
    assert contract.precision in _s(meta.version) and _s(meta.minParserVersion) == "1.0.0"
    (sub,) = meta.subgraphMetadata
    (image,) = sub.inputTensorMetadata
    props = image.content.contentProperties
    assert image.content.contentPropertiesType == md.ContentProperties.ImageProperties
    assert props.colorSpace == md.ColorSpaceType.RGB
    assert (props.defaultSize.width, props.defaultSize.height) == (contract.input_size, contract.input_size)
    (unit,) = image.processUnits
    assert unit.optionsType == md.ProcessUnitOptions.NormalizationOptions
    # (pixel - mean) / std over 0..255 gives the contract's value range.
    lo, hi = contract.value_range
    assert (0 - unit.options.mean[0]) / unit.options.std[0] == pytest.approx(lo)
    assert (255 - unit.options.mean[0]) / unit.options.std[0] == pytest.approx(hi)
    roles = [_s(t.name) for t in sub.outputTensorMetadata]
    assert sorted(roles) == sorted({"heatmaps": ["heatmaps"], "landmarks": ["landmarks", "scores"]}[outputs])
    assert all(_s(t.description) for t in sub.outputTensorMetadata)
    (assoc,) = meta.associatedFiles
    assert _s(assoc.name) == CONTRACT_FILE
    packed = associated_files(data)
    assert ModelContract.from_json(packed[CONTRACT_FILE]) == contract
    # The runtime still finds its own contract, and the file still runs.
    session = LandmarkSession(tflite_pair[outputs])
    assert session.contract == contract


def test_tflite_metadata_reads_with_tflite_support(tflite_pair):
    if os.environ.get("FAN_EDGE_REQUIRE_TFLITE_SUPPORT") == "1":
        from tensorflow_lite_support.metadata.python import metadata as tfs
    else:
        tfs = pytest.importorskip("tensorflow_lite_support.metadata.python.metadata",
                                  reason="TFLite Support not installed (CI installs it: pip install --no-deps tflite-support)")
    for path in tflite_pair.values():
        displayer = tfs.MetadataDisplayer.with_model_file(str(path))
        shown = json.loads(displayer.get_metadata_json())
        assert shown["subgraph_metadata"][0]["input_tensor_metadata"][0]["content"]["content_properties"]["color_space"] == "RGB"
        assert displayer.get_packed_associated_file_list() == [CONTRACT_FILE]
        assert json.loads(displayer.get_associated_file_buffer(CONTRACT_FILE))["input_size"] == 128


def test_onnx_describes_itself(exported):
    import onnx

    result = exported[("onnx", "fp32", "landmarks")]
    proto = onnx.load(str(result.path))
    assert proto.model_version == numeric_version() and "Licence" in proto.doc_string
    assert all(v.doc_string for v in proto.graph.input) and all(v.doc_string for v in proto.graph.output)


def test_numeric_version():
    assert numeric_version("0.1.0") == 100 and numeric_version("1.2.3") == 10203 and numeric_version("2.0") == 20000
