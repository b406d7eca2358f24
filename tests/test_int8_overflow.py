"""The static int8 overflow check, against what CPUs without VNNI really compute.

A hand-built QDQ convolution with full-range weights saturates ONNX Runtime's
uint8 x int8 kernels on an x86 CPU without VNNI; with 7-bit weights it does
not. The "CPU without VNNI" is real x86 code under ``qemu-x86_64 -cpu
Haswell-v4`` (AVX2, no VNNI; Debian's qemu-user), so this runs on a CI machine
with VNNI too; without qemu only the static half runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fan_edge.cli import main  # noqa: E402
from fan_edge.errors import ExportError  # noqa: E402
from fan_edge.export.int8_overflow import INT16_MAX, check_u8s8_overflow, u8s8_overflow, worst_pair_sums  # noqa: E402
from fan_edge.export.portability import onnx_batch_mismatches  # noqa: E402

CHANNELS = 16


def qdq_conv(weight_q: int, path: Path, batch: int | str = 1) -> Path:
    """x (N, 16, 4, 4) in [0, 1] -> uint8 -> 1x1 conv with every int8 weight ``weight_q`` (the value 1.0) -> uint8."""
    w = np.full((4, CHANNELS, 1, 1), weight_q, np.int8)
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(4, 1 / weight_q, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(32 / 255, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y_f"], name="conv"),
        helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, CHANNELS, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


RUN = """
import json, sys
import numpy as np, onnxruntime as ort
x = np.ones((1, 16, 4, 4), np.float32)
out = {}
for path in sys.argv[1:]:
    for flt in (False, True):
        so = ort.SessionOptions()
        if flt:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out[path + (":float" if flt else "")] = float(s.run(None, {"x": x})[0].mean())
print(json.dumps(out))
"""


def run_outputs(paths: list[Path], emulate: str | None = None) -> dict[str, float]:
    cmd = [sys.executable, "-c", RUN, *map(str, paths)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64"), "-cpu", emulate, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overflow")
    return qdq_conv(127, folder / "full.onnx"), qdq_conv(64, folder / "reduced.onnx")


def test_worst_pair_sums():
    w = np.array([[127, 127, -3], [100, -100, 1], [-64, -64, 64], [5, 0, 0]], np.int8).reshape(4, 3, 1, 1)
    assert worst_pair_sums(w).tolist() == [255 * 254, 255 * 101, 255 * 128, 255 * 5]
    assert worst_pair_sums(np.array([[1, 2], [3, 4]], np.int8), channel_axis=1).tolist() == [255 * 4, 255 * 6]


def test_static_check_flags_full_range_weights_only(models):
    full, reduced = models
    (site,) = u8s8_overflow(full)
    assert site.op_type == "Conv" and site.weight == "w_q" and site.worst_pair_sum == 255 * 254 > INT16_MAX
    assert site.channels == site.total_channels == 4
    assert u8s8_overflow(reduced) == []  # 255 x 128 = 32,640
    with pytest.raises(ExportError, match="can overflow 16-bit sums on x86 CPUs without VNNI"):
        check_u8s8_overflow(full)
    check_u8s8_overflow(reduced)


def test_fan_edge_check_cli(models, capsys, tmp_path):
    full, reduced = models
    assert main(["check", str(reduced)]) == 0
    assert main(["check", str(full), str(reduced)]) == 1
    out = capsys.readouterr().out
    assert "full.onnx: 1 problems" in out and "pair sum of 64770" in out and "reduced.onnx: ok" in out
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    assert main(["check", str(junk)]) == 2
    assert "not an ONNX model" in capsys.readouterr().err


def test_onnx_batch_check(tmp_path):
    static = onnx.load(str(qdq_conv(64, tmp_path / "b1.onnx", batch=1)))
    dynamic = onnx.load(str(qdq_conv(64, tmp_path / "bn.onnx", batch="N")))
    assert onnx_batch_mismatches(static, 1) == []
    assert onnx_batch_mismatches(dynamic, 1) and onnx_batch_mismatches(static, 2)


def test_float_computation_is_the_reference(models):
    """On this CPU, whatever it is, the float computation of either model is 16 (16 channels x 1.0 x 1.0)."""
    out = run_outputs(list(models))
    for path in models:
        assert out[f"{path}:float"] == pytest.approx(16.0, abs=0.1)


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user (qemu-x86_64) is not installed: apt-get install qemu-user")
def test_the_check_predicts_saturation_on_a_cpu_without_vnni(models):
    full, reduced = models
    out = run_outputs([full, reduced], emulate="Haswell-v4")
    assert out[f"{reduced}"] == pytest.approx(16.0, abs=0.2)  # 7-bit weights: exact on AVX2
    assert out[f"{full}"] < 12.0  # full-range weights: each pair of products clipped at 32,767 (about 8.1 here)


POINTS = """
import json, sys
import numpy as np
from fan_edge.runtime.session import LandmarkSession
data = np.load(sys.argv[2])
with LandmarkSession(sys.argv[1], backend="onnxruntime", device="cpu", threads=1) as session:
    points = session.run_crops(data["images"]).points
print(json.dumps(points.tolist()))
"""


def runtime_points(artifact: Path, faces: Path, emulate: str | None = None) -> np.ndarray:
    cmd = [sys.executable, "-c", POINTS, str(artifact), str(faces)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64"), "-cpu", emulate, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.asarray(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.data
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user (qemu-x86_64) is not installed: apt-get install qemu-user")
def test_default_int8_gives_the_same_landmarks_without_vnni(data_dir, tmp_path):
    """The shipped model's ONNX int8, on real faces: the same landmarks on an AVX2 CPU without VNNI (emulated) as
    here. Before 7-bit weights this CPU class moved them by pixels (+1.9 NME points on AFW)."""
    from fan_edge.calibration import FaceCrops
    from fan_edge.export import Int8Recipe, export_model
    from fan_edge.models import create_model

    (result,) = export_model("default", "onnx", "int8", output=tmp_path / "default-int8.onnx",
                             int8=Int8Recipe(calib=data_dir / "helen_train", calib_faces=32), verify=False)
    assert u8s8_overflow(result.path) == []
    model = create_model("default")
    faces = FaceCrops(data_dir / "afw", model.config.input_size, model.weights.crop, count=6, seed=1).load()
    np.savez(tmp_path / "faces.npz", images=faces["images"])
    here = runtime_points(result.path, tmp_path / "faces.npz")
    avx2 = runtime_points(result.path, tmp_path / "faces.npz", emulate="Haswell-v4")
    assert here.shape == avx2.shape == (6, 68, 2)
    assert np.abs(here - avx2).max() < 0.05  # crop pixels: integer sums are exact on both, only float rounding differs
