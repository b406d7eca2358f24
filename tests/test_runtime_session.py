"""The torch-free runtime: the artifact contract, backends and LandmarkSession."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fan_edge.errors import BackendError, ContractError, DataError, FanEdgeError
from fan_edge.runtime.contract import MAX_JSON_BYTES, SCHEMA_VERSION, ModelContract, read_sidecar, sidecar_path
from fan_edge.runtime.crop import CropSpec, crop_matrices, warp_image
from fan_edge.runtime.decode import crop_points_to_image, decode_heatmaps
from fan_edge.runtime.image import as_rgb, to_network_input
from fan_edge.runtime.session import LandmarkSession

REPO = Path(__file__).resolve().parents[1]


# ---- the contract -------------------------------------------------------------------------------------


def _contract(**kw) -> ModelContract:
    base = dict(input_size=128, heatmap_size=32, refine="gaussian", crop=CropSpec(280.0, 0.0), model="fan1", precision="int8",
                target="onnx", card={"figures": {"nme_io": 7.4}}, config={"stacks": 1})
    base.update(kw)
    return ModelContract(**base)


def test_contract_round_trip():
    c = _contract(outputs="landmarks", output_names=("landmarks", "scores"), verification={"status": "ok"})
    d = json.loads(c.to_json())
    assert d["heatmap_stride"] == 4.0 and d["crop"] == {"reference_scale": 280.0, "center_shift": 0.0, "window": 200.0}
    assert d["layout"] == "NCHW" and d["channel_order"] == "RGB" and d["value_range"] == [0.0, 1.0]
    assert ModelContract.from_json(c.to_json()) == c
    assert c.output_name("scores") == "scores"
    with pytest.raises(ContractError):
        c.output_name("heatmaps")


def test_contract_keeps_unknown_keys_and_refuses_newer_schemas():
    d = json.loads(_contract().to_json())
    d["added_by_a_newer_exporter"] = {"x": 1}
    c = ModelContract.from_dict(d)
    assert c.extra == {"added_by_a_newer_exporter": {"x": 1}}
    assert json.loads(c.to_json())["added_by_a_newer_exporter"] == {"x": 1}
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ContractError, match="newer"):
        ModelContract.from_dict(d)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_size": "128"}, "input_size must be an integer"),
        ({"input_size": True}, "input_size must be an integer"),
        ({"input_size": 10**9}, "input_size must be in"),
        ({"heatmap_size": 0}, "heatmap_size"),
        ({"outputs": "boxes"}, "outputs must be one of"),
        ({"refine": "soft"}, "refine"),
        ({"layout": "CHW"}, "layout"),
        ({"precision": "int4"}, "precision"),
        ({"value_range": [1, 0]}, "value_range"),
        ({"value_range": [0, float("nan")]}, "value_range"),
        ({"crop": {"reference_scale": "x"}}, "crop"),
        ({"crop": {"zoom": 1}}, "unknown crop keys"),
        ({"mirror_pairs": [[0, 99]]}, "mirror_pairs"),
        ({"mirror_pairs": [[0]]}, "mirror_pairs"),
        ({"output_names": ["a", "b"]}, "output_names"),
        ({"card": "a card"}, "card must be a JSON object"),
        ({"card": {"blob": "x" * 70000}}, "card is"),
        ({"model": "m" * 5000}, "longer than"),
        ({"heatmap_stride": 3}, "heatmap_stride"),
    ],
)
def test_contract_rejects_bad_fields_in_one_line(change, message):
    d = json.loads(_contract().to_json())
    d.update(change)
    with pytest.raises(ContractError, match=message) as info:
        ModelContract.from_dict(d)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"input_size": 128}', b"\xff\xfe", "[" * 100000 + "]" * 100000])
def test_contract_rejects_junk(text):
    with pytest.raises(ContractError):
        ModelContract.from_json(text)
    with pytest.raises(ContractError, match="more than"):
        ModelContract.from_json(" " * (MAX_JSON_BYTES + 1))


def test_bad_sidecar_names_its_file(tmp_path):
    artifact = tmp_path / "m.onnx"
    sidecar_path(artifact).write_text('{"input_size": -1, "heatmap_size": 1}')
    with pytest.raises(ContractError, match="m.onnx.json"):
        read_sidecar(artifact)
    assert read_sidecar(tmp_path / "other.onnx") is None


# ---- sessions -----------------------------------------------------------------------------------------


def _image_and_boxes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (240, 300, 3), dtype=np.uint8)
    boxes = np.array([[40.0, 50.0, 140.0, 160.0], [150.0, 30.0, 280.0, 170.0], [-20.0, 150.0, 60.0, 250.0]])
    return image, boxes


def _torch_predict(checkpoint: Path, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    import torch

    from fan_edge.models import create_model

    model = create_model(str(checkpoint))
    cfg = model.config
    mats = crop_matrices(boxes, cfg.input_size, model.weights.crop)
    x = to_network_input(np.stack([warp_image(as_rgb(image), m, cfg.input_size) for m in mats]))
    with torch.no_grad():
        hm = model(torch.from_numpy(x)).numpy()
    pts, _ = decode_heatmaps(hm, cfg.input_size, model.weights.refine)
    return crop_points_to_image(pts, mats)


@pytest.mark.parametrize("key", [(t, "fp32", o) for o in ("heatmaps", "landmarks") for t in ("onnx", "openvino")])
def test_predict_matches_the_pytorch_pipeline(exported, tiny_checkpoint, key):
    image, boxes = _image_and_boxes()
    expected = _torch_predict(tiny_checkpoint, image, boxes)
    with LandmarkSession(exported[key].path) as session:
        points, scores = session.predict(image, boxes)
        assert points.shape == (3, 68, 2) and scores.shape == (3, 68)
        assert np.abs(points - expected).max() < 1e-2
        empty_points, empty_scores = session.predict(image, np.zeros((0, 4)))
        assert empty_points.shape == (0, 68, 2) and empty_scores.shape == (0, 68)
        # grayscale and float images go through as_rgb like everywhere else
        gray_points, _ = session.predict(image[..., 0], boxes[:1])
        assert gray_points.shape == (1, 68, 2)
        with pytest.raises(DataError):
            session.predict(image, np.zeros((2, 3)))
        with pytest.raises(DataError):
            session.predict(image[..., :2], boxes)
        with pytest.raises(DataError):
            session.run_crops(np.zeros((1, 3, 64, 64), np.float32))


def test_fixed_batch_graphs_run_in_chunks(exported):
    x = np.random.default_rng(4).random((5, 3, 128, 128), dtype=np.float32)
    with LandmarkSession(exported[("onnx", "fp32", "heatmaps")].path) as session:
        whole = session.run_crops(x)
        session.fixed_batch = 2  # as for a graph exported with batch 2: chunks of 2, the last one padded
        chunked = session.run_crops(x)
    np.testing.assert_allclose(chunked.heatmaps, whole.heatmaps, atol=1e-5)
    assert chunked.points.shape == (5, 68, 2)


def test_contract_from_the_artifact_when_the_sidecar_is_absent(exported, tmp_path):
    onnx_src = exported[("onnx", "int8", "heatmaps")].path
    ov_src = exported[("openvino", "fp16", "heatmaps")].path
    shutil.copy(onnx_src, tmp_path / "a.onnx")
    shutil.copy(ov_src, tmp_path / "b.xml")
    shutil.copy(ov_src.with_suffix(".bin"), tmp_path / "b.bin")
    for name, src in (("a.onnx", onnx_src), ("b.xml", ov_src)):
        with LandmarkSession(tmp_path / name) as session:
            assert session.contract == ModelContract.from_json(sidecar_path(src).read_text()).replace(verification=None)


def test_artifact_without_a_contract(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported[("onnx", "fp32", "heatmaps")].path))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(ContractError, match="no fan-edge contract"):
        LandmarkSession(tmp_path / "bare.onnx")
    # A contract passed in by hand serves.
    contract = ModelContract.from_json(sidecar_path(exported[("onnx", "fp32", "heatmaps")].path).read_text())
    assert LandmarkSession(tmp_path / "bare.onnx", contract=contract).contract is contract
    # A contract that disagrees with the graph is refused.
    with pytest.raises(ContractError, match="input shape"):
        LandmarkSession(tmp_path / "bare.onnx", contract=contract.replace(input_size=256, heatmap_size=64))


def test_backend_and_device_errors(exported, tmp_path):
    path = exported[("onnx", "fp32", "heatmaps")].path
    with pytest.raises(BackendError, match=r"device 'quantum' is not available to the onnxruntime backend .*; present: .*cpu") as info:
        LandmarkSession(path, device="quantum")
    assert "\n" not in str(info.value)
    assert LandmarkSession(path, backend="openvino", device="cpu").backend.name == "openvino"  # OpenVINO reads ONNX too
    with pytest.raises(BackendError, match="unknown backend"):
        LandmarkSession(path, backend="tensorrt")
    with pytest.raises(BackendError, match="no such file"):
        LandmarkSession(tmp_path / "missing.onnx")
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(BackendError, match="no backend reads .engine"):
        LandmarkSession(tmp_path / "m.engine")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="cannot load"):
        LandmarkSession(tmp_path / "junk.onnx")
    with pytest.raises(BackendError, match="threads"):
        LandmarkSession(path, threads=0)
    assert issubclass(BackendError, FanEdgeError)


def test_runtime_works_without_torch(exported, tmp_path):
    """``fan_edge.runtime`` and a full predict with torch made unimportable (an app's environment)."""
    image, boxes = _image_and_boxes()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "boxes.npy", boxes)
    artifacts = [exported[k].path for k in (("onnx", "int8", "heatmaps"), ("openvino", "fp32", "landmarks"))]
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        import fan_edge.runtime
        from fan_edge.runtime import LandmarkSession
        image, boxes = np.load({str(tmp_path / "image.npy")!r}), np.load({str(tmp_path / "boxes.npy")!r})
        for i, path in enumerate({[str(p) for p in artifacts]!r}):
            points, scores = LandmarkSession(path, threads=1).predict(image, boxes)
            np.save({str(tmp_path)!r} + f"/points{{i}}.npy", points)
        assert sys.modules["torch"] is None
        assert not any(m.startswith("torch.") for m in sys.modules), "a torch submodule was imported"
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    for i, path in enumerate(artifacts):
        expected, _ = LandmarkSession(path).predict(image, boxes)
        np.testing.assert_allclose(np.load(tmp_path / f"points{i}.npy"), expected, atol=1e-4)


