"""fan-export --device: the NPU compile step after the portable artifact, its files and report, and fan-bench's NPU rows.

The tiny random FAN of conftest.py: its int8 accuracy means nothing, so nothing here asserts that it passes; what
is checked is that the verdicts follow the real tolerances, which files are written where, what the sidecar and the
result say, where each bench figure comes from, and that every refusal is one line that leaves nothing behind. Arm Ethos-U needs ethos-u-vela and the
tflite extra; Qualcomm needs onnxruntime-qnn (its HTP is emulated on x86). Each export is done once per module.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fan_edge.errors import BenchError, ExportError
from fan_edge.export import Int8Recipe, export_model
from fan_edge.export.parity import TOLERANCES
from fan_edge.rows import Status
from fan_edge.runtime import LandmarkSession
from fan_edge.runtime.contract import read_sidecar, sidecar_path
from conftest import expected_status

ETHOS = "ethos-u55-128"


def bench_verdict(row) -> Status:
    """The status a bench row must have: FAILED_ACCURACY when its ΔNME io against PyTorch is beyond its precision's
    tolerance (a random network's int8 landmarks legitimately move), else PASSED."""
    assert isinstance(row.delta_nme_io, float), row
    return Status.PASSED if abs(row.delta_nme_io) <= TOLERANCES[row.precision] else Status.FAILED_ACCURACY


def needs_ethos_u() -> None:
    pytest.importorskip("ethosu.vela", reason="Ethos-U compilation needs Arm's Vela: pip install ethos-u-vela")
    pytest.importorskip("litert_torch", reason="TFLite export needs the tflite extra")
    pytest.importorskip("ai_edge_quantizer", reason="TFLite int8 needs ai-edge-quantizer (the tflite extra)")
    pytest.importorskip("ai_edge_litert", reason="reading .tflite needs ai-edge-litert (the tflite extra)")


def needs_qnn() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        pytest.skip("onnxruntime-qnn (the QNN execution-provider plugin) is not installed")
    from fan_edge.export.qnn import qnn_available

    if not qnn_available():
        pytest.skip("onnxruntime-qnn is installed but its plugin does not register with this onnxruntime")


def _one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".fan-export-", ".vela-")))


# ---- Arm Ethos-U -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ethos(tmp_path_factory, tiny_checkpoint, synthetic_faces):
    """The tiny FAN as int8 TFLite compiled for the Ethos-U55-128, into an existing folder (default names)."""
    needs_ethos_u()
    folder = tmp_path_factory.mktemp("ethos_u_export")
    (result,) = export_model(
        str(tiny_checkpoint), "tflite", "int8", device=ETHOS, int8=Int8Recipe(calib=synthetic_faces), verify=synthetic_faces,
        output=folder,
    )  # fmt: skip
    return folder, result


def test_ethos_u_export_commits_compiled_files_with_the_artifact(ethos):
    folder, result = ethos
    assert result.path.parent == folder and f"-{ETHOS}" in result.path.name and result.path.suffix == ".tflite"
    sidecar = sidecar_path(result.path)
    assert result.files[-2:] == [result.path, sidecar]
    for f in result.files:
        assert f.is_file() and f.parent == folder, f
    names = [f.name for f in result.compiled_files]
    stem = result.path.stem
    assert names[0] == f"{stem}_{ETHOS}_vela.tflite"
    assert any(n.startswith(f"{stem}_{ETHOS}_summary_") and n.endswith(".csv") for n in names)
    assert f"{stem}_{ETHOS}_per-layer.csv" in names
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in result.files)  # nothing else
    assert _leftovers(folder) == []
    # the size is the portable artifact's, not the compiled model's nor the CSVs'
    assert result.size_mb == pytest.approx(result.path.stat().st_size / 1e6)
    assert json.loads(json.dumps(result.to_dict()))["npu"]["compiler"] == "vela"


