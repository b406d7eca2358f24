"""Artifacts from elsewhere: damaged, empty, random or mislabelled files through LandmarkSession.

Each must load (the seeds do) or be refused with a one-line BackendError or
ContractError: never a raw library exception, never a crash. The good files
are the fuzz seeds (fuzz/corpus, a 16x16 -> 4x4 network with a contract);
fuzz/fuzz_artifact.py mutates the same files for longer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fan_edge.errors import BackendError, ContractError
from fan_edge.runtime.contract import ModelContract, sidecar_path
from fan_edge.runtime.session import LandmarkSession

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"
SEEDS = {
    "onnx": (CORPUS / "artifact-onnx" / "seed-tiny.onnx", "onnxruntime"),
    "tflite": (CORPUS / "artifact-tflite" / "seed-tiny.tflite", "ai_edge_litert"),
    "xml": (CORPUS / "artifact-openvino-xml" / "seed-tiny.xml", "openvino"),
}
IMAGE = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
BOXES = np.array([[4.0, 3.0, 24.0, 21.0]])


def _place(tmp_path: Path, fmt: str, data: bytes | None = None, name: str = "model") -> Path:
    """The seed of ``fmt`` (or ``data`` in its place) in ``tmp_path``, with the OpenVINO .bin beside an .xml."""
    seed, package = SEEDS[fmt]
    pytest.importorskip(package)
    path = tmp_path / f"{name}.{fmt}"
    path.write_bytes(seed.read_bytes() if data is None else data)
    if fmt == "xml":
        shutil.copy(CORPUS / "artifact-openvino-bin" / "seed-tiny.bin", path.with_suffix(".bin"))
    return path


def _refused(path: Path, kinds=(BackendError, ContractError)) -> str:
    with pytest.raises(kinds) as info:
        LandmarkSession(path, threads=1)
    message = str(info.value)
    assert message.strip() and "\n" not in message.strip(), f"not one line: {message!r}"
    return message


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_seeds_load_and_predict(tmp_path, fmt):
    """The positive control: the undamaged files run end to end with the contract inside them."""
    with LandmarkSession(_place(tmp_path, fmt), threads=1) as session:
        points, scores = session.predict(IMAGE, BOXES)
    assert points.shape == (1, 4, 2) and np.all(np.isfinite(points)) and scores.shape == (1, 4)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
@pytest.mark.parametrize("cut", ["empty", "8-bytes", "half"])
def test_truncated_files_are_refused_in_one_line(tmp_path, fmt, cut):
    whole = SEEDS[fmt][0].read_bytes()
    data = {"empty": b"", "8-bytes": whole[:8], "half": whole[: len(whole) // 2]}[cut]
    _refused(_place(tmp_path, fmt, data))


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_random_bytes_are_refused_in_one_line(tmp_path, fmt):
    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    message = _refused(_place(tmp_path, fmt, data), BackendError)
    assert "model." in message


@pytest.mark.parametrize("fmt, other", [("onnx", "tflite"), ("tflite", "onnx"), ("xml", "onnx"), ("onnx", "xml")])
def test_another_format_under_the_suffix_is_refused(tmp_path, fmt, other):
    _refused(_place(tmp_path, fmt, SEEDS[other][0].read_bytes()), BackendError)


def test_structural_prechecks_name_the_problem(tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("openvino")
    assert "TFL3" in _refused(_place(tmp_path, "tflite", b"\x00" * 64))
    assert "not XML" in _refused(_place(tmp_path, "xml", b"{ 'a': 1 }"))
    xml = _place(tmp_path, "xml", name="no-bin")
    xml.with_suffix(".bin").unlink()
    assert "no-bin.bin is missing" in _refused(xml)


def test_truncated_openvino_weights_are_refused(tmp_path):
    xml = _place(tmp_path, "xml")
    weights = xml.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:10])
    _refused(xml)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_sidecar_that_disagrees_with_the_graph_is_refused(tmp_path, fmt):
    """A sidecar whose landmark count or heatmap size differs from the graph's outputs: refused at load, before any
    predict could return the graph's points under the contract's name."""
    path = _place(tmp_path, fmt)
    contract = ModelContract.from_json(json.dumps({**json.loads(_contract_of(path)), "num_landmarks": 5}))
    sidecar_path(path).write_text(contract.to_json())
    # The seeds carry their contract inside too: the stale sidecar is refused as disagreeing with it (a sidecar
    # alone would be refused by the graph check, "the contract says").
    assert "disagrees with the contract inside the artifact on num_landmarks" in _refused(path, ContractError)
    sidecar_path(path).write_text("{ not json")
    _refused(path, ContractError)


def _contract_of(path: Path) -> str:
    with LandmarkSession(path, threads=1) as session:
        return session.contract.to_json()


def test_metadata_that_is_not_utf8_is_refused(tmp_path):
    """ORT decodes metadata strings as UTF-8 and raised UnicodeDecodeError (found by fuzz/fuzz_artifact.py)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = onnx.load_from_string(SEEDS["onnx"][0].read_bytes())
    entry = model.metadata_props.add()
    entry.key, entry.value = "note", "cafX"
    data = model.SerializeToString()
    assert data.count(b"cafX") == 1
    path = tmp_path / "latin1.onnx"
    path.write_bytes(data.replace(b"cafX", b"caf\xe9"))  # same length: the protobuf stays well-formed, the text is not UTF-8
    _refused(path, BackendError)


