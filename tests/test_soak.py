"""The soak's mechanics (fan_edge.ondevice.soak): 8 threads against a sequential run, on every backend.

The soak's figures (10,000 calls, memory growth, throughput) are benchmark
results in docs/runtime.md; here only that the soak runs, compares, counts and
judges correctly: no assertion on time or on the real memory growth.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from fan_edge.ondevice import soak
from fan_edge.runtime.session import LandmarkSession

BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}


def _artifact(backend: str, request: pytest.FixtureRequest):
    pytest.importorskip(BACKENDS[backend])
    if backend == "litert":
        return request.getfixturevalue("micro_tflite")
    return request.getfixturevalue("exported")[("onnx", "fp32", "heatmaps")].path


@pytest.fixture(scope="module")
def onnx_path(exported):
    return exported[("onnx", "fp32", "heatmaps")].path


def _measured(value) -> bool:
    return isinstance(value, float) and np.isfinite(value)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_eight_threads_match_the_sequential_run(backend, request, synthetic_faces):
    path = _artifact(backend, request)
    report = soak.soak_artifact(path, faces=synthetic_faces, threads=8, calls=240, inputs=6, backend=backend)
    assert report["backend"] == backend and report["device"] == "cpu"
    assert (report["calls"], report["threads"], report["warmup_calls"], report["inputs"]) == (240, 8, 24, 6)
    assert report["completed"] == 240
    assert report["mismatches"] == 0 and report["errors"] == 0, report["examples"]
    assert not [f for f in report["failures"] if "memory" not in f]  # the memory verdict is the benchmark's business
    measured = ("wall_s", "calls_per_s", "calls_per_s_after_warmup", "sequential_ms_per_call", "rss_warm_mb", "rss_end_mb",
                "rss_growth_pct", "peak_rss_mb")
    for key in measured:
        assert _measured(report[key]), (key, report[key])
    assert report["rss_warm_mb"] > 0 and report["rss_end_mb"] > 0 and report["wall_s"] > 0
    assert 1 <= report["engine_objects"] <= 8
    assert report["data"] == str(synthetic_faces) and report["precision"] == "fp32"


def _soak_with(onnx_path, wrap, calls: int = 96, **kwargs) -> dict:
    """Soak 8 synthetic inputs with the session's predict replaced by ``wrap(original, call_number)``."""
    inputs = soak.synthetic_inputs(8)
    with LandmarkSession(onnx_path, threads=1) as session:
        original, lock, count = session.predict, threading.Lock(), [0]

        def predict(image, boxes):
            with lock:
                count[0] += 1
                n = count[0]
            return wrap(original, n)(image, boxes)

        session.predict = predict
        return soak.soak_session(session, inputs, threads=8, calls=calls, **kwargs)


def test_a_perturbed_result_is_a_mismatch_and_fails_the_soak(onnx_path):
    def wrap(original, n):  # call 8 + 57 is a threaded call (the first 8 are the sequential reference)
        if n != 8 + 57:
            return original

        def nudged(image, boxes):
            points, scores = original(image, boxes)
            return points + 1e-9, scores

        return nudged

    report = _soak_with(onnx_path, wrap)
    assert report["mismatches"] == 1 and report["errors"] == 0 and report["completed"] == 96
    assert not report["passed"] and any("differ" in f for f in report["failures"])
    assert "points max |diff| 1e-09" in report["examples"][0]


def test_a_failing_call_is_counted_and_the_soak_goes_on(onnx_path):
    def wrap(original, n):
        if n not in (8 + 3, 8 + 80):
            return original

        def broken(image, boxes):
            raise RuntimeError("backend fell over\nsecond line")

        return broken

    report = _soak_with(onnx_path, wrap)
    assert report["errors"] == 2 and report["mismatches"] == 0 and report["completed"] == 96
    assert not report["passed"] and any("2 call(s) raised" in f for f in report["failures"])
    assert all(e.endswith("RuntimeError: backend fell over") for e in report["examples"])


def test_memory_growth_at_the_bound_fails(onnx_path, monkeypatch):
    readings = iter([100.0, 105.0])  # after warm-up, at the end
    monkeypatch.setattr(soak, "current_rss_mb", lambda: next(readings))
    report = _soak_with(onnx_path, lambda original, n: original, calls=24)
    assert report["rss_growth_pct"] == 5.0 and not report["passed"]
    assert report["failures"] == ["resident memory grew 5.00% after warm-up (bound 5%)"]
    readings = iter([100.0, 104.9])
    report = _soak_with(onnx_path, lambda original, n: original, calls=24)
    assert report["passed"] and report["failures"] == []


def test_bad_settings_are_one_line_errors(onnx_path):
    with LandmarkSession(onnx_path) as session:
        for kwargs in ({"calls": 10, "warmup": 10}, {"calls": 1}, {"threads": 0}):
            with pytest.raises(soak.DataError):
                soak.soak_session(session, soak.synthetic_inputs(2), **kwargs)
        with pytest.raises(soak.DataError):
            soak.soak_session(session, [])


def test_cli_reports_json_and_exit_status(onnx_path, synthetic_faces, tmp_path, capsys):
    from fan_edge.cli import main as fan_edge_main

    code = fan_edge_main(["soak", str(onnx_path), "--threads", "3", "--calls", "30", "--faces", str(synthetic_faces), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["passed"] else 1)
    assert report["mismatches"] == 0 and report["errors"] == 0 and report["threads"] == 3 and report["calls"] == 30
    assert soak.main([str(tmp_path / "missing.onnx"), "--calls", "5"]) == 2
    assert "no such artifact" in capsys.readouterr().err


def test_the_soak_runs_without_torch(onnx_path, synthetic_faces):
    """An edge box has no torch: the soak, its data readers included, must not import it."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from fan_edge.ondevice.soak import main\n"
        f"rc = main([{str(onnx_path)!r}, '--threads', '2', '--calls', '20', '--faces', {str(synthetic_faces)!r}, '--json'])\n"
        "sys.exit(7 if any(m.startswith('torch.') for m in sys.modules) else rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), (done.returncode, done.stderr)  # 7: a torch module was imported
    assert json.loads(done.stdout)["mismatches"] == 0
