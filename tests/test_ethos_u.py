"""Arm Ethos-U (Vela) compilation of the int8 TFLite export: placement, memory, estimate, one-line refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("ethosu.vela", reason="Ethos-U compilation needs Arm's Vela: pip install ethos-u-vela")
pytest.importorskip("litert_torch", reason="TFLite export needs the tflite extra: pip install -c constraints.txt -e '.[tflite]'")
pytest.importorskip("ai_edge_quantizer", reason="TFLite int8 needs ai-edge-quantizer (the tflite extra)")
pytest.importorskip("ai_edge_litert", reason="reading .tflite needs ai-edge-litert (the tflite extra)")

from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402

from fan_edge.errors import ExportError  # noqa: E402
from fan_edge.export import Int8Recipe, export_model  # noqa: E402
from fan_edge.export.ethos_u import (  # noqa: E402
    ETHOS_U_DEVICES,
    compile_ethos_u,
    vela_available,
    vela_error_line,
)

DEVICES = ("ethos-u55-128", "ethos-u65-256", "ethos-u85-256")


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory, tiny_checkpoint, synthetic_faces) -> dict[str, Path]:
    """The tiny FAN as int8 and fp32 heatmaps (one export call: the conversion is shared) and int8 landmarks."""
    out = tmp_path_factory.mktemp("ethos_u_models")
    int8 = Int8Recipe(calib=synthetic_faces)
    results = export_model(str(tiny_checkpoint), "tflite", "fp32,int8", output=out, int8=int8, verify=False)
    models = {r.precision: r.path for r in results}
    (landmarks,) = export_model(
        str(tiny_checkpoint), "tflite", "int8", outputs="landmarks", output=out / "tiny-int8-landmarks.tflite",
        int8=int8, verify=False,
    )  # fmt: skip
    models["int8-landmarks"] = landmarks.path
    return models


@pytest.fixture(scope="module")
def reports(tiny_tflite, tmp_path_factory):
    """The int8 heatmaps model compiled for one chip of each family, all into one folder."""
    out = tmp_path_factory.mktemp("ethos_u_compiled")
    return {device: compile_ethos_u(tiny_tflite["int8"], device, out) for device in DEVICES}


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_devices_are_velas_accelerator_configs():
    from ethosu.vela.architecture_features import Accelerator

    assert vela_available()
    assert set(ETHOS_U_DEVICES.values()) == set(Accelerator.member_list())
    assert all(name.startswith(("ethos-u55-", "ethos-u65-", "ethos-u85-")) for name in ETHOS_U_DEVICES)


def test_every_op_of_the_tiny_model_runs_on_u55(reports, tiny_tflite):
    r = reports["ethos-u55-128"]
    assert r.npu_op_share == 1.0 and r.cpu_ops == 0 and r.cpu_operators == ()
    ops = sum(len(sg.operators) for sg in flatbuffer_utils.read_model(str(tiny_tflite["int8"])).subgraphs)
    assert r.npu_ops == ops
    assert (r.system_config, r.memory_mode, r.clock_mhz) == ("Ethos_U55_High_End_Embedded", "Shared_Sram", 500.0)
    # the compiled graph is one ethos-u operator: the whole network is a single NPU command stream
    compiled = flatbuffer_utils.read_model(str(r.compiled))
    (op,) = compiled.subgraphs[0].operators
    assert compiled.operatorCodes[op.opcodeIndex].customCode == b"ethos-u"


@pytest.mark.parametrize("device", DEVICES)
def test_each_family_compiles_with_positive_finite_figures(reports, device):
    r = reports[device]
    assert r.device == device and r.npu_op_share == 1.0
    for value in (r.sram_kib, r.flash_kib, r.estimated_ms):
        assert math.isfinite(value) and value > 0
    assert r.cycles > 0 and math.isclose(r.estimated_ms, r.cycles / (r.clock_mhz * 1e3), rel_tol=1e-6)
    assert r.compiled.is_file() and r.compiled.name == f"{r.compiled.name.split('_')[0]}_{device}_vela.tflite"
    assert r.summary_csv.is_file() and r.per_layer_csv is not None and r.per_layer_csv.is_file()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["latency_source"] == "vela estimate" and d["device"] == device and d["compiled"] == str(r.compiled)


def test_compiling_is_quiet_unless_verbose(tiny_tflite, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("FAN_EDGE_EXPORT_VERBOSE", raising=False)
    compile_ethos_u(tiny_tflite["int8"], "ethos-u55-64", tmp_path)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    monkeypatch.setenv("FAN_EDGE_EXPORT_VERBOSE", "1")
    compile_ethos_u(tiny_tflite["int8"], "ethos-u55-64", tmp_path)
    assert "Network summary" in capfd.readouterr().err


def test_float_landmark_head_is_reported_on_the_cpu_with_velas_reason(tiny_tflite, tmp_path):
    r = compile_ethos_u(tiny_tflite["int8-landmarks"], "ethos-u55-128", tmp_path)
    assert 0 < r.npu_op_share < 1 and r.cpu_ops == len(r.cpu_operators) > 0
    # the backbone stays whole on the NPU: only the float head (after the int8 network's DEQUANTIZE) is left over
    assert all(" -> heatmaps" in op or " -> fan_edge_head/" in op for op in r.cpu_operators)
    assert "DEQUANTIZE -> heatmaps: Unsupported opType" in r.cpu_operators


def test_refuses_an_unknown_device(tiny_tflite, tmp_path):
    with pytest.raises(ExportError) as excinfo:
        compile_ethos_u(tiny_tflite["int8"], "ethos-u55-100", tmp_path)
    message = _one_line(excinfo)
    assert "ethos-u55-100" in message and "ethos-u55-128" in message and "ethos-u85-2048" in message


def test_refuses_a_float_model(tiny_tflite, tmp_path):
    with pytest.raises(ExportError) as excinfo:
        compile_ethos_u(tiny_tflite["fp32"], "ethos-u55-128", tmp_path)
    assert "not an int8 model" in _one_line(excinfo)
    assert list(tmp_path.iterdir()) == []  # refused before Vela ran


def test_refuses_a_text_file_and_a_missing_file(tmp_path):
    fake = tmp_path / "notes.tflite"
    fake.write_text("this is not a flatbuffer\n")
    with pytest.raises(ExportError) as excinfo:
        compile_ethos_u(fake, "ethos-u55-128", tmp_path / "out")
    assert "not a TFLite flatbuffer" in _one_line(excinfo)
    with pytest.raises(ExportError) as excinfo:
        compile_ethos_u(tmp_path / "missing.tflite", "ethos-u55-128", tmp_path / "out")
    assert "no such" in _one_line(excinfo)


@pytest.mark.parametrize(("shape", "signature", "expected"), [([2, 128, 128, 3], None, "batch 2"), (None, -1, "dynamic batch")])
def test_refuses_a_batch_other_than_one(tiny_tflite, tmp_path, shape, signature, expected):
    model = flatbuffer_utils.read_model(str(tiny_tflite["int8"]))
    sg = model.subgraphs[0]
    tensor = sg.tensors[sg.inputs[0]]
    if shape is not None:
        tensor.shape = shape
    if signature is not None:
        tensor.shapeSignature = [signature, *list(tensor.shape)[1:]]
    path = tmp_path / "batched.tflite"
    flatbuffer_utils.write_model(model, str(path))
    with pytest.raises(ExportError) as excinfo:
        compile_ethos_u(path, "ethos-u55-128", tmp_path / "out")
    assert expected in _one_line(excinfo)


def test_refuses_a_model_vela_already_compiled(reports):
    compiled = reports["ethos-u55-128"].compiled
    with pytest.raises(ExportError) as excinfo:
        compile_ethos_u(compiled, "ethos-u55-128", compiled.parent / "again")
    assert "already compiled by Vela" in _one_line(excinfo)


def test_vela_failing_gives_its_error_in_one_line(tiny_tflite, tmp_path):
    with pytest.raises(ExportError) as excinfo:
        compile_ethos_u(tiny_tflite["int8"], "ethos-u55-128", tmp_path, system_config="No_Such_System")
    message = _one_line(excinfo)
    assert message.startswith("Vela failed on") and "No_Such_System" in message
    assert not any(tmp_path.glob("*_vela.tflite"))  # nothing half-written left behind


def test_vela_error_line_picks_the_message_not_the_traceback():
    traceback = (
        "Traceback (most recent call last):\n  File \"vela.py\", line 1, in <module>\n    main()\n"
        "ethosu.vela.errors.CliOptionError: 'Error: Incorrect argument to CLI option --memory-mode=X'\n"
    )
    assert vela_error_line(traceback, 1) == "Incorrect argument to CLI option --memory-mode=X"
    crashed = "Warning: something\nFailed to load TfLite model. Buffer contents inconsistent with generated schema.\n"
    assert vela_error_line(crashed, -11) == (
        "Failed to load TfLite model. Buffer contents inconsistent with generated schema. (crashed with SIGSEGV)"
    )
    assert vela_error_line("", -9) == "crashed with SIGKILL"


def test_the_runtime_refuses_a_vela_compiled_model_at_load(reports):
    """Its ethos-u custom op runs only under TFLite Micro with the NPU driver: say so when opened, not at the first face."""
    from fan_edge.errors import BackendError
    from fan_edge.runtime import LandmarkSession

    with pytest.raises(BackendError) as excinfo:
        LandmarkSession(reports["ethos-u55-128"].compiled)
    assert "compiled by Vela" in _one_line(excinfo) and "portable .tflite" in _one_line(excinfo)
