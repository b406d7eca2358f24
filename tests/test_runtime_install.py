"""A runtime-only install, built for real: numpy, Pillow and the ONNX Runtime and LiteRT backends, no torch, no OpenCV.

What an app or an edge box ships (``pip install 'fan-edge[onnxruntime]'``):
``fan-edge predict`` on exported artifacts must work there and give the
points the full install gives, and toolkit commands must name their extra
in one line. Building the venv downloads about 150 MB from PyPI (CI has the
network; skipped offline unless ``FAN_EDGE_REQUIRE_RUNTIME_INSTALL=1``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fan_edge.files.folders import landmark_boxes
from fan_edge.files.pts import read_pts
from fan_edge.runtime.session import LandmarkSession

REPO = Path(__file__).resolve().parents[1]


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    done = subprocess.run([*pip, f"{REPO}[onnxruntime,litert]"], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        if os.environ.get("FAN_EDGE_REQUIRE_RUNTIME_INSTALL") == "1":
            pytest.fail(f"runtime-only install failed: {done.stderr[-1500:]}")
        pytest.skip(f"cannot build a runtime-only venv here (no PyPI?): {done.stderr.strip().splitlines()[-1:]}")
    print(f"runtime-only venv ([onnxruntime,litert]): {_size_mb(venv):.0f} MB")
    return venv


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(venv.parent))


def test_no_torch_in_the_runtime_install(runtime_venv: Path):
    listed = _run(runtime_venv, "python", "-m", "pip", "list", "--format", "json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"fan-edge", "numpy", "onnxruntime", "ai-edge-litert"} <= names
    assert not names & {"torch", "jax", "jaxlib", "litert-torch", "safetensors", "albumentations", "opencv-python",
                        "opencv-python-headless"}, names
    imported = _run(runtime_venv, "python", "-c", "import fan_edge.runtime, fan_edge.predict, sys; print('torch' in sys.modules)")
    assert imported.stdout.strip() == "False", imported.stderr
    decoder = _run(runtime_venv, "python", "-c", "from fan_edge.files.images import image_decoder; print(image_decoder())")
    assert decoder.stdout.strip() == "pillow", decoder.stderr


def _face(data_dir: Path) -> tuple[Path, np.ndarray]:
    image = sorted((data_dir / "afw").glob("*.jpg"))[0]
    return image, landmark_boxes(read_pts(image.with_suffix(".pts"))[None])[0]


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_predict_on_a_real_face_matches_the_full_install(runtime_venv: Path, data_dir: Path, exported, micro_tflite, kind):
    artifact = exported[("onnx", "int8", "heatmaps")].path if kind == "onnx" else micro_tflite
    image, box = _face(data_dir)
    done = _run(runtime_venv, "fan-edge", "predict", str(image), "--model", str(artifact), "--json",
                "--boxes", ",".join(f"{v:.3f}" for v in box))
    assert done.returncode == 0, done.stderr
    points = np.array(json.loads(done.stdout)["faces"][0]["points"])
    drawn = runtime_venv.parent / f"drawn-{kind}.png"
    done = _run(runtime_venv, "fan-edge", "predict", str(image), "--model", str(artifact), "--out", str(drawn),
                "--boxes", ",".join(f"{v:.3f}" for v in box))
    assert done.returncode == 0 and drawn.stat().st_size > 0, done.stderr
    from fan_edge.files.images import read_image

    # The full install decodes with OpenCV, the runtime-only one with Pillow: the same libjpeg-turbo pixels.
    expected, _ = LandmarkSession(artifact).predict(read_image(image), np.round(box, 3)[None])
    np.testing.assert_allclose(points, expected[0], atol=0.006)  # the JSON rounds to 0.01 px


def test_toolkit_commands_name_their_extra(runtime_venv: Path):
    for argv in (["fan-edge", "eval", "default", "--data", "x"], ["fan-train", "--model", "fan1", "--data", "x", "--out", "y"],
                 ["fan-edge", "info", "run.safetensors"]):
        done = _run(runtime_venv, *argv)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "pip install 'fan-edge[train]'" in done.stderr and "Traceback" not in done.stderr
    # The registry and its cards need no torch: counts come from the cards or in closed form.
    for argv in (["fan-edge", "models"], ["fan-edge", "info", "default"]):
        done = _run(runtime_venv, *argv)
        assert done.returncode == 0 and "default" in done.stdout, done.stderr
