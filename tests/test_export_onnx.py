"""fan-export to ONNX: artifacts, metadata, in-graph decoding, parity, exit codes and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fan_edge.cli import export_main  # noqa: E402
from fan_edge.errors import DataError, ExportError  # noqa: E402
from fan_edge.export import Int8Recipe, export_model  # noqa: E402
from fan_edge.export import parity as parity_module  # noqa: E402
from fan_edge.export.landmarks import LandmarkHead  # noqa: E402
from fan_edge.runtime.contract import METADATA_KEY, ModelContract, sidecar_path  # noqa: E402
from fan_edge.runtime.decode import decode_heatmaps  # noqa: E402
from fan_edge.rows import Status  # noqa: E402
from fan_edge.runtime.session import LandmarkSession  # noqa: E402
from conftest import expected_status  # noqa: E402


def _contract_from_onnx(path: Path) -> ModelContract:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return ModelContract.from_json(props[METADATA_KEY])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_precision_exports_checks_and_loads(exported, precision):
    r = exported[("onnx", precision, "heatmaps")]
    model = onnx.load(str(r.path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [o.name for o in model.graph.output] == ["heatmaps"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp16 keeps float32 I/O
    ops = {n.op_type for n in model.graph.node}
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Metadata, read with onnx's own API, equals the sidecar's contract (less the verification record).
    embedded = _contract_from_onnx(r.path)
    side = ModelContract.from_json(sidecar_path(r.path).read_text())
    assert side.replace(verification=None) == embedded
    assert embedded.precision == precision and embedded.target == "onnx" and embedded.outputs == "heatmaps"
    assert embedded.refine == "gaussian" and embedded.crop.reference_scale == 280.0 and embedded.crop.center_shift == 0.0
    assert embedded.input_size == 128 and embedded.heatmap_stride == 4.0 and embedded.num_landmarks == 68
    assert embedded.card["description"] == "test model, random weights" and embedded.fan_edge_version
    assert len(embedded.mirror_pairs) == 29
    # It runs, with several faces in one call.
    with LandmarkSession(r.path, threads=1) as session:
        assert session.fixed_batch is None
        out = session.run_crops(np.random.default_rng(0).random((3, 3, 128, 128), dtype=np.float32))
    assert out.heatmaps.shape == (3, 68, 32, 32) and out.points.shape == (3, 68, 2)
    # Checked under the real tolerances: fp32 and fp16 pass them; a random network's int8 landmarks may move.
    assert r.status is expected_status(r) and side.verification["status"] == r.status.value
    assert r.status is Status.PASSED or precision == "int8"


def test_fp32_matches_pytorch(exported):
    p = exported[("onnx", "fp32", "heatmaps")].parity
    assert p.max_heatmap_diff < 1e-4 and p.max_px < 1e-2 and abs(p.delta_nme) < 1e-3  # Gaussian steps amplify ulps
    assert p.faces == 4


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_in_graph_landmarks_match_host_decoding(exported, precision):
    r = exported[("onnx", precision, "landmarks")]
    model = onnx.load(str(r.path))
    assert [o.name for o in model.graph.output] == ["landmarks", "scores"]
    # The head is float: nothing quantized after the heatmaps.
    head_nodes = [n for n in model.graph.node if n.name.startswith("fan_edge_head/")]
    assert head_nodes and not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in head_nodes}
    assert r.parity.decode_px is not None and r.parity.decode_px <= 0.01
    # Independently: the landmarks output against host decoding of the graph's own heatmaps.
    x = np.random.default_rng(1).random((5, 3, 128, 128), dtype=np.float32)
    with LandmarkSession(r.path, extra_outputs=("heatmaps",)) as session:
        out = session.run_crops(x)
    host, host_scores = decode_heatmaps(out.outputs["heatmaps"], 128, "gaussian")
    assert out.points.shape == (5, 68, 2) and out.scores.shape == (5, 68)
    assert np.abs(out.points - host).max() <= 0.01
    np.testing.assert_allclose(out.scores, host_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("refine", ["quarter", "gaussian"])
def test_landmark_head_matches_decode_heatmaps(refine):
    rng = np.random.default_rng(0)
    head = LandmarkHead(128, 32, refine)
    yy, xx = np.mgrid[0:32, 0:32]
    cases = [
        rng.random((2, 68, 32, 32), dtype=np.float32),
        np.round(rng.random((2, 68, 32, 32)) * 4).astype(np.float32) / 4,  # many ties at the peak
        np.zeros((1, 68, 32, 32), np.float32),  # all equal
    ]
    cx, cy = rng.uniform(-1, 33, (2, 2, 68, 1, 1))  # peaks on and beyond every border
    cases.append((np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 3.0) + rng.normal(0, 1e-3, (2, 68, 32, 32))).astype(np.float32))
    cases.append(-rng.random((1, 68, 32, 32), dtype=np.float32))  # negative maps
    for hm in cases:
        ref, ref_scores = decode_heatmaps(hm, 128, refine)
        with torch.no_grad():
            pts, scores = head(torch.from_numpy(hm))
        assert np.abs(pts.numpy() - ref).max() <= 0.01
        np.testing.assert_array_equal(scores.numpy(), ref_scores)


def test_quarter_head_in_onnx_matches_host(tmp_path):
    from fan_edge.export.onnx_export import torch_to_onnx
    import onnxruntime as ort

    head = LandmarkHead(128, 32, "quarter")
    proto = torch_to_onnx(head, torch.rand(2, 68, 32, 32), "heatmaps", ["landmarks", "scores"])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    hm = np.round(np.random.default_rng(2).random((3, 68, 32, 32)) * 8).astype(np.float32) / 8
    pts, scores = session.run(None, {"heatmaps": hm})
    ref, _ = decode_heatmaps(hm, 128, "quarter")
    assert np.abs(pts - ref).max() <= 0.01


def test_cli_exit_code_follows_the_tolerance(tiny_checkpoint, synthetic_faces, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.onnx"
    args = ["--target", "onnx", "--model", str(tiny_checkpoint), "--verify", str(synthetic_faces), "--verify-faces", "3", "--output", str(out)]
    assert export_main(args) == 0
    text = capsys.readouterr().out
    assert "ONNX" in text and "passed" in text and "ΔNME" in text
    assert json.loads(sidecar_path(out).read_text())["verification"]["status"] == Status.PASSED == "passed"
    # The same export against an impossible tolerance: exit 1, the artifact kept, its sidecar says why.
    monkeypatch.setitem(parity_module.TOLERANCES, "fp32", -1.0)
    assert export_main(args + ["--json"]) == 1
    report = json.loads(capsys.readouterr().out)["exports"][0]
    assert report["status"] == Status.FAILED_ACCURACY == "failed accuracy" and report["parity"]["faces"] == 3
    assert out.is_file() and json.loads(sidecar_path(out).read_text())["verification"]["status"] == "failed accuracy"


def test_failed_export_keeps_the_older_artifact(tiny_checkpoint, synthetic_faces, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"OLD ARTIFACT")
    sidecar_path(out).write_text('{"old": true}')

    def broken_save(proto, path, *a, **k):
        Path(path).write_bytes(proto.SerializeToString()[:100])  # half-written, then the disk "fails"
        raise OSError("No space left on device")

    monkeypatch.setattr(onnx, "save", broken_save)
    with pytest.raises(OSError):
        export_model(str(tiny_checkpoint), "onnx", "fp32", output=out, verify=False)
    assert out.read_bytes() == b"OLD ARTIFACT"
    assert sidecar_path(out).read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def test_user_errors_are_one_line(tiny_checkpoint, synthetic_faces, tmp_path, capsys, monkeypatch):
    import dataclasses
    import importlib.util

    from fan_edge.export.exporter import TARGETS

    base = ["--model", str(tiny_checkpoint), "--no-verify", "--output", str(tmp_path / "x") + "/"]  # a folder
    monkeypatch.setitem(TARGETS, "coreml", dataclasses.replace(TARGETS["coreml"], exporter=None))
    assert export_main(["--target", "coreml", *base]) == 2
    err = capsys.readouterr().err.strip()
    assert "not implemented yet" in err and len(err.splitlines()) == 1
    # A target whose packages are absent names the extra to install, in one line.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real_find_spec(name, *a))
    assert export_main(["--target", "tflite", *base]) == 2
    err = capsys.readouterr().err.strip()
    assert "fan-edge[tflite]" in err and "litert_torch" in err and len(err.splitlines()) == 1
    monkeypatch.undo()
    assert export_main(["--target", "onnx", "--precision", "int8", *base]) == 2
    assert "--calib" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main(["--target", "onnx", "--precision", "int8", "--calib", str(empty), *base]) == 2
    err = capsys.readouterr().err.strip()
    assert "no images" in err and len(err.splitlines()) == 1
    assert export_main(["--target", "onnx", "--precision", "fp8", *base]) == 2
    assert export_main(["--target", "onnx", *base[:2], "--no-verify", "--output", str(tmp_path / "m.xml")]) == 2
    with pytest.raises(DataError):
        export_model(str(tiny_checkpoint), "onnx", "int8", int8=Int8Recipe(calib=empty), verify=False, output=tmp_path / "y.onnx")
    with pytest.raises(DataError, match="not a folder"):
        export_model(str(tiny_checkpoint), "onnx", "fp32", verify=tmp_path / "missing", output=tmp_path / "y.onnx")
    with pytest.raises(ExportError, match="unknown precision"):
        export_model(str(tiny_checkpoint), "onnx", "fp8", verify=False, output=tmp_path / "y.onnx")
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_on_real_faces(data_dir, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    args = ["--target", "onnx", "--model", "fan1-w32-i128", "--verify", str(data_dir / "afw"), "--verify-faces", "8"]
    code = export_main([*args, "--output", str(out)])
    assert code == 0, capsys.readouterr()
    contract = _contract_from_onnx(out)
    assert contract.model == "fan1-w32-i128" and contract.card["trained"] is False
    v = json.loads(sidecar_path(out).read_text())["verification"]
    assert v["faces"] == 8 and v["nme_torch"] > 0 and abs(v["delta_nme"]) <= 0.01


def test_official_layout_state_dict_exports(tmp_path):
    """A plain state dict (the released 2DFAN-4 .pth.tar layout: no config inside) exports like any model."""
    from fan_edge.models import create_model

    checkpoint = tmp_path / "2DFAN1-w32.pth.tar"
    torch.save(create_model("fan1-w32", weights=False).state_dict(), checkpoint)
    (result,) = export_model(str(checkpoint), "onnx", "fp32", input_size=128, verify=False, output=tmp_path)
    assert result.path == tmp_path / "2DFAN1-w32-s128-fp32.onnx" and result.status is Status.NOT_VERIFIED
    contract = _contract_from_onnx(result.path)
    assert contract.model == "2DFAN1-w32-s128" and contract.input_size == 128 and contract.refine == "quarter"
    assert contract.card["source"] == checkpoint.name
    with LandmarkSession(result.path) as session:
        assert session.run_crops(np.zeros((2, 3, 128, 128), np.float32)).points.shape == (2, 68, 2)