def test_ethos_u_report_in_the_result_and_the_sidecar(ethos):
    folder, result = ethos
    n = result.npu
    assert n["compiler"] == "vela" and n["device"] == ETHOS
    assert n["npu_op_share"] == 1.0 and n["cpu_ops"] == 0 and n["cpu_operators"] == []
    assert n["files"] == [f.name for f in result.compiled_files]
    # names beside the artifact, never this machine's (staging) paths
    assert n["compiled"] == result.compiled_files[0].name and "/" not in n["summary_csv"]

    contract = read_sidecar(result.path)
    assert contract.batch == 1 and contract.extra["ethos_u"] == {"device": ETHOS}
    v = contract.verification
    assert v["status"] == result.status.value and result.status is expected_status(result)  # the real tolerance
    assert v["faces"] == result.parity.faces > 0
    assert v["backend_device"] == "cpu" and v["cpu"]["name"]  # parity ran on this CPU, which it names
    npu = v["npu"]
    assert npu == json.loads(json.dumps(n)) and npu["latency_source"] == "vela estimate"
    for key in ("sram_kib", "flash_kib", "estimated_ms", "clock_mhz"):
        assert math.isfinite(npu[key]) and npu[key] > 0, key
    assert npu["cycles"] > 0 and npu["system_config"] and npu["vela_version"]
    assert result.contract.verification == v


# ---- Qualcomm QNN ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qnn_export(tmp_path_factory, tiny_checkpoint, synthetic_faces):
    """The tiny FAN as int8 ONNX compiled for the default Snapdragon (SM8650), checked on the HTP emulator."""
    needs_qnn()
    from conftest import _synthetic_faces

    faces = _synthetic_faces(tmp_path_factory.mktemp("ten_faces"), count=10)  # more than the NPU check's default 8
    folder = tmp_path_factory.mktemp("qnn_export")
    (result,) = export_model(
        str(tiny_checkpoint), "onnx", "int8", device="npu", int8=Int8Recipe(calib=synthetic_faces), verify=faces,
        output=str(folder) + "/",
    )  # fmt: skip
    return folder, result


def test_qnn_export_fully_offloads_and_writes_an_epcontext_model(qnn_export):
    folder, result = qnn_export
    assert result.path.name.endswith("-sm8650-int8.onnx") and result.path.parent == folder
    n = result.npu
    assert n["compiler"] == "qnn" and n["soc"] == "SM8650" and n["soc_model"] == 57
    assert n["full_offload"] is True and n["nodes"] == n["npu_nodes"] > 0 and n["unsupported"] == []
    assert "not measurable" in n["latency_source"]
    (context,) = result.compiled_files
    assert context.name == f"{result.path.stem}_sm8650_ctx.onnx" == n["context_model"] and context.is_file()
    assert n["files"] == [context.name] and n["context_mb"] > 0
    for f in result.files:
        assert f.is_file() and f.parent == folder, f
    assert _leftovers(folder) == []
    assert result.size_mb == pytest.approx(result.path.stat().st_size / 1e6)

    contract = read_sidecar(result.path)
    assert contract.batch == 1 and contract.extra["qnn"]["soc"] == "SM8650"
    assert contract.verification["npu"] == json.loads(json.dumps(n))
    # the parity check ran on the emulated NPU, on its default 8 faces of the 10 given
    assert result.parity is not None and result.parity.faces == 8 and contract.verification["faces"] == 8
    assert result.parity.backend_device != "cpu" and contract.verification["backend_device"] == result.parity.backend_device
    assert contract.verification["status"] == result.status.value and result.status is expected_status(result)


def test_the_epcontext_model_runs_through_the_runtime(qnn_export, synthetic_faces):
    import cv2

    from fan_edge.files.pts import read_pts
    from fan_edge.runtime import LandmarkSession

    _, result = qnn_export
    (context,) = result.compiled_files
    pts = sorted(synthetic_faces.glob("*.pts"))[0]
    image = cv2.imread(str(pts.with_suffix(".png")))[:, :, ::-1].copy()
    landmarks = read_pts(pts)
    boxes = np.array([[*landmarks.min(0), *landmarks.max(0)]] * 2)
    with LandmarkSession(context, backend="onnxruntime", device="npu") as session:  # the SoC from its contract
        points, scores = session.predict(image, boxes)
    assert points.shape == (2, 68, 2) and scores.shape == (2, 68) and np.isfinite(points).all()


def test_qnn_export_for_another_soc(qnn_export, tiny_checkpoint, synthetic_faces, tmp_path):
    (result,) = export_model(
        str(tiny_checkpoint), "onnx", "int8", device="npu", soc="sm8550", int8=Int8Recipe(calib=synthetic_faces, calib_faces=4),
        verify=False, output=str(tmp_path) + "/",
    )  # fmt: skip
    assert result.path.name.endswith("-sm8550-int8.onnx")
    (context,) = result.compiled_files
    assert context.name.endswith("_sm8550_ctx.onnx") and context.is_file()
    assert result.npu["soc"] == "SM8550" and result.npu["full_offload"] is True
    contract = read_sidecar(result.path)
    assert contract.extra["qnn"]["soc"] == "SM8550" and contract.verification["status"] == Status.NOT_VERIFIED
    assert result.status is Status.NOT_VERIFIED and result.parity is None
    assert _leftovers(tmp_path) == []