# ---- inputs: every image layout the runtime accepts, and one-line errors for the rest -------------------------


@pytest.fixture(scope="module")
def onnx_session(exported):
    with LandmarkSession(exported[("onnx", "fp32", "heatmaps")].path, threads=1) as session:
        yield session


def test_image_layouts_agree(onnx_session):
    image, boxes = _image_and_boxes()
    points, scores = onnx_session.predict(image, boxes)
    same = {
        "uint16 (x257)": image.astype(np.uint16) * 257,
        "RGBA": np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], axis=2),
        "float 0..1": image.astype(np.float32) / 255.0,
        "float 0..255": image.astype(np.float64),
        "non-contiguous": np.ascontiguousarray(image[:, ::-1])[:, ::-1],
    }
    for name, variant in same.items():
        p, s = onnx_session.predict(variant, boxes)
        np.testing.assert_allclose(p, points, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(s, scores, atol=1e-4, err_msg=name)
    grey = image[..., 1]
    g2, _ = onnx_session.predict(grey, boxes)
    g3, _ = onnx_session.predict(grey[..., None], boxes)
    g4, _ = onnx_session.predict(np.repeat(grey[..., None], 3, axis=2), boxes)
    np.testing.assert_array_equal(g2, g3)
    np.testing.assert_allclose(g2, g4, atol=1e-6)


def test_uint8_crops_are_exactly_the_whole_image_conversion(onnx_session):
    """The session converts only each crop's window; for uint8 that is bit-identical to converting the whole image."""
    image, boxes = _image_and_boxes()
    x, matrices = onnx_session.crops(image, boxes)
    whole = to_network_input(np.stack([warp_image(as_rgb(image), m, onnx_session.input_size) for m in matrices]))
    np.testing.assert_array_equal(x, whole)


def test_tiny_and_huge_images(onnx_session):
    points, _ = onnx_session.predict(np.full((1, 1), 200, np.uint8), [[-3.0, -3.0, 3.0, 3.0]])
    assert points.shape == (1, 68, 2) and np.all(np.isfinite(points))
    huge = np.zeros((20000, 20000), np.uint8)  # 400 MB of address space, never touched outside the crop windows
    huge[10000:10100, 10000:10100] = 255
    points, _ = onnx_session.predict(huge, [[9990.0, 9990.0, 10110.0, 10110.0], [0.0, 0.0, 50.0, 50.0]])
    assert points.shape == (2, 68, 2) and np.all(np.isfinite(points))


def test_many_boxes_go_in_batches(onnx_session, monkeypatch):
    import fan_edge.runtime.session as session_module

    image, boxes = _image_and_boxes()
    many = np.concatenate([boxes] * 3)
    whole, whole_scores = onnx_session.predict(image, many)
    monkeypatch.setattr(session_module, "MAX_FACES_PER_CALL", 2)
    chunked, chunked_scores = onnx_session.predict(image, many)
    np.testing.assert_allclose(chunked, whole, atol=1e-4)
    np.testing.assert_allclose(chunked_scores, whole_scores, atol=1e-5)


BAD_IMAGES = [
    (None, "expected an image array"),
    ("photo.jpg", "expected an image array"),
    ([[1, 2], [3]], "expected an image array"),
    (np.zeros((0, 10, 3), np.uint8), "empty image"),
    (np.zeros((10, 0), np.uint8), "empty image"),
    (np.zeros((10, 10, 2), np.uint8), "shape"),
    (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
    (np.zeros(10, np.uint8), "shape"),
    (np.zeros((10, 10, 3), np.int32), "unsupported image dtype int32"),
    (np.zeros((10, 10, 3), bool), "unsupported image dtype bool"),
    (np.empty((10, 10, 3), object), "unsupported image dtype object"),
]


@pytest.mark.parametrize("image, message", BAD_IMAGES, ids=[str(i) for i in range(len(BAD_IMAGES))])
def test_bad_images_are_one_line_errors(onnx_session, image, message):
    with pytest.raises(DataError, match=message) as info:
        onnx_session.predict(image, [[1.0, 1.0, 8.0, 8.0]])
    assert "\n" not in str(info.value)


BAD_BOXES = [
    ([[10, 10, 10, 50]], "box 0 .* is degenerate"),
    ([[10, 10, 50, 50], [60, 60, 40, 80]], "box 1 .* is degenerate"),
    ([[10, 10, 50, np.nan]], "box 0 is not finite"),
    ([[-np.inf, 10, 50, 60]], "box 0 is not finite"),
    ([[400, 10, 500, 60]], "box 0 .* lies outside the 300x240 image"),
    ([[-100, -100, -0.5, 40]], "box 0 .* lies outside"),
    ([[1, 2, 3]], r"must be \(N, 4\)"),
    ([[[1, 2, 3, 4]]], r"must be \(N, 4\)"),
    ("1,2,3,4", "boxes must be numbers"),
    ([["a", "b", "c", "d"]], "boxes must be numbers"),
]


@pytest.mark.parametrize("boxes, message", BAD_BOXES, ids=[str(i) for i in range(len(BAD_BOXES))])
def test_bad_boxes_are_one_line_errors(onnx_session, boxes, message):
    image, _ = _image_and_boxes()
    with pytest.raises(DataError, match=message) as info:
        onnx_session.predict(image, boxes)
    assert "\n" not in str(info.value)
