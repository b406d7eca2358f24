"""Shared test fixtures.

Data that cannot live in the repository (the official state-dict listing, the
300-W images) sits in ``../shared`` beside the checkout. Tests that need it
skip with a clear reason when it is absent, unless ``FAN_EDGE_REQUIRE_DATA=1``
is set (CI with data mounted), in which case they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def _require(path: Path, what: str, is_file: bool = False) -> Path:
    present = path.is_file() if is_file else path.is_dir()
    if not present:
        reason = f"{what} not found at {path}"
        if os.environ.get("FAN_EDGE_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason} (FAN_EDGE_REQUIRE_DATA=1)", pytrace=False)
        pytest.skip(f"{reason}; set FAN_EDGE_REQUIRE_DATA=1 to make this a failure")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository (design notes, fixtures, data)."""
    return _require(SHARED_DIR, "shared folder ../shared")


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    """``../shared/fixtures`` (reference listings such as the official state dict)."""
    return _require(shared_dir / "fixtures", "shared fixtures ../shared/fixtures")


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """``../shared/data/300w``: the 300-W images and .pts annotations."""
    return _require(shared_dir / "data" / "300w", "300-W data ../shared/data/300w")


@pytest.fixture(scope="session")
def require_shared():
    """``require_shared(path, what, is_file=False)``: the same skip/fail rule for one file or folder."""
    return _require


# ---- export and runtime fixtures (tests/test_export_*.py, tests/test_runtime_session.py) ----------


def _synthetic_faces(folder: Path, count: int = 6) -> Path:
    """Noise images with plausible 68-point .pts: enough for the export's mechanics without ../shared."""
    import cv2
    import numpy as np

    from fan_edge.files.pts import write_pts

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    for i in range(count):
        size = 160 + 16 * i
        image = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        cx, cy, r = size / 2 + rng.uniform(-8, 8), size / 2 + rng.uniform(-8, 8), size / 4
        points = np.stack([cx + r * np.cos(angles), cy + 0.9 * r * np.sin(angles)], axis=1) + rng.normal(0, 2, (68, 2))
        cv2.imwrite(str(folder / f"face{i}.png"), image)
        write_pts(folder / f"face{i}.pts", points)
    return folder


@pytest.fixture(scope="session")
def synthetic_faces(tmp_path_factory) -> Path:
    return _synthetic_faces(tmp_path_factory.mktemp("faces"))


def randomise_batchnorm(model):
    """Give every BatchNorm non-trivial statistics and affine weights (an untrained net's are identities)."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """fan1-w32-i128 with random weights and BatchNorm statistics, Gaussian refinement and a non-default crop,
    saved in fan-edge's format (so every exporter path reads config and card from the file)."""
    import torch

    from fan_edge.models import FANConfig, Weights, create_model, save_checkpoint
    from fan_edge.runtime.crop import CropSpec

    torch.manual_seed(0)
    config = FANConfig(stacks=1, width=32, input_size=128)
    trained_as = Weights(crop=CropSpec(reference_scale=280.0, center_shift=0.0), refine="gaussian")
    model = randomise_batchnorm(create_model(config, weights=trained_as))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(model, path, card={"description": "test model, random weights"})


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_faces):
    """Every implemented target x precision of the tiny model (heatmaps), plus fp32 and int8 with in-graph landmarks.

    Exported once per session (two export calls: the torch -> ONNX step is shared within each). The parity check
    runs with the real tolerances: fp32 and fp16 pass them; a random network's int8 landmarks legitimately move (its
    peaks are flat), so int8 artifacts say "failed accuracy" (kept, and as usable by the tests as any other).
    """
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from fan_edge.export import Int8Recipe, export_model

    out = tmp_path_factory.mktemp("exports")
    common = dict(int8=Int8Recipe(calib=synthetic_faces, calib_faces=6), verify=synthetic_faces, verify_faces=4)
    results = export_model(str(tiny_checkpoint), "onnx,openvino", "fp32,fp16,int8", output=out / "heatmaps", **common)
    results += export_model(str(tiny_checkpoint), "onnx,openvino", "fp32,int8", outputs="landmarks", output=out / "landmarks", **common)
    return {(r.target, r.precision, r.outputs): r for r in results}


def expected_status(result):
    """The status an export checked under the real tolerances must have: PASSED when its |ΔNME| (and, for landmarks,
    its in-graph decoding) is within them, else FAILED_ACCURACY. Asserts that the tolerance was the real one."""
    from fan_edge.export.parity import DECODE_TOLERANCE_PX, TOLERANCES
    from fan_edge.rows import Status

    p = result.parity
    assert p is not None and p.tolerance == TOLERANCES[result.precision]
    within = abs(p.delta_nme) <= p.tolerance and (p.decode_px is None or p.decode_px <= DECODE_TOLERANCE_PX)
    return Status.PASSED if within else Status.FAILED_ACCURACY


@pytest.fixture(scope="session")
def micro_tflite(tmp_path_factory) -> Path:
    """The smallest FAN (1 stack, width 32, hourglass depth 1: the quickest to convert) as fp32 TFLite, random weights.

    One conversion per session (litert-torch takes tens of seconds even for this), shared by the runtime's tests.
    """
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    import torch

    from fan_edge.export import export_model
    from fan_edge.models import FANConfig, Weights, create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model(FANConfig(stacks=1, width=32, input_size=128, hourglass_depth=1), weights=Weights(refine="gaussian"))
    folder = tmp_path_factory.mktemp("litert")
    checkpoint = save_checkpoint(model, folder / "micro.safetensors", card={"description": "test model, random weights"})
    (result,) = export_model(str(checkpoint), "tflite", "fp32", output=folder / "micro.tflite", verify=False)
    return result.path


def fan_edge_package(path: Path, files: dict[str, str] | None = None) -> Path:
    """A folder shaped like a Core ML package fan-edge wrote (``Manifest.json``, a model spec holding a fan-edge
    contract as its metadata entry) without coremltools, plus ``files`` (relative path: text). fan-export replaces
    only such folders (fan_edge.export.staging.fan_edge_package)."""
    import json

    from fan_edge.runtime.contract import METADATA_KEY

    spec = "com.apple.CoreML/model.mlmodel"
    manifest = {"fileFormatVersion": "1.0.0", "rootModelIdentifier": "root",
                "itemInfoEntries": {"root": {"author": "com.apple.CoreML", "name": "model.mlmodel", "path": spec}}}
    key, value = METADATA_KEY.encode(), json.dumps({"input_size": 64, "heatmap_size": 16}).encode()
    entry = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(value)]) + value
    (path / "Data" / spec).parent.mkdir(parents=True, exist_ok=True)
    (path / "Manifest.json").write_text(json.dumps(manifest))
    (path / "Data" / spec).write_bytes(b"\x08\x07" + entry)
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def quick_onnx(model_name: str, path: Path, name: str) -> Path:
    """A model as a plain ONNX artifact with fan-export's contract beside it, via torch's legacy exporter (about a
    second): for tests of the runtime and the CLI that need a real artifact, not the exporter's own checks."""
    import warnings

    import torch

    from fan_edge.export.metadata import HEATMAPS_NAME, INPUT_NAME, build_contract
    from fan_edge.models import create_model

    model = create_model(model_name).eval()
    size = model.config.input_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=[INPUT_NAME], output_names=[HEATMAPS_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, HEATMAPS_NAME: {0: "batch"}})
    contract = build_contract(model, model_name=name, card={}, target="onnx", precision="fp32", outputs="heatmaps")
    path.with_name(path.name + ".json").write_text(contract.to_json(indent=2) + "\n")
    return path