def _external_data_model(folder: Path, location: str) -> Path:
    """An ONNX graph y = x + w whose initializer w lives in an external file at ``location`` (relative to the model)."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [8]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", io[:1], io[1:], [w])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString())
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_external_data_outside_the_model_folder_is_not_read(tmp_path, backend):
    """An ONNX file can point its weights at any file: both runtimes must refuse paths out of the model's folder."""
    from fan_edge.runtime.backends import load_backend

    pytest.importorskip(backend)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    inner = tmp_path / "models"
    inner.mkdir()
    (inner / "w.bin").write_bytes(secret.read_bytes())
    good = load_backend(_external_data_model(inner, "w.bin"), backend, threads=1)  # the control: inside, it loads
    np.testing.assert_array_equal(good.run(np.zeros(8, np.float32))["y"], np.arange(8))
    for location in ("../secret.bin", str(secret)):
        with pytest.raises(BackendError, match="(?i)external data|outside|escapes|absolute") as info:
            load_backend(_external_data_model(inner, location), backend, threads=1)
        assert "\n" not in str(info.value)


def _tflite_with(change) -> bytes:
    """The tflite seed with ``change(model)`` applied through the TFLite schema's object API."""
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(SEEDS["tflite"][0].read_bytes()))
    change(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _widen_pool(model) -> None:
    (pool,) = [op for op in model.subgraphs[0].operators if type(op.builtinOptions).__name__ == "Pool2DOptionsT"]
    pool.builtinOptions.filterWidth = 117_440_516  # what fuzzing found: XNNPACK took 3.6 GB for it


def _huge_tensor(model) -> None:
    model.subgraphs[0].tensors[4].shape = np.array([2_949_121, 16, 16, 4], dtype=np.int32)  # 12 GB declared


@pytest.mark.parametrize("change, message", [(_widen_pool, "FilterWidth 117440516"), (_huge_tensor, "GiB")],
                         ids=["pool-window", "tensor-shape"])
def test_tflite_that_would_allocate_gigabytes_is_refused_first(tmp_path, change, message):
    """Two 2 kB files fuzzing found that made LiteRT allocate gigabytes on the first run: refused at load instead."""
    assert message in _refused(_place(tmp_path, "tflite", _tflite_with(change)), BackendError)


def test_openvino_tensor_of_gigabytes_is_refused_before_compiling(tmp_path):
    xml = _place(tmp_path, "xml")
    text = xml.read_text()
    assert text.count('shape="?,3,16,16"') == 1
    xml.write_text(text.replace('shape="?,3,16,16"', 'shape="?,3,100000,100000"'))  # the input's shape, 120 GB a face
    assert "GiB" in _refused(xml, BackendError)


def _fixed_batch(model) -> None:
    model.subgraphs[0].tensors[0].shape = np.array([40_000, 16, 16, 3], dtype=np.int32)  # 123 MB, under the tensor cap


def test_fixed_batch_beyond_the_contract_is_refused_before_the_first_run(tmp_path):
    """A graph whose fixed batch the contract does not admit: its backend would allocate for all of it on the first run
    (fuzzing found a 2 kB file with a batch of 131073: 1.4 GB)."""
    assert "fixed batch of 40000" in _refused(_place(tmp_path, "tflite", _tflite_with(_fixed_batch)), ContractError)
