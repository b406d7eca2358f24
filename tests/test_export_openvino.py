"""fan-export to OpenVINO IR: artifacts, rt_info metadata, in-graph decoding, atomic .xml/.bin writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from fan_edge.export import export_model  # noqa: E402
from fan_edge.runtime.contract import RT_INFO_PATH, ModelContract, sidecar_path  # noqa: E402
from fan_edge.runtime.decode import decode_heatmaps  # noqa: E402
from fan_edge.rows import Status  # noqa: E402
from fan_edge.runtime.session import LandmarkSession  # noqa: E402
from conftest import expected_status  # noqa: E402


def _contract_from_ir(path: Path) -> ModelContract:
    model = ov.Core().read_model(str(path))
    return ModelContract.from_json(model.get_rt_info(list(RT_INFO_PATH)).astype(str))


def _constant_types(path: Path) -> set[str]:
    model = ov.Core().read_model(str(path))
    return {op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_precision_exports_and_loads(exported, precision):
    r = exported[("openvino", precision, "heatmaps")]
    assert r.path.suffix == ".xml" and r.path.with_suffix(".bin").is_file()
    assert {f.name for f in r.files} == {r.path.name, r.path.with_suffix(".bin").name, r.path.name + ".json"}
    embedded = _contract_from_ir(r.path)
    assert ModelContract.from_json(sidecar_path(r.path).read_text()).replace(verification=None) == embedded
    assert embedded.target == "openvino" and embedded.precision == precision and embedded.refine == "gaussian"
    types = _constant_types(r.path)
    ops = {op.get_type_name() for op in ov.Core().read_model(str(r.path)).get_ops()}
    if precision == "fp32":
        assert "f16" not in types  # weights kept fp32
    elif precision == "fp16":
        assert "f16" in types
    else:
        assert "FakeQuantize" in ops or "FakeConvert" in ops
    with LandmarkSession(r.path, threads=1) as session:
        assert session.backend.name == "openvino" and session.fixed_batch is None
        out = session.run_crops(np.random.default_rng(0).random((3, 3, 128, 128), dtype=np.float32))
    assert out.heatmaps.shape == (3, 68, 32, 32)
    assert r.parity.faces == 4 and r.status is expected_status(r)  # the real tolerances
    assert r.status is Status.PASSED or precision == "int8"  # a random network's int8 landmarks may move


def test_fp32_matches_pytorch_and_onnx(exported):
    p = exported[("openvino", "fp32", "heatmaps")].parity
    assert p.max_heatmap_diff < 1e-4 and p.max_px < 1e-2 and abs(p.delta_nme) < 1e-3  # Gaussian steps amplify ulps


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_in_graph_landmarks_match_host_decoding(exported, precision):
    r = exported[("openvino", precision, "landmarks")]
    model = ov.Core().read_model(str(r.path))
    assert [o.get_any_name() for o in model.outputs] == ["landmarks", "scores"]
    assert r.parity.decode_px is not None and r.parity.decode_px <= 0.01
    x = np.random.default_rng(1).random((4, 3, 128, 128), dtype=np.float32)
    with LandmarkSession(r.path, extra_outputs=("heatmaps",)) as session:
        out = session.run_crops(x)
    host, _ = decode_heatmaps(out.outputs["heatmaps"], 128, "gaussian")
    assert np.abs(out.points - host).max() <= 0.01
    if precision == "int8":
        # Nothing is quantized after the heatmaps: every FakeQuantize feeds the network, none the head.
        heatmaps = next(op for op in model.get_ops() if "heatmaps" in op.output(0).get_names())
        seen, frontier = set(), [heatmaps]
        while frontier:
            node = frontier.pop()
            for out_port in node.outputs():
                for target in out_port.get_target_inputs():
                    consumer = target.get_node()
                    if consumer.get_friendly_name() not in seen:
                        seen.add(consumer.get_friendly_name())
                        assert consumer.get_type_name() != "FakeQuantize"
                        frontier.append(consumer)
        assert seen


def test_failed_export_keeps_the_older_pair(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "m.xml"
    out.write_text("OLD XML")
    out.with_suffix(".bin").write_bytes(b"OLD BIN")
    real_save = ov.save_model

    def broken_save(model, path, *a, **k):
        real_save(model, path, *a, **k)
        Path(path).with_suffix(".bin").write_bytes(b"trunc")  # the .bin half written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ov, "save_model", broken_save)
    with pytest.raises(KeyboardInterrupt):
        export_model(str(tiny_checkpoint), "openvino", "fp32", output=out, verify=False)
    assert out.read_text() == "OLD XML" and out.with_suffix(".bin").read_bytes() == b"OLD BIN"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