# ---- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "precision", "kwargs", "expected"),
    [
        ("tflite", "int8", dict(device="npu"), "--device npu compiles onnx int8 artifacts, not tflite int8"),
        ("onnx", "fp32", dict(device="npu"), "--device npu compiles onnx int8 artifacts, not onnx fp32"),
        ("onnx", "int8", dict(device=ETHOS), f"--device {ETHOS} compiles tflite int8 artifacts, not onnx int8"),
        ("onnx", "int8", dict(soc="SM8650"), "--soc names a Qualcomm chip: it goes with --device npu"),
        ("tflite", "int8", dict(device=ETHOS, soc="SM8650"), "--soc names a Qualcomm chip"),
        ("onnx", "int8", dict(device="tpu"), "unknown device 'tpu'; expected one of: cpu, npu, ethos-u55-32"),
        ("tflite", "int8", dict(device="ethos-u55-100"), "unknown device 'ethos-u55-100'"),
        ("onnx", "int8", dict(device="npu", soc="SM1234"), "unknown Snapdragon SoC 'SM1234'"),
        ("onnx", "int8", dict(device="npu", batch=2), "--device npu needs a static batch of 1"),
        ("tflite", "int8", dict(device=ETHOS, batch=2), f"--device {ETHOS} needs a static batch of 1"),
        ("onnx", "int8", dict(activation_bits=12), "int8 activations are 8 or 16 bits, got 12"),
        ("tflite", "int8", dict(activation_bits=16), "16-bit activations (W8A16) are an ONNX int8 option"),
        ("onnx", "fp16", dict(activation_bits=16), "16-bit activations (W8A16) are an ONNX int8 option"),
    ],
)
def test_device_refusals_are_one_line_and_leave_nothing(
    tiny_checkpoint, synthetic_faces, tmp_path, target, precision, kwargs, expected
):
    if target == "tflite":
        needs_ethos_u()
    else:
        pytest.importorskip("onnxruntime")
    folder = tmp_path / "out"
    folder.mkdir()
    kwargs = dict(kwargs)
    bits = kwargs.pop("activation_bits", None)
    with pytest.raises(ExportError) as info:  # a bad recipe is refused where it is built, a misplaced one by export_model
        int8 = Int8Recipe(calib=synthetic_faces, activation_bits=bits)
        export_model(str(tiny_checkpoint), target, precision, int8=int8, verify=False, output=str(folder) + "/", **kwargs)
    assert expected in _one_line(info)
    assert list(folder.iterdir()) == []


def test_a_graph_vela_cannot_place_whole_is_refused_and_nothing_is_committed(tiny_checkpoint, synthetic_faces, tmp_path):
    """The float landmark head stays on the CPU under Vela: the export fails in one line, with no artifact, no
    sidecar, no Vela output and no staging folder left (the compile step is part of the all-or-nothing commit)."""
    needs_ethos_u()
    with pytest.raises(ExportError) as info:
        export_model(
            str(tiny_checkpoint), "tflite", "int8", outputs="landmarks", device=ETHOS,
            int8=Int8Recipe(calib=synthetic_faces, calib_faces=4), verify=False, output=tmp_path,
        )  # fmt: skip
    message = _one_line(info)
    assert f"ops stay off the {ETHOS} NPU" in message and "DEQUANTIZE" in message
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_bad_device_in_one_line(tiny_checkpoint, synthetic_faces, tmp_path, capsys):
    from fan_edge.cli import export_main

    out = tmp_path / "out"
    for args, expected in (
        (["--target", "tflite", "--precision", "int8", "--device", "ethos-u55-100"], "unknown device 'ethos-u55-100'"),
        (["--target", "tflite", "--precision", "int8", "--device", "npu"], "--device npu compiles onnx int8"),
        (["--target", "onnx", "--precision", "int8", "--soc", "SM8650"], "--soc names a Qualcomm chip"),
    ):
        argv = ["--model", str(tiny_checkpoint), *args, "--calib", str(synthetic_faces), "--no-verify",
                "--output", str(out) + "/"]  # fmt: skip
        assert export_main(argv) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.startswith("fan-export: error: ") and expected in err and "\n" not in err and "Traceback" not in err
        assert captured.out == ""
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_prints_the_vela_summary(tiny_checkpoint, synthetic_faces, tmp_path, capsys):
    needs_ethos_u()
    from fan_edge.cli import export_main

    argv = ["--model", str(tiny_checkpoint), "--target", "tflite", "--precision", "int8", "--device", ETHOS,
            "--calib", str(synthetic_faces), "--calib-faces", "4", "--no-verify", "--output", str(tmp_path) + "/"]  # fmt: skip
    assert export_main(argv) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "of ops on the NPU" in ln]
    artifact = next(tmp_path.glob(f"*-{ETHOS}-int8.tflite"))
    assert line.startswith(f"{artifact.name}: {ETHOS} 100% of ops on the NPU, SRAM ")
    assert "(vela estimate, " in line and f"{artifact.stem}_{ETHOS}_vela.tflite" in line
    assert (tmp_path / f"{artifact.stem}_{ETHOS}_vela.tflite").is_file() and _leftovers(tmp_path) == []


