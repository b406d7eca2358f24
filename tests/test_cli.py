"""The command-line package: one thin module per command, shared one-line errors, defaults that the CLI (not the
library) resolves, and what each command tells its user (paths written, progress, the plot's legend)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fan_edge import cli
from fan_edge.cli import common
from fan_edge.errors import DataError

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("main", "train_main", "distill_main", "export_main", "prune_main", "profile_main", "bench_main", "quantize_main")


# ---- layout --------------------------------------------------------------------------------------------------


def test_console_scripts_point_at_importable_entry_points():
    """pyproject's [project.scripts] name fan_edge.cli:NAME; each NAME is a callable of the package."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts.values()) == {f"fan_edge.cli:{name}" for name in ENTRY_POINTS}
    for name in ENTRY_POINTS:
        assert callable(getattr(cli, name))


def test_one_module_per_command_and_no_private_argparse():
    folder = REPO / "fan_edge" / "cli"
    modules = {p.stem for p in folder.glob("*.py")}
    assert {"common", "predict", "eval", "export", "train", "bench", "quantize", "prune", "profile", "label", "models"} <= modules
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "._actions" not in text and "_SubParsersAction" not in text, path.name


def test_python_dash_m_runs_fan_edge():
    proc = subprocess.run([sys.executable, "-m", "fan_edge.cli", "--version"], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("fan-edge "), proc.stderr


def test_importing_the_cli_imports_no_torch():
    code = ("import sys; import fan_edge.cli as c; c.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'cv2', 'onnxruntime', 'matplotlib')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ---- one-line errors, as before the split ---------------------------------------------------------------------


@pytest.mark.parametrize("entry, argv, prog", [
    ("main", ["predict"], "fan-edge predict"),
    ("main", ["eval", "--batch-size", "0", "--data", "x"], "fan-edge eval"),
    ("main", ["nonsense"], "fan-edge"),
    ("export_main", [], "fan-export"),
    ("prune_main", ["--epochs", "x"], "fan-prune"),
    ("quantize_main", ["--qat", "--sensitivity"], "fan-quantize"),
    ("bench_main", ["--threads", "0"], "fan-bench"),
])
def test_usage_errors_are_one_line(entry, argv, prog, capsys):
    with pytest.raises(SystemExit) as excinfo:
        getattr(cli, entry)(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"{prog}: error: ") and err.rstrip().endswith(f"(see {prog} --help)"), err


def test_library_errors_are_one_line_exit_2(capsys):
    assert cli.main(["info", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fan-edge: error: ") and "\n" not in err


def test_one_line_takes_the_original_error_of_a_worker():
    exc = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File x\n"
                  f"{DataError.__module__}.DataError: face0.png: not a readable image")
    assert common.one_line(exc) == "face0.png: not a readable image"
    assert common.one_line(ValueError("a\n  b")) == "a b" and common.one_line(ValueError()) == "ValueError"


def test_overridden_train_defaults_show_in_help(capsys):
    """fan-prune and fan-quantize change TrainSpec defaults and help through their own list of actions."""
    from fan_edge.cli import prune, quantize

    args = prune.build_parser().parse_args(["--ratio", "0.5"])
    assert args.out == "runs/prune" and args.epochs == 30 and args.data is None
    text = prune.build_parser().format_help()
    assert "--init" not in text and "default: runs/prune" in text and "model to prune" in text
    args = quantize.build_parser().parse_args(["--report"])
    assert args.out is None and args.epochs == 4 and args.data is None
    text = quantize.build_parser().format_help()
    assert "--qat, default: 4" in text and "default runs/qat, runs/sensitivity" in text


# ---- defaults that assume a checkout live in the CLI ----------------------------------------------------------


def test_shared_data_is_looked_up_beside_the_checkout_or_the_cwd(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(common, "CHECKOUT", checkout)
    monkeypatch.chdir(checkout)
    assert common.shared_data("300w", "afw") is None
    (tmp_path / "shared" / "data" / "300w" / "afw").mkdir(parents=True)
    assert common.shared_data("300w", "afw") == (tmp_path / "shared" / "data" / "300w" / "afw").resolve()


def test_library_has_no_checkout_defaults():
    """No ../shared path or PYTHONPATH edit in the modules this package's commands own (the CLI resolves defaults)."""
    for name in ("fan_edge/predict.py", "fan_edge/runtime/detect.py", "fan_edge/bench/pareto.py", "fan_edge/evaluation.py",
                 "fan_edge/bench/settings.py"):
        text = (REPO / name).read_text()
        assert "../shared" not in text and "PYTHONPATH" not in text and "sys.path" not in text, name


def test_export_verify_default(tmp_path, monkeypatch):
    from fan_edge.cli.export import build_parser, verify_folder

    parse = build_parser().parse_args
    assert verify_folder(parse(["--target", "onnx", "--no-verify"])) is False
    assert verify_folder(parse(["--target", "onnx", "--verify", "faces"])) == "faces"
    assert verify_folder(parse(["--target", "onnx", "--calib", "faces"])) is None  # the exporter takes --calib's folder
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.setattr(common, "CHECKOUT", tmp_path / "nowhere")
    monkeypatch.chdir(cwd)
    assert verify_folder(parse(["--target", "onnx"])) is None
    (tmp_path / "shared" / "data" / "300w" / "afw").mkdir(parents=True)
    assert verify_folder(parse(["--target", "onnx"])) == (tmp_path / "shared" / "data" / "300w" / "afw").resolve()


def test_export_model_needs_a_folder_to_verify_on(tiny_checkpoint, tmp_path, monkeypatch):
    """The library no longer looks for ../shared/data: without --verify or --calib it asks for faces, before loading."""
    pytest.importorskip("onnx")
    from fan_edge.errors import ExportError
    from fan_edge.export import export_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError, match="no faces to verify the export on"):
        export_model(str(tiny_checkpoint), "onnx", "fp32", output=tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


# ---- what fan-export tells its user ---------------------------------------------------------------------------


def test_fan_export_prints_absolute_paths_and_progress(tiny_checkpoint, synthetic_faces, tmp_path, monkeypatch, capsys):
    """Without --output the artifact lands in the working directory: every file written is printed in full, and
    each long step (model load, int8 calibration, export, verification) says so on stderr (the first two on a
    terminal only, so that a refusal after them, such as a locked output, stays one line in a pipe)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAN_EDGE_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the steps before the outputs are locked: on a terminal only
    code = cli.export_main(["--target", "onnx", "--precision", "int8", "--model", str(tiny_checkpoint), "--calib",
                            str(synthetic_faces), "--calib-faces", "4", "--verify-faces", "4"])
    assert code in (0, 1)  # random weights may fail the tolerance; the paths are printed either way
    captured = capsys.readouterr()
    wrote = [line.removeprefix("wrote ") for line in captured.out.splitlines() if line.startswith("wrote ")]
    assert wrote and all(Path(p).is_absolute() and Path(p).exists() and Path(p).parent == tmp_path.resolve() for p in wrote)
    assert any(p.endswith(".onnx") for p in wrote) and any(p.endswith(".onnx.json") for p in wrote)
    steps = captured.err
    for step in ("loading ", "calibrating int8 on 4 faces", "exporting ", "verifying "):
        assert step in steps, steps


# ---- fan-edge predict's detector threshold --------------------------------------------------------------------


class _Session:
    """Stands in for a LandmarkSession: points at the box's corners and centre."""

    def predict(self, image, boxes):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        points = np.stack([boxes[:, :2], boxes[:, 2:], (boxes[:, :2] + boxes[:, 2:]) / 2], axis=1)
        return points, np.ones(points.shape[:2])


class _Detector:
    def detect(self, image):
        from fan_edge.runtime.detect import Detections

        return Detections(np.array([[10.0, 10, 60, 60], [70, 10, 110, 50], [5, 60, 40, 95]]), np.array([1.3, 0.53, 0.1]))


def test_min_score_drops_weak_detections_not_given_boxes():
    from fan_edge.runtime.detect import MIN_SCORE, detect_and_predict

    image = np.zeros((100, 120, 3), np.uint8)
    faces = detect_and_predict(_Session(), image, detector=_Detector(), refine_passes=0, min_score=0.6)
    assert len(faces.boxes) == 1 and faces.detector_scores.tolist() == [1.3]
    assert faces.below_min_score.tolist() == [0.53, 0.1]
    every = detect_and_predict(_Session(), image, detector=_Detector(), refine_passes=0)
    assert len(every.boxes) == 3 and every.below_min_score is None
    given = detect_and_predict(_Session(), image, boxes=np.array([[70.0, 10, 110, 50]]), refine_passes=0, min_score=100.0)
    assert len(given.boxes) == 1 and given.detector_scores is None
    assert 0 < MIN_SCORE < 1.3
    for bad in (float("nan"), float("inf"), "0.5", True):
        with pytest.raises(DataError, match="minimum detector score"):
            detect_and_predict(_Session(), image, detector=_Detector(), min_score=bad)


def test_min_score_is_documented(capsys):
    from fan_edge.runtime.detect import MIN_SCORE

    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--min-score S" in text and f"default {MIN_SCORE:g}" in text and "AFW" in text
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "--min-score" in readme and "AFW" in readme


# ---- the Pareto plot ----------------------------------------------------------------------------------------------


def _row(model, target, precision, ms, nme, **kw):
    from fan_edge.rows import BenchRow

    values = {"model": model, "target": target, "precision": precision, "device": "cpu", "status": "passed",
              "latency_ms_p50": ms, "nme_io": nme, "size_mb": 1.0}
    return BenchRow(**{**values, **kw})


def test_pareto_points_carry_model_names_and_the_legend_says_what_markers_mean():
    from fan_edge.bench.pareto import LEGEND, legend_keys, point_label
    from fan_edge.rows import Status

    rows = [_row("fan2-w64-i128-300w", "torch", "fp32", 30.0, 4.5), _row("runs/x/final.safetensors", "onnxruntime", "int8", 3.0, 4.6),
            _row("fan2-w64-i128-300w", "litert", "int8", 10.0, 4.9, device="ethos-u55-128", latency_source="vela estimate (x)"),
            _row("fan2-w64-i128-300w", "openvino", "int8", 5.0, 6.0, status=Status.FAILED_ACCURACY)]
    assert point_label(rows[0]) == "fan2-w64-i128-300w torch:fp32"
    assert point_label(rows[1]) == "final.safetensors onnxruntime:int8"
    assert point_label(rows[2]) == "fan2-w64-i128-300w litert:int8@ethos-u55-128"
    keys = legend_keys(rows, front=[1, 0])
    assert keys == ["front", "behind", "torch", "artifact", "estimate", "failed"]
    assert all(LEGEND[k].split(":")[0] in ("red", "blue", "square", "circle", "triangle", "hollow") for k in keys)
    assert legend_keys(rows[:1], front=[0]) == ["front", "torch"]


def test_pareto_plot_legend_and_labels_are_drawn(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from fan_edge.bench import pareto

    texts: dict[str, list[str]] = {}
    close = plt.close

    def keep(fig):  # read the figure's legend and annotations before it is closed
        ax = fig.axes[0]
        texts["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        texts["points"] = [c.get_text() for c in ax.texts]
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    rows = [_row("fan1-w64-i64-300w", "torch", "fp32", 20.0, 5.0), _row("fan1-w64-i64-300w", "onnxruntime", "fp32", 4.0, 5.0)]
    png = pareto.plot_pareto(rows, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert any(t.startswith("red: on the Pareto front") for t in texts["legend"])
    assert any(t.startswith("square: PyTorch eager") for t in texts["legend"])
    assert sorted(texts["points"]) == ["fan1-w64-i64-300w onnxruntime:fp32", "fan1-w64-i64-300w torch:fp32"]


def test_fan_bench_says_where_the_plot_went(tmp_path, monkeypatch, capsys):
    """--plot: 'wrote PATH' (absolute) on stderr, whatever --json does with stdout."""
    pytest.importorskip("matplotlib")
    from fan_edge.bench import runner

    rows = [_row("m", "torch", "fp32", 20.0, 5.0)]
    monkeypatch.setattr(runner, "run_bench", lambda options, log=None: rows)
    monkeypatch.chdir(tmp_path)
    assert cli.bench_main(["--model", "m", "--targets", "torch:fp32", "--plot", "p.png", "--out", "a", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {(tmp_path / 'p.png').resolve()}" in captured.err.splitlines()
    assert (tmp_path / "p.png").is_file() and captured.out.lstrip().startswith("{")


def test_modules_import():
    for name in ("bench", "check", "common", "edge", "eval", "export", "label", "models", "predict", "profile", "prune", "quantize",
                 "train"):
        importlib.import_module(f"fan_edge.cli.{name}")
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)
