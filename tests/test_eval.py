"""fan-edge eval: exported artifacts scored through the runtime, which folders were scored, progress on stderr."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fan_edge.evaluation import evaluate_model, evaluate_session, training_folders
from fan_edge.cli import main
from fan_edge.errors import DataError


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_checkpoint) -> Path:
    pytest.importorskip("onnxruntime")
    from conftest import quick_onnx

    return quick_onnx(str(tiny_checkpoint), tmp_path_factory.mktemp("onnx") / "tiny.onnx", "tiny")


def _link_faces(images: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        for f in (image, image.with_suffix(".pts")):
            (folder / f.name).symlink_to(f.resolve())


@pytest.fixture(scope="module")
def split_faces(tmp_path_factory, synthetic_faces) -> Path:
    """The synthetic faces as a 300-W-like tree: afw/ (4 faces) and helen_train/ (2)."""
    root = tmp_path_factory.mktemp("split") / "300w"
    images = sorted(synthetic_faces.glob("*.png"))
    _link_faces(images[:4], root / "afw")
    _link_faces(images[4:], root / "helen_train")
    return root


def _eval_json(capsys, *argv: str) -> tuple[dict, str]:
    assert main(["eval", *argv, "--json"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_eval_scores_an_exported_artifact_as_its_checkpoint(capsys, tiny_onnx, tiny_checkpoint, synthetic_faces):
    artifact, err = _eval_json(capsys, str(tiny_onnx), "--data", str(synthetic_faces))
    assert artifact["backend"] == "onnxruntime" and artifact["device"] == "cpu" and artifact["faces"] == 6, err
    torch_run, _ = _eval_json(capsys, str(tiny_checkpoint), "--data", str(synthetic_faces))
    assert torch_run["backend"] == "pytorch"
    for key in ("nme_io", "nme_box", "auc7", "fr7"):
        assert artifact[key] == pytest.approx(torch_run[key], rel=1e-3, abs=1e-3), key
    assert artifact["folders"] == {".": {k: artifact[k] for k in ("nme_io", "nme_box", "auc7", "fr7", "faces")}}
    assert main(["eval", str(tiny_onnx), "--data", str(synthetic_faces)]) == 0
    text = capsys.readouterr().out
    assert "6 faces" in text and "onnxruntime on cpu" in text and "NME inter-ocular" in text


def test_eval_scores_a_tflite_artifact(capsys, micro_tflite, synthetic_faces):
    """The issue's case: `fan-edge eval exports/x.tflite` used to answer that the file holds Python objects."""
    artifact, err = _eval_json(capsys, str(micro_tflite), "--data", str(synthetic_faces))
    assert artifact["backend"] == "litert" and artifact["faces"] == 6, err
    torch_run, _ = _eval_json(capsys, str(micro_tflite.with_name("micro.safetensors")), "--data", str(synthetic_faces))
    assert artifact["nme_io"] == pytest.approx(torch_run["nme_io"], rel=1e-2)


def test_eval_lists_the_folders_it_scored_and_warns_on_training_ones(capsys, tiny_onnx, split_faces):
    report, err = _eval_json(capsys, str(tiny_onnx), "--data", str(split_faces))
    assert {name: f["faces"] for name, f in report["folders"].items()} == {"afw": 4, "helen_train": 2}
    assert report["faces"] == 6 and report["training_folders"] == ["helen_train"]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "helen_train" in lines[0] and "training" in lines[0] and "2 of 6" in lines[0], err

    assert main(["eval", str(tiny_onnx), "--data", str(split_faces)]) == 0
    text = capsys.readouterr().out.splitlines()
    afw = next(line for line in text if line.strip().startswith("afw"))
    helen = next(line for line in text if line.strip().startswith("helen_train"))
    assert "4 faces" in afw and "training" not in afw
    assert "2 faces" in helen and "named like training data" in helen

    report, err = _eval_json(capsys, str(tiny_onnx), "--data", str(split_faces / "afw"))
    assert report["training_folders"] == [] and err == ""


def test_torch_evaluation_records_folders_and_warns_before_running(tiny_checkpoint, split_faces):
    from fan_edge.models import create_model

    logged: list[str] = []
    result = evaluate_model(create_model(tiny_checkpoint), split_faces, log=logged.append)
    assert sorted(set(result.folders)) == ["afw", "helen_train"] and len(result.folders) == 6
    assert {k: s.faces for k, s in result.by_folder().items()} == {"afw": 4, "helen_train": 2}
    assert len(logged) == 1 and "helen_train" in logged[0]


def test_training_folders_by_name():
    assert training_folders(["afw", "helen_train", "lfpw/trainset", "ibug", "."], "/data/300w") == ["helen_train", "lfpw/trainset"]
    assert training_folders(["."], "/data/300w/helen_train") == ["."]  # --data pointed at the split itself
    assert training_folders(["afw"], "/data/300w") == []


def test_evaluation_draws_its_bar_on_a_terminal_only(monkeypatch, tiny_onnx, synthetic_faces):
    """The faces' bar (fan_edge.progress): on a terminal when asked for, never in a pipe nor for a library call."""
    from fan_edge.runtime import LandmarkSession

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("FAN_EDGE_NO_PROGRESS", raising=False)
    with LandmarkSession(tiny_onnx, threads=1) as session:
        for stderr, asked, drawn in ((Terminal(), True, True), (Terminal(), False, False), (io.StringIO(), True, False)):
            monkeypatch.setattr(sys, "stderr", stderr)
            evaluate_session(session, synthetic_faces, progress=asked)
            assert ("eval" in stderr.getvalue()) is drawn, (asked, stderr.getvalue())


def test_eval_of_an_artifact_needs_no_torch(tiny_onnx, synthetic_faces):
    code = ("import contextlib, io, sys; from fan_edge.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    code = main(['eval', {str(tiny_onnx)!r}, '--data', {str(synthetic_faces)!r}, '--json'])\n"
            "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "0 False", done.stderr


def test_eval_refuses_runtime_options_for_a_torch_model_and_mismatched_landmarks(capsys, synthetic_faces):
    assert main(["eval", "fan1-w32-i128", "--data", str(synthetic_faces), "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exported artifacts" in err, err

    from fan_edge.models import FAN, FANConfig

    with pytest.raises(DataError, match="19 landmarks but the .pts under .* have 68"):
        evaluate_model(FAN(FANConfig(stacks=1, width=32, input_size=128, num_landmarks=19)), synthetic_faces)


@pytest.mark.data
def test_the_default_model_exported_scores_as_in_pytorch(data_dir, tmp_path):
    """The bundled default on real faces: the ONNX artifact through the runtime gives PyTorch's landmarks."""
    pytest.importorskip("onnxruntime")
    from conftest import quick_onnx

    from fan_edge.models import create_model
    from fan_edge.runtime.session import LandmarkSession

    _link_faces(sorted((data_dir / "afw").glob("*.jpg"))[:8], tmp_path / "afw")
    artifact = quick_onnx("default", tmp_path / "default.onnx", "default")
    with LandmarkSession(artifact) as session:
        exported = evaluate_session(session, tmp_path, batch_size=3)  # 3: a last batch of 2
    eager = evaluate_model(create_model("default"), tmp_path)
    assert exported.folders == eager.folders == ["afw"] * 8
    np.testing.assert_allclose(exported.predictions, eager.predictions, atol=0.05)
    assert exported.scores.nme_io == pytest.approx(eager.scores.nme_io, rel=1e-3)
