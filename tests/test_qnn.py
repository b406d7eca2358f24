"""Qualcomm NPU: offload report, EPContext compilation, the emulated HTP against the CPU, one-line refusals.

On x86 the onnxruntime-qnn plugin's HTP backend is an emulator, so everything here runs without a phone. The
model is the tiny FAN of conftest.py (1 stack, width 32, 128 px) exported int8 QDQ with a fixed batch of 1.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnxruntime_qnn") is None:
    pytest.skip("onnxruntime-qnn (the QNN execution-provider plugin) is not installed", allow_module_level=True)

from fan_edge.errors import BackendError, ExportError  # noqa: E402
from fan_edge.export import qnn  # noqa: E402
from fan_edge.runtime import LandmarkSession  # noqa: E402
from fan_edge.runtime.backends import onnxruntime_backend  # noqa: E402
from fan_edge.runtime.contract import METADATA_KEY, ModelContract, read_sidecar  # noqa: E402
from fan_edge.runtime.decode import crop_points_to_image, decode_heatmaps  # noqa: E402

if not qnn.qnn_available():
    pytest.skip("onnxruntime-qnn is installed but its plugin does not register with this onnxruntime", allow_module_level=True)


@pytest.fixture(scope="module")
def qdq(tmp_path_factory, tiny_checkpoint, synthetic_faces):
    """The tiny FAN as int8 QDQ ONNX with a static batch of 1 (what the HTP compiles)."""
    from fan_edge.export import Int8Recipe, export_model

    out = tmp_path_factory.mktemp("qnn") / "tiny-int8.onnx"
    (result,) = export_model(str(tiny_checkpoint), "onnx", "int8", output=out, int8=Int8Recipe(calib=synthetic_faces), verify=False,
                             batch=1)
    return result.path


@pytest.fixture(scope="module")
def context(qdq, tmp_path_factory):
    return qnn.compile_context(qdq, "SM8650", tmp_path_factory.mktemp("qnn-ctx") / "tiny-int8-sm8650.onnx")


def _one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_socs_names_and_numbers():
    assert qnn.SOCS["SM8650"] == 57 and qnn.SOCS["SM8550"] == 43 and qnn.SOCS["SM8750"] == 69
    assert qnn.resolve_soc(" sm8650 ") == ("SM8650", 57)
    assert qnn.resolve_soc(57) == qnn.resolve_soc("57") == ("SM8650", 57)
    assert qnn.resolve_soc(35) == ("soc_model 35", 35)  # a number QNN may know beyond the named chips
    for bad in ("SM1234", "", True, 3.5, 0):
        with pytest.raises(ExportError) as info:
            qnn.resolve_soc(bad)
        _one_line(info)
    entry = qnn.contract_entry("sm8650")
    assert entry["soc"] == "SM8650" and entry["soc_model"] == 57 and "QAIRT" in entry["qnn_version"]


def test_the_int8_model_fully_offloads_on_sm8650(qdq):
    report = qnn.check_offload(qdq, "SM8650")
    assert report.full_offload and report.unsupported == () and report.error is None
    assert report.soc == "SM8650" and report.soc_model == 57
    assert report.nodes == report.npu_nodes >= len(onnx.load(str(qdq)).graph.node)
    assert json.loads(json.dumps(report.to_dict()))["full_offload"] is True


def test_compile_context_writes_one_loadable_epcontext_model(qdq, context):
    model = onnx.load(str(context))
    assert [n.op_type for n in model.graph.node] == ["EPContext"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attributes["embed_mode"] == 1 and len(attributes["ep_cache_context"]) > 10_000  # the binary is inside
    props = {p.key: p.value for p in model.metadata_props}
    assert ":57:" in props["ep_compatibility_info.QNNExecutionProvider"]
    contract = ModelContract.from_json(props[METADATA_KEY])
    assert contract.extra["qnn"]["soc_model"] == 57 and contract.extra["qnn"]["context"] is True
    assert read_sidecar(context).extra["qnn"] == contract.extra["qnn"]  # the source had a sidecar: so does the output
    session = qnn.npu_session(context, "SM8650")
    assert session.get_providers()[0] == "QNNExecutionProvider"
    (heatmaps,) = session.run(None, {"input": np.zeros((1, 3, 128, 128), np.float32)})
    assert heatmaps.shape == (1, 68, 32, 32)
    with LandmarkSession(context, backend="onnxruntime", device="npu") as app:  # the SoC comes from the contract
        assert app.device == "qnn"


def test_the_emulated_npu_matches_the_cpu(qdq, context, synthetic_faces):
    """Landmarks through the app-facing session on the HTP against the QDQ graph evaluated in float on the CPU."""
    import cv2

    from fan_edge.files.pts import read_pts

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    reference = ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
    faces = sorted(synthetic_faces.glob("*.pts"))[:3]
    with LandmarkSession(qdq, backend="onnxruntime", device="qnn:57") as npu, LandmarkSession(
        context, backend="onnxruntime", device="npu"
    ) as compiled:
        assert npu.device == "qnn:57" and compiled.device == "qnn"
        for pts in faces:
            image = cv2.imread(str(pts.with_suffix(".png")))[:, :, ::-1].copy()
            landmarks = read_pts(pts)
            box = np.array([[*landmarks.min(0), *landmarks.max(0)]])
            crops, matrices = npu.crops(image, box)
            (expected_heatmaps,) = reference.run(None, {"input": crops})
            heatmaps = npu.run_raw(crops)["heatmaps"]
            scale = np.abs(expected_heatmaps).max()
            # measured: max 3%, mean 0.4% of the peak (the HTP runs the float ops between the QDQ convs in fp16)
            assert np.abs(heatmaps - expected_heatmaps).max() <= 0.08 * scale
            assert np.abs(heatmaps - expected_heatmaps).mean() <= 0.01 * scale
            np.testing.assert_allclose(compiled.run_raw(crops)["heatmaps"], heatmaps, atol=1e-3 * scale)  # same binary
            expected, _ = decode_heatmaps(expected_heatmaps, npu.contract.input_size, npu.contract.refine)
            expected = crop_points_to_image(expected, matrices)
            side = box[0, 2] - box[0, 0]
            for session in (npu, compiled):
                points, _ = session.predict(image, box)
                # a random network's peaks are flat: a few points may jump; most stay within a heatmap cell
                error = np.linalg.norm(points - expected, axis=-1) / side
                assert np.median(error) < 0.02, np.median(error)


def _dynamic_copy(path, out):
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, str(out))
    return out


def _hardmax_model(out):
    """A conv then a Hardmax, which QNN does not implement: a graph that cannot fully offload."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.linspace(-1, 1, 108, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"), helper.make_node("Hardmax", ["c"], ["out"], name="hm")],
        "hardmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(out))
    return out


