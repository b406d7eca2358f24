"""fan-bench: target specs, torch-free artifact timing, isolated rows, reports and the Pareto plot."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fan_edge.bench.pareto import pareto_front, plot_pareto
from fan_edge.bench.report import format_table, to_csv, to_json, write_csv
from fan_edge.bench import runner
from fan_edge.bench.runner import BenchOptions, Timing, round_runs, run_bench, time_rows
from fan_edge.bench.targets import BenchTarget, parse_targets
from fan_edge.cli import bench_main
from fan_edge.errors import BenchError
from fan_edge.rows import EXTRA_KEYS, BenchRow, Status
from fan_edge.ondevice.bench import ROW_KEYS, time_artifact

REPO = Path(__file__).resolve().parents[1]
FAST = dict(runs=3, warmup=1, threads=1)


# ---- the --targets spec ---------------------------------------------------------------------------


def test_targets_parse_defaults_aliases_and_duplicates():
    targets = parse_targets("torch:fp32, onnxruntime:int8@gpu,ort:int8@gpu,tflite,openvino:fp16@npu")
    assert targets == [
        BenchTarget("torch", "fp32", "cpu"),
        BenchTarget("onnxruntime", "int8", "gpu"),
        BenchTarget("litert", "fp32", "cpu"),
        BenchTarget("openvino", "fp16", "npu"),
    ]
    assert [t.export_target for t in targets] == [None, "onnx", "tflite", "openvino"]
    assert targets[1].label == "onnxruntime:int8@gpu" and targets[2].label == "litert:fp32"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tensorrt:fp32", "runtime must be one of"),
        ("onnxruntime:int4", "onnxruntime precisions are fp32, fp16, int8"),
        ("torch:int8", "torch precisions are fp32"),
        ("litert:fp32@tpu", "device must be one of cpu, gpu, npu"),
        (" , ", "no targets given"),
    ],
)
def test_targets_errors_are_one_line(spec, message):
    with pytest.raises(BenchError, match=message) as info:
        parse_targets(spec)
    assert "\n" not in str(info.value)


def test_cli_rejects_a_bad_target_in_one_line(capsys):
    assert bench_main(["--targets", "onnxruntime:fp8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fan-bench: error: unknown target 'onnxruntime:fp8'") and "\n" not in err


# ---- torch-free timing of one artifact --------------------------------------------------------------


def test_time_artifact_row(exported):
    path = exported[("onnx", "fp32", "heatmaps")].path
    row = time_artifact(path, threads=1, runs=5, warmup=2)
    assert set(ROW_KEYS) <= set(row.to_dict())
    assert row.target == "onnxruntime" and row.precision == "fp32" and row.status == "passed"
    assert 0 < row.latency_ms_p50 <= row.latency_ms_p90 and row.fps == pytest.approx(
        1000 / row.latency_ms_p50, rel=0.01
    )
    assert row.runs == 5 and row.threads == 1 and row.size_mb > 0
    assert row.peak_rss_mb >= row.base_rss_mb > 0
    assert row.nme_io is None and row.speedup is None


def test_runtime_bench_module_is_torch_free_and_reports_failures_as_rows(exported, tmp_path):
    path = exported[("openvino", "fp32", "heatmaps")].path
    code = (
        "import sys, json; from fan_edge.ondevice.bench import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    run = lambda *args: subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=REPO)  # noqa: E731
    ok = run(path, "--threads", "1", "--runs", "3", "--warmup", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    row = json.loads(ok.stdout.strip().splitlines()[-1])
    assert row["target"] == "openvino" and row["status"] == "passed" and row["latency_ms_p50"] > 0

    missing = run(tmp_path / "nothing.onnx", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["status"] == "failed" and "no such file" in json.loads(missing.stdout)["error"]

    absent = run(path, "--device", "npu", "--json")
    assert absent.returncode == 3, absent.stderr
    assert json.loads(absent.stdout)["status"] == "device absent"


# ---- the benchmark: export as needed, isolated rows -----------------------------------------------


def test_run_bench_rows_cache_and_isolation(tiny_checkpoint, synthetic_faces, tmp_path, monkeypatch):
    out = tmp_path / "artifacts"
    messages: list[str] = []
    options = BenchOptions(
        models=[str(tiny_checkpoint)],
        targets=parse_targets("torch,onnxruntime:fp32,onnxruntime:int8,openvino:fp32,litert:int8@npu"),
        data=synthetic_faces,
        calib=synthetic_faces,
        calib_faces=4,
        faces=4,
        out=out,
        verify_export=False,
        **FAST,
    )
    import fan_edge.export.openvino_export as ov_export

    def broken(job):
        raise RuntimeError("simulated converter crash\nsecond line")

    monkeypatch.setattr(ov_export, "export_openvino", broken)
    rows = run_bench(options, log=messages.append)
    by = {(r.target, r.precision): r for r in rows}
    assert [(r.target, r.precision, r.device) for r in rows] == [
        ("torch", "fp32", "cpu"),
        ("onnxruntime", "fp32", "cpu"),
        ("onnxruntime", "int8", "cpu"),
        ("openvino", "fp32", "cpu"),
        ("litert", "int8", "npu"),
    ]
    torch_row, ort = by[("torch", "fp32")], by[("onnxruntime", "fp32")]
    assert torch_row.status == "passed" and torch_row.speedup == 1.0 and torch_row.faces == 4
    # fp32 ONNX scores the same faces as PyTorch to within the fp32 tolerance, and has its speed-up against it.
    assert ort.status == "passed" and abs(ort.nme_io - torch_row.nme_io) <= 0.01
    assert ort.speedup == pytest.approx(torch_row.latency_ms_p50 / ort.latency_ms_p50, rel=1e-2)
    assert by[("onnxruntime", "int8")].status in (Status.PASSED, Status.FAILED_ACCURACY)
    assert by[("onnxruntime", "int8")].latency_ms_p50 > 0
    # The crashing exporter fails its own row only, with a one-line reason.
    ov = by[("openvino", "fp32")]
    assert ov.status == "failed" and ov.error == "export: RuntimeError: simulated converter crash"
    assert by[("litert", "int8")].status == "device absent"
    assert (out / "fan-bench-cache.json").is_file()

    # A second run reuses the cached artifacts instead of exporting again.
    monkeypatch.undo()
    messages.clear()
    again = run_bench(
        BenchOptions(**{**options.__dict__, "targets": parse_targets("onnxruntime:fp32"), "data": None}), log=messages.append
    )
    assert any("reusing" in m for m in messages) and not any(m.startswith("exporting") for m in messages)
    assert again[0].status == "passed" and again[0].nme_io is None and again[0].speedup is None


def test_the_int8_cache_follows_the_cards_calibration_count(tiny_checkpoint, synthetic_faces, tmp_path):
    """Without --calib-faces a row calibrates on the count its model card measured (export.calib_faces), and that
    count keys the cache: the same weights under a card asking for another count are exported again."""
    from fan_edge.models import create_model, save_checkpoint
    from fan_edge.runtime.contract import read_sidecar

    model = create_model(str(tiny_checkpoint))
    messages: list[str] = []
    for count in (3, 5):
        ckpt = save_checkpoint(model, tmp_path / "hinted.safetensors", {"export": {"calib_faces": count}})
        options = BenchOptions(models=[str(ckpt)], targets=parse_targets("onnxruntime:int8"), calib=synthetic_faces,
                               out=tmp_path / "artifacts", verify_export=False, **FAST)
        messages.clear()
        (row,) = run_bench(options, log=messages.append)
        assert row.status == Status.PASSED, row.error
        assert read_sidecar(row.path).extra["int8"]["calib_faces"] == count
        assert not any("reusing" in m for m in messages)


def test_runs_split_over_rounds():
    assert round_runs(10, 3) == [4, 3, 3]
    assert round_runs(100, 5) == [20] * 5
    assert round_runs(2, 5) == [1, 1]  # never a round without runs
    assert round_runs(7, 1) == [7]


def test_rows_are_timed_in_interleaved_rounds_and_pooled(monkeypatch):
    """Round 1 times every row, then round 2...: a slow spell of the machine lands on every row alike."""
    calls = []
    clock = iter(range(1, 1000))

    def fake_timed_row(subject, target, options, runs):
        calls.append((subject, runs))
        if subject == "broken" and len([c for c in calls if c[0] == "broken"]) == 2:
            raise RuntimeError("the backend crashed in round 2")
        samples = [float(next(clock)) for _ in range(runs)]
        return BenchRow(status=Status.PASSED, size_mb=1.5, peak_rss_mb=100.0 + len(calls), base_rss_mb=50.0,
                        more={"latency_ms_samples": samples})

    monkeypatch.setattr(runner, "timed_row", fake_timed_row)
    target = BenchTarget("onnxruntime")
    timings = [Timing(BenchRow(model=n, target="onnxruntime"), n, target) for n in ("a", "broken", "b")]
    absent = Timing(BenchRow(model="gpu").fail("no gpu", Status.DEVICE_ABSENT), "gpu", target)
    options = BenchOptions(runs=7, warmup=2, rounds=3, threads=1)
    time_rows(timings + [absent], options, log=lambda msg: None)

    assert calls == [("a", 3), ("broken", 3), ("b", 3), ("a", 2), ("broken", 2), ("b", 2), ("a", 2), ("b", 2)]
    a, broken, b = (t.row for t in timings)
    # The fake clock counts on over every call: a's runs are 1-3 (round 1), 10-11 (round 2) and 14-15 (round 3),
    # pooled their median is 10; b's are 7-9, 12-13 and 16-17, median 12.
    assert a.runs == 7 and a.rounds == 3 and a.latency_ms_p50 == 10.0 and a.warmup == 2 and a.threads == 1
    assert a.latency_source == "timed here" and a.peak_rss_mb == 107.0 and a.size_mb == 1.5
    assert b.runs == 7 and b.latency_ms_p50 == 12.0
    assert broken.status is Status.FAILED and "round 2" in broken.error and broken.latency_ms_p50 is None
    assert absent.row.status is Status.DEVICE_ABSENT and absent.row.latency_ms_p50 is None


def test_the_spread_of_the_rounds_medians_is_reported(monkeypatch):
    medians = iter([1.0, 2.0, 3.0, 4.0])

    def fake_timed_row(subject, target, options, runs):
        m = next(medians)
        return BenchRow(status=Status.PASSED, more={"latency_ms_samples": [m] * runs})

    monkeypatch.setattr(runner, "timed_row", fake_timed_row)
    t = Timing(BenchRow(model="a"), "a", BenchTarget("onnxruntime"))
    time_rows([t], BenchOptions(runs=8, rounds=4), log=lambda msg: None)
    # Rounds' medians 1, 2, 3, 4: quartiles 1.75 and 3.25, pooled p50 2.5, so the spread is 1.5 / 2.5 = 60 %.
    assert t.row.latency_ms_p50 == 2.5 and t.row.latency_spread_pct == 60.0
    few = Timing(BenchRow(model="b"), "b", BenchTarget("onnxruntime"))
    medians = iter([1.0, 2.0, 3.0])
    time_rows([few], BenchOptions(runs=3, rounds=3), log=lambda msg: None)
    assert few.row.latency_spread_pct is None  # three medians have no quartiles worth the name


def test_a_timing_process_without_samples_fails_its_row(monkeypatch):
    monkeypatch.setattr(runner, "timed_row", lambda *a, **k: BenchRow(status=Status.PASSED, latency_ms_p50=1.0))
    t = Timing(BenchRow(model="a"), "a", BenchTarget("onnxruntime"))
    time_rows([t], BenchOptions(runs=2, rounds=2), log=lambda msg: None)
    assert t.row.status is Status.FAILED and "no latency samples" in t.row.error


def test_rounds_must_be_positive(tmp_path):
    with pytest.raises(BenchError, match="rounds must be a positive integer"):
        run_bench(BenchOptions(targets=parse_targets("torch"), rounds=0, out=tmp_path))


def test_artifacts_bench_as_they_are(exported, tmp_path):
    result = exported[("onnx", "int8", "heatmaps")]
    rows = run_bench(BenchOptions(models=[], artifacts=[str(result.path), str(tmp_path / "missing.xml")], **FAST))
    assert rows[0].target == "onnxruntime" and rows[0].precision == "int8" and rows[0].latency_ms_p50 > 0
    # Without data, the exporter's verdict in the sidecar decides (a random network's int8 fails the real tolerance).
    assert rows[0].status is result.status
    if result.status is Status.FAILED_ACCURACY:
        assert rows[0].error.startswith("export parity: ΔNME io ") and "pp > 0.15 pp on 4 faces" in rows[0].error
    assert rows[0].model == "tiny" and rows[0].speedup is None  # a checkpoint, not a registry model: no baseline
    assert rows[1].status == "failed" and "no such file" in rows[1].error


def test_run_bench_checks_its_options(tmp_path):
    with pytest.raises(BenchError, match="not a folder"):
        run_bench(BenchOptions(targets=parse_targets("torch"), data=tmp_path / "nope"))
    with pytest.raises(BenchError, match="nothing to benchmark"):
        run_bench(BenchOptions(models=[], targets=parse_targets("torch")))


# ---- reports ---------------------------------------------------------------------------------------


def _row(target, precision, status, p50, nme, **kw):
    values = dict(model="m", target=target, precision=precision, device="cpu", status=status, latency_ms_p50=p50,
                  latency_ms_p90=p50, nme_io=nme, size_mb=1.0)
    return BenchRow(**{**values, **kw})


def test_pareto_front():
    points = [(10.0, 5.0), (20.0, 4.0), (15.0, 6.0), (40.0, 4.0), (5.0, 9.0), (30.0, 3.5)]
    assert pareto_front(points) == [4, 0, 1, 5]
    assert pareto_front([]) == []


def test_reports_and_plot(tmp_path):
    rows = [
        _row("torch", "fp32", "passed", 30.0, 5.0, speedup=1.0),
        _row("onnxruntime", "int8", Status.FAILED_ACCURACY, 8.0, 5.6, speedup=3.75, error="ΔNME io +0.600 pp"),
        _row("litert", "fp32", "device absent", None, None, device="gpu", error="no gpu device"),
    ]
    table = format_table(rows)
    assert "3.75x" in table and "failed accuracy" in table and "m litert:fp32@gpu: no gpu device" in table
    assert format_table(rows, markdown=True).startswith("| Model | Target |")
    payload = json.loads(to_json(rows, {"threads": 2}))
    assert list(payload["rows"][0])[: len(ROW_KEYS)] == list(ROW_KEYS) and payload["settings"] == {"threads": 2}
    path = write_csv(tmp_path / "rows.csv", rows)
    read = list(csv.DictReader(path.open()))
    assert read[1]["speedup"] == "3.75" and read[2]["latency_ms_p50"] == "" and to_csv(rows) == path.read_text()
    png = plot_pareto(rows, tmp_path / "pareto.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(BenchError, match="nothing to plot"):
        plot_pareto(rows[2:], tmp_path / "empty.png")
    # The reports read a row's JSON object as the row (fan-profile's rows, a row read back from a file).
    as_json = [r.to_dict() for r in rows]
    assert format_table(as_json) == format_table(rows) and to_csv(as_json) == to_csv(rows)


def test_status_reads_both_former_vocabularies():
    assert Status("ok") is Status("passed") is Status.PASSED == "passed"
    assert Status("exported but failed accuracy") is Status("failed accuracy") is Status.FAILED_ACCURACY
    assert Status("exported; prediction needs macOS") is Status.NOT_VERIFIED
    assert f"{Status.DEVICE_ABSENT}" == str(Status.DEVICE_ABSENT) == "device absent" and json.dumps(Status.FAILED) == '"failed"'
    with pytest.raises(ValueError):
        Status("fine")
    assert [s.usable for s in Status] == [True, False, True, False, False]


def test_bench_row_is_a_dataclass_with_one_json_object():
    row = BenchRow(model="m", target="onnxruntime", precision="int8", device="cpu", latency_ms_p50=2.0, more={"host": "h"})
    assert row.status is Status.PASSED and row.latency_ms_p50 == 2.0 and row.more["host"] == "h"
    row.status = "exported but failed accuracy"  # a legacy spelling, read as the one status
    assert row.status is Status.FAILED_ACCURACY
    data = row.to_dict()
    assert list(data) == [*ROW_KEYS, *EXTRA_KEYS, "host"] and data["status"] == "failed accuracy" and type(data["status"]) is str
    again = BenchRow.from_dict(json.loads(json.dumps(data)))
    assert again == row and again.to_dict() == data and again.more == {"host": "h"}
    assert BenchRow.from_dict(row) is row
    assert row.fail("no gpu", Status.DEVICE_ABSENT) is row and (row.status, row.error) == (Status.DEVICE_ABSENT, "no gpu")
    with pytest.raises(ValueError):
        BenchRow(status="fine")
    with pytest.raises(TypeError):  # attributes, not a mapping: a misspelt column is an error
        row["model"]
    with pytest.raises(TypeError):
        BenchRow(nme=4.0)


def test_cli_writes_json_csv_and_plot(exported, tmp_path, capsys):
    art = exported[("onnx", "fp32", "heatmaps")].path
    args = [
        "--artifact",
        str(art),
        "--runs",
        "2",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
        "--csv",
        str(tmp_path / "b.csv"),
        "--plot",
        str(tmp_path / "b.png"),
    ]
    assert bench_main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 1 and rows[0]["status"] == "passed" and math.isfinite(rows[0]["latency_ms_p50"])
    assert (tmp_path / "b.csv").is_file() and (tmp_path / "b.png").stat().st_size > 1000


# ---- real faces ------------------------------------------------------------------------------------


def test_bench_on_afw_faces(data_dir, exported, tiny_checkpoint, tmp_path):
    """On real 300-W faces, an fp32 artifact's figures equal PyTorch's on the very same faces."""
    art = exported[("onnx", "fp32", "heatmaps")].path
    options = BenchOptions(
        models=[str(tiny_checkpoint)],
        targets=parse_targets("torch"),
        artifacts=[str(art)],
        data=data_dir / "afw",
        faces=6,
        out=tmp_path,
        **FAST,
    )
    torch_row, ort_row = run_bench(options)
    assert torch_row.faces == ort_row.faces == 6
    for key in ("nme_io", "nme_box", "auc7", "fr7"):
        assert np.isfinite(getattr(torch_row, key)) and abs(getattr(ort_row, key) - getattr(torch_row, key)) <= 0.01, key
    assert ort_row.status == "passed" and ort_row.speedup > 0


def test_exports_are_checked_on_afw_not_on_the_calibration_faces_without_data(tmp_path, monkeypatch, data_dir):
    """fan-bench without --data (latency only) checks each export's parity on the checkout's AFW faces; the cache
    keys the verdict by the faces it was scored on."""
    from fan_edge.bench import runner
    from fan_edge.bench.runner import parity_faces

    seen = {}
    monkeypatch.setattr(runner, "run_bench", lambda options, log=None: seen.setdefault("options", options) and [])
    bench_main(["--targets", "onnxruntime:int8", "--out", str(tmp_path / "art"), "--json", str(tmp_path / "r.json")])
    options = seen["options"]
    assert options.data is None and options.calib.name == "helen_train"
    assert parity_faces(options) == (data_dir / "afw").resolve()
    assert parity_faces(BenchOptions(calib=tmp_path, verify_export=False)) is False
    assert parity_faces(BenchOptions(calib=tmp_path)) == tmp_path