# ---- fan-bench ---------------------------------------------------------------------------------------


def test_bench_targets_for_npus():
    from fan_edge.bench.targets import BenchTarget, parse_target

    t = parse_target("litert:int8@ethos-u55-128")
    assert t == BenchTarget("litert", "int8", ETHOS) and t.npu_export == ETHOS and t.label == "litert:int8@ethos-u55-128"
    assert parse_target("onnxruntime:int8@npu").npu_export == "npu"
    assert parse_target("litert:int8@npu").npu_export is None  # a LiteRT delegate, timed where present
    for spec, expected in (
        ("onnxruntime:fp32@ethos-u55-128", "an Ethos-U NPU runs litert:int8"),
        ("litert:fp32@ethos-u65-256", "an Ethos-U NPU runs litert:int8"),
        ("litert:int8@ethos-u55-100", "or an Ethos-U NPU"),
    ):
        with pytest.raises(BenchError) as info:
            parse_target(spec)
        assert expected in _one_line(info)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_checkpoint, synthetic_faces):
    """One fan-bench run: PyTorch, the Ethos-U row and (with onnxruntime-qnn) the Qualcomm NPU row."""
    needs_ethos_u()
    from fan_edge.bench.runner import BenchOptions, run_bench
    from fan_edge.bench.targets import parse_targets

    try:
        needs_qnn()
        with_qnn = True
    except pytest.skip.Exception:
        with_qnn = False
    spec = "torch:fp32,litert:int8@ethos-u55-128" + (",onnxruntime:int8@npu" if with_qnn else "")
    out = tmp_path_factory.mktemp("bench")
    options = BenchOptions(
        models=[str(tiny_checkpoint)], targets=parse_targets(spec), data=synthetic_faces, calib=synthetic_faces,
        calib_faces=4, runs=2, warmup=1, threads=1, out=out / "artifacts", npu_faces=3,
    )  # fmt: skip
    rows = run_bench(options)  # the real tolerances: a random network's int8 rows may well fail them
    return out, {r.device: r for r in rows}, rows, options


def test_bench_ethos_u_row(bench):
    _, by, _, _ = bench
    torch_row, row = by["cpu"], by[ETHOS]
    assert torch_row.target == "torch" and torch_row.status == "passed" and torch_row.latency_source == "timed here"
    assert row.target == "litert" and row.precision == "int8" and row.status is bench_verdict(row), row.error
    assert row.latency_source.startswith("vela estimate (") and "MHz" in row.latency_source
    assert row.latency_ms_p50 > 0 and row.fps > 0 and row.speedup is None  # an estimate of another chip
    assert row.accuracy_source.startswith("the same int8 graph on this CPU")
    assert row.faces == torch_row.faces and row.nme_io is not None
    assert row.npu_offload.startswith("100% of ops") and row.size_mb > 0
    assert Path(row.path).is_file() and f"-{ETHOS}-" in Path(row.path).name


def test_bench_qnn_row(bench):
    _, by, _, _ = bench
    if "npu" not in by:
        pytest.skip("onnxruntime-qnn is not available")
    row = by["npu"]
    assert row.target == "onnxruntime" and row.precision == "int8" and row.status is bench_verdict(row), row.error
    assert row.latency_ms_p50 is None and row.latency_ms_p90 is None and row.fps is None and row.speedup is None
    assert "not measurable" in row.latency_source
    assert row.faces == 3 and isinstance(row.delta_nme_io, float)
    assert "emulator" in row.accuracy_source and "SM8650" in row.accuracy_source
    nodes, total = row.npu_offload.split()[0].split("/")
    assert nodes == total and int(total) > 0
    assert Path(row.path).is_file() and "-sm8650-" in Path(row.path).name