def test_one_line_refusals(qdq, context, tmp_path):
    with pytest.raises(ExportError, match="unknown Snapdragon SoC 'SM9999'") as info:
        qnn.check_offload(qdq, "SM9999")
    _one_line(info)

    dynamic = _dynamic_copy(qdq, tmp_path / "dynamic.onnx")
    for call in (
        lambda: qnn.check_offload(dynamic, "SM8650"),
        lambda: qnn.compile_context(dynamic, "SM8650", tmp_path / "x.onnx"),
        lambda: qnn.npu_session(dynamic, 57),
    ):
        with pytest.raises(ExportError, match=r"dynamic shape \['batch', 3, 128, 128\].*batch=1") as info:
            call()
        _one_line(info)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(BackendError, match=r"device .qnn:57. is not available .*qnn \(emulated HTP\): .*fixed batch") as info:
        LandmarkSession(dynamic, backend="onnxruntime", device="qnn:57")
    _one_line(info)

    partial = _hardmax_model(tmp_path / "hardmax.onnx")
    report = qnn.check_offload(partial, "SM8650")
    assert not report.full_offload and report.unsupported == ("Hardmax hm",) and "Hardmax" in report.reasons[0]
    assert report.npu_nodes < report.nodes
    with pytest.raises(ExportError, match="could not compile it for SM8650 .*check_offload") as info:
        qnn.compile_context(partial, "SM8650", tmp_path / "hardmax-ctx.onnx")
    _one_line(info)
    assert not (tmp_path / "hardmax-ctx.onnx").exists()
    with pytest.raises(BackendError, match=r"qnn \(emulated HTP\): QNN does not run every node") as info:
        LandmarkSession(partial, backend="onnxruntime", device="qnn:57")
    _one_line(info)

    with pytest.raises(ExportError, match="already compiled") as info:
        qnn.check_offload(context, "SM8650")
    _one_line(info)
    with pytest.raises(ExportError, match="did not start for soc_model 9999") as info:
        qnn.check_offload(qdq, 9999)
    _one_line(info)
    with pytest.raises(BackendError, match=r"qnn:sm8650: the suffix is a QNN backend type .* e\.g\. qnn:57") as info:
        LandmarkSession(qdq, backend="onnxruntime", device="qnn:SM8650")
    _one_line(info)


def test_runtime_qnn_options():
    assert onnxruntime_backend._provider_list("qnn", None)[0] == ("QNNExecutionProvider", {"backend_type": "htp"})
    assert onnxruntime_backend._provider_list("qnn", "57")[0][1] == {"backend_type": "htp", "soc_model": "57"}
    assert onnxruntime_backend._provider_list("qnn", "gpu")[0][1] == {"backend_type": "gpu"}
    assert onnxruntime_backend.register_qnn() and onnxruntime_backend.register_qnn()  # once, then the same answer
    assert onnxruntime_backend.qnn_ep_devices("htp")
    if onnxruntime_backend.qnn_emulated():  # x86: not a device to list or benchmark, yet usable when named
        assert "qnn" not in onnxruntime_backend.OnnxRuntimeBackend.devices()
        assert onnxruntime_backend._candidates("npu", ["cpu"]) == [("qnn", None)]
        assert onnxruntime_backend._candidates("qnn:57", ["cpu"]) == [("qnn", "57")]
    else:
        assert "qnn" in onnxruntime_backend.OnnxRuntimeBackend.devices()