def test_bench_table_and_pareto_plot_with_npu_rows(bench):
    from fan_edge.bench.pareto import plot_pareto
    from fan_edge.bench.report import format_table, to_csv, to_json

    out, by, rows, _ = bench
    table = format_table(rows)
    assert "vela estimate" in table
    notes = [ln for ln in table.splitlines() if ln.startswith("tiny ") and "accuracy from" in ln]
    npu_rows = [r for r in rows if r.device != "cpu"]
    assert len(notes) == len(npu_rows)
    (ethos_note,) = [n for n in notes if f"@{ETHOS}:" in n]
    assert "latency: vela estimate (" in ethos_note and "100% of ops" in ethos_note
    if "npu" in by:
        (qnn_note,) = [n for n in notes if "@npu:" in n]
        assert "QNN HTP emulator" in qnn_note and "latency: not measurable" in qnn_note
    markdown = format_table(rows, markdown=True)
    assert sum(ln.startswith("- tiny ") and "accuracy from" in ln for ln in markdown.splitlines()) == len(npu_rows)
    payload = json.loads(to_json(rows))["rows"]
    assert {r["device"]: r["latency_source"] for r in payload}[ETHOS].startswith("vela estimate")
    assert "latency_source" in to_csv(rows).splitlines()[0]

    png = plot_pareto(rows, out / "pareto.png")  # the estimated row is a triangle, kept off the front
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_bench_npu_rows_without_data_reuse_their_exports_and_keep_the_sidecars_verdict(bench, tmp_path):
    """Without --data, an NPU row (like any artifact's) takes the exporter's parity verdict from its sidecar."""
    import dataclasses
    import shutil

    from fan_edge.bench.runner import run_bench

    _, by, _, options = bench
    copy = tmp_path / "artifacts"
    shutil.copytree(options.out, copy)
    npu_targets = [t for t in options.targets if t.npu_export is not None]
    checked = {}  # device -> faces of its export's parity check
    for row in by.values():
        if row.device != "cpu":
            side = sidecar_path(copy / Path(row.path).name)
            data = json.loads(side.read_text())
            assert Status(data["verification"]["status"]) in (Status.PASSED, Status.FAILED_ACCURACY)  # it was checked
            data["verification"].update(status="failed accuracy", delta_nme=0.5, tolerance=0.15)
            side.write_text(json.dumps(data))
            checked[row.device] = data["verification"]["faces"]
    messages: list[str] = []
    rows = run_bench(dataclasses.replace(options, targets=npu_targets, data=None, out=copy), log=messages.append)
    assert any("reusing" in m for m in messages) and not any(m.startswith("exporting") for m in messages)
    assert [r.device for r in rows] == [t.device for t in npu_targets]
    for row in rows:
        assert row.status is Status.FAILED_ACCURACY, row
        assert row.error == "export parity: ΔNME io +0.500 pp > 0.15 pp on %d faces" % checked[row.device]
        assert row.nme_io is None and row.latency_source == by[row.device].latency_source
    assert {r.device: r.latency_ms_p50 for r in rows}[ETHOS] == by[ETHOS].latency_ms_p50


def test_w8a16_onnx_keeps_int8_weights_with_16_bit_activations(tiny_checkpoint, synthetic_faces, tmp_path):
    """The option for a model whose 8-bit activations fail (the 256 px zoo model): uint16 activations, int8 weights."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto

    (r,) = export_model(str(tiny_checkpoint), "onnx", "int8", int8=Int8Recipe(calib=synthetic_faces, activation_bits=16),
                        verify=False, output=tmp_path / "w8a16.onnx")
    graph = onnx.load(str(r.path)).graph
    inits = {t.name: t.data_type for t in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    weights = [inits[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]] in (TensorProto.INT8, TensorProto.UINT8)]
    assert zero_points and set(zero_points) == {TensorProto.UINT16}
    assert weights and set(weights) == {TensorProto.INT8}
    assert r.contract.extra["int8"]["activation_bits"] == 16 and read_sidecar(r.path).extra["int8"] == r.contract.extra["int8"]
    with LandmarkSession(r.path) as session:
        assert session.run_crops(np.zeros((1, 3, 128, 128), np.float32)).points.shape == (1, 68, 2)
