"""int8: the fake-quant simulation (against an ONNX Runtime artifact), the sensitivity report, the int8 recipe's layer
choices, and quantization-aware training (resume, the quantizers file, export through fan-export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fan_edge.calibration import FaceCrops, calibration_faces
from fan_edge.cli import quantize_main
from fan_edge.export.int8 import FLOAT_LAYERS, Int8Recipe, float_layers, is_float_conv_weight, tflite_scope
from fan_edge.models import count_macs, create_model
from fan_edge.quantize.fakequant import WEIGHT_LEVELS, FakeQuantFAN, fake_quant_activation, fake_quant_weight
from fan_edge.quantize.sensitivity import measure_sensitivity


def test_fake_quant_arithmetic():
    x = torch.linspace(-1.0, 3.0, 1001)
    q = fake_quant_activation(x, -1.0, 3.0)
    step = 4.0 / 255
    assert (q - x).abs().max() <= step / 2 + 1e-6
    assert len(torch.unique(q)) <= 256
    assert fake_quant_activation(torch.zeros(3), 0.5, 2.0).abs().max() == 0  # 0 is always exact (the range holds it)
    assert fake_quant_activation(torch.tensor([5.0]), -1.0, 3.0).item() == pytest.approx(3.0, abs=step)  # clipped
    w = torch.randn(8, 4, 3, 3)
    for levels in (WEIGHT_LEVELS, 127):  # the ONNX export's 7-bit weights; TFLite's and OpenVINO's 8-bit ones
        wq = fake_quant_weight(w, levels)
        scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / levels
        assert ((wq - w).abs() <= scale / 2 + 1e-7).all()  # per output channel
        assert len(torch.unique(torch.round(wq / scale))) <= 2 * levels + 1


def test_simulation_is_exact_float_outside_its_context_and_counts_every_mac(tiny_checkpoint, synthetic_faces):
    model = create_model(str(tiny_checkpoint)).eval()
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    sim = FakeQuantFAN(model)
    faces = calibration_faces(synthetic_faces, 128, model.weights.crop, count=4)
    sim.calibrate(faces.tensors(batch_size=3))
    assert sum(layer.macs for layer in sim.layers) == count_macs(model, 128)
    assert set(sim.names()) == set(sim.names("conv")) | set(sim.names("stream"))
    with torch.no_grad(), sim.quantized(sim.names()) as q:
        during = q(x)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # weights and hooks restored
    assert (during - before).abs().max() > 1e-4
    with torch.no_grad(), sim.quantized([]) as q:
        torch.testing.assert_close(q(x), before, rtol=0, atol=0)
    with pytest.raises(KeyError):
        with sim.quantized(["no.such.layer"]):
            pass
    # The export's estimator (mean of per-face extremes) never reaches beyond the global extremes.
    global_ranges = FakeQuantFAN(model, "minmax")
    global_ranges.calibrate(faces.tensors(batch_size=3))
    for key, (lo, hi) in sim.ranges.items():
        assert global_ranges.ranges[key][0] <= lo + 1e-6 and hi <= global_ranges.ranges[key][1] + 1e-6


def test_simulation_reproduces_the_onnxruntime_artifact(tiny_checkpoint, synthetic_faces, tmp_path, monkeypatch):
    """The simulation is ONNX Runtime's conv-level QDQ arithmetic (same faces, ranges, BN folding): exact for a few
    layers, and of the same error for the whole graph (where rounding flips make the two noise draws diverge). The
    artifact is exported with the conv-only recipe the simulation models (the shipped ONNX recipe also quantizes the
    rest of the graph)."""
    pytest.importorskip("onnxruntime")
    import functools

    import onnx

    from fan_edge.export import onnx_export

    conv_only = functools.partial(onnx_export.OnnxInt8Recipe, whole_graph=False, batchnorm_as_depthwise=False)
    monkeypatch.setattr(onnx_export, "OnnxInt8Recipe", conv_only)

    from fan_edge.export import export_model
    from fan_edge.runtime.session import LandmarkSession

    model = create_model(str(tiny_checkpoint)).eval()
    sim = FakeQuantFAN(model)
    sim.calibrate(calibration_faces(synthetic_faces, 128, model.weights.crop, count=5).tensors())
    images = FaceCrops(synthetic_faces, 128, model.weights.crop, count=None).load()["images"]
    with torch.no_grad():
        ref = model(torch.from_numpy(images)).numpy()

    def compare(keep_float: list[str], simulated: list[str], name: str) -> tuple[float, float, float]:
        recipe = Int8Recipe(calib=synthetic_faces, calib_faces=5, keep_float=tuple(keep_float))
        (r,) = export_model(str(tiny_checkpoint), "onnx", "int8", int8=recipe, verify=False, output=tmp_path / f"{name}.onnx")
        with LandmarkSession(r.path, threads=1) as session:
            artifact = session.run_crops(images).heatmaps
        with torch.no_grad(), sim.quantized(simulated) as q:
            sim_out = q(torch.from_numpy(images)).numpy()
        return np.abs(artifact - ref).mean(), np.abs(sim_out - ref).mean(), np.abs(artifact - sim_out).mean()

    # Two layers (the stem conv, whose BN is folded, and the heatmap conv): the same numbers.
    art_err, sim_err, gap = compare([r"(?!(conv1|l0)$).*"], ["conv1", "l0"], "two")
    assert art_err > 0 and gap < 0.05 * art_err
    # Every convolution but conv1: the float layer reads its float weights directly, every other a DequantizeLinear.
    art_err, sim_err, gap = compare(["conv1"], [n for n in sim.names("conv") if n != "conv1"], "most")
    graph = onnx.load(str(tmp_path / "most.onnx")).graph
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    assert "conv1.weight" in conv_weights and sum(w.endswith(".weight") for w in conv_weights) == 1
    assert 0.75 < sim_err / art_err < 1.33


def test_sensitivity_report_ranks_layers_and_recommends(tiny_checkpoint, synthetic_faces):
    model = create_model(str(tiny_checkpoint)).eval()
    calib = calibration_faces(synthetic_faces, 128, model.weights.crop, count=4)
    faces = FaceCrops(synthetic_faces, 128, model.weights.crop, count=4, seed=1)
    sweep = ["conv1", "conv2.conv1", "m0.b1_4.conv2", "l0", "m0.b1_4.bn1"]
    report = measure_sensitivity(model, calib, faces, name="tiny", layers=sweep, curve=2, budget=1e9)
    assert [r.name for r in report.layers] != [] and {r.name for r in report.layers} == set(sweep)
    deltas = [r.delta_nme for r in report.layers]
    assert deltas == sorted(deltas, reverse=True)
    assert all(0 <= r.macs_share <= 1 for r in report.layers) and report.layers[0].kind in ("conv", "stream")
    assert [p.kept_float for p in report.curve] == [0, 1, 2] and report.delta_full == report.curve[0].delta_nme
    assert report.recommended == []  # the whole scheme is within an unbounded budget already
    text = report.to_markdown()
    assert "| rank | layer |" in text and "`l0`" in text
    data = json.loads(report.to_json())
    assert data["faces"] == 4 and len(data["layers"]) == len(sweep) and data["scheme"] == "full"
    tight = measure_sensitivity(model, calib, faces, layers=sweep[:2], curve=2, budget=0.0, scheme="conv")
    assert len(tight.recommended) <= 2 and all(n in sweep for n in tight.recommended)


def test_fan_quantize_sensitivity_writes_its_report(tiny_checkpoint, synthetic_faces, tmp_path, capsys):
    out = tmp_path / "sens"
    code = quantize_main(["--sensitivity", "--model", str(tiny_checkpoint), "--data", str(synthetic_faces), "--faces", "3",
                          "--calib-faces", "3", "--scheme", "conv", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "sensitivity.json").read_text())
    assert data["scheme"] == "conv" and all(r["kind"] == "conv" for r in data["layers"])
    assert (out / "sensitivity.md").read_text().startswith("# int8 sensitivity")
    assert "Recommended float layers" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a mode is required
        quantize_main(["--model", str(tiny_checkpoint), "--data", str(synthetic_faces)])


def test_int8_recipe_layer_choices():
    assert set(FLOAT_LAYERS) == {"onnx", "openvino", "tflite"}
    assert float_layers("onnx", ["conv1"]) == ("conv1",) and float_layers("coreml") == ()
    assert is_float_conv_weight("l1.weight", [r"^(conv_last|l)\d+$"]) and not is_float_conv_weight("l1.bias", [r"l1"])
    assert not is_float_conv_weight("m0.b1_4.conv1.weight", [r"conv1"])  # full match on the module name
    import re

    scope = tflite_scope("m0.b1_4.conv2")
    name = ("fan_edge.export.tflite_export._wrappers.<locals>.NetworkIO/fan_edge.models.fan.FAN_module/"
            "fan_edge.models.blocks.HourGlass_m0/fan_edge.models.blocks.ConvBlock_b1_4/torch.nn.modules.conv.Conv2d_conv2;1")
    assert re.search(scope, name) and re.search(scope, name + ";")  # a tensor name, an op scope
    assert not re.search(scope, name.replace("ConvBlock_b1_4", "ConvBlock_b1_3"))
    assert not re.search(tflite_scope("l1"), name.replace("Conv2d_conv2", "Conv2d_conv_l1"))
    fused = "NIO;;NIO/x.BatchNorm2d_bn_end1;;NIO/fan_edge.models.fan.FAN_module/torch.nn.modules.conv.Conv2d_conv_last1;1"
    assert re.search(tflite_scope("conv_last1"), fused)
    pytest.importorskip("ai_edge_quantizer")
    from fan_edge.export.tflite_export import int8_recipe

    recipe = int8_recipe(True, ("l0",))
    assert [r["algorithm_key"] for r in recipe] == ["min_max_uniform_quantize", "no_quantize", "no_quantize"]


# ---- quantization-aware training ------------------------------------------------------------------


def _qat(args: list[str]) -> int:
    return quantize_main(["--qat", *args])


@pytest.fixture(scope="module")
def qat_runs(tmp_path_factory, tiny_checkpoint, synthetic_faces):
    """The same tiny QAT run twice: straight through, and stopped after one batch then resumed."""
    pytest.importorskip("nncf")
    base = tmp_path_factory.mktemp("qat")
    common = ["--model", str(tiny_checkpoint), "--data", str(synthetic_faces), "--epochs", "1", "--batch-size", "2",
              "--calib-faces", "3", "--workers", "0", "--device", "cpu"]
    straight, resumed = base / "straight", base / "resumed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAN_EDGE_NO_PROGRESS", "1")
        assert _qat([*common, "--out", str(straight)]) == 0
        assert _qat([*common, "--out", str(resumed), "--max-batches", "1"]) == 0
        assert not (resumed / "final.safetensors").exists() and (resumed / "last.ckpt").exists()
        assert _qat([*common, "--out", str(resumed)]) == 0
    return straight, resumed


def test_qat_resumes_to_the_same_weights_and_quantizers(qat_runs):
    from safetensors.torch import load_file

    straight, resumed = qat_runs
    for name in ("final.safetensors", "final.qat.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    card = json.loads((straight / "final.json").read_text())
    assert card["qat"]["quantizers"] == "final.qat.safetensors" and len(card["qat"]["history"]) == 1
    assert "resuming" in (resumed / "qat.log").read_text()


def test_qat_checkpoint_loads_as_float_and_with_its_quantizers(qat_runs, tiny_checkpoint):
    from fan_edge.quantize.qat import load_qat

    straight, _ = qat_runs
    plain = create_model(str(straight / "final.safetensors")).eval()  # an ordinary checkpoint for every other tool
    fq = load_qat(straight / "final.safetensors")
    assert fq is not None and load_qat(tiny_checkpoint) is None and load_qat("default") is None
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (fq(x) - plain(x)).abs().max() > 1e-4  # the quantizers are live
        torch.testing.assert_close(load_qat(straight / "final.safetensors")(x), fq(x))


def test_qat_exports_through_fan_export(qat_runs, synthetic_faces, tmp_path):
    """A QAT checkpoint exports like any other: each target's calibrated recipe quantizes its fine-tuned weights
    (measured better than NNCF's trained quantizers), so its artifacts are those of the same weights without the
    quantizers file beside them."""
    pytest.importorskip("openvino")
    from fan_edge.export import export_model
    from fan_edge.quantize.qat import qat_path

    straight, _ = qat_runs
    ckpt = straight / "final.safetensors"
    assert qat_path(ckpt).exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in (".safetensors", ".json"):  # the same weights and card, no quantizers file
        (bare / f"final{suffix}").write_bytes((straight / f"final{suffix}").read_bytes())
    common = dict(int8=Int8Recipe(calib=synthetic_faces, calib_faces=3), verify=synthetic_faces, verify_faces=3)  # the real tolerances
    results = export_model(str(ckpt), "onnx,openvino", "int8", output=tmp_path / "qat", **common)
    plain = export_model(str(bare / "final.safetensors"), "onnx,openvino", "int8", output=tmp_path / "plain", **common)
    from conftest import expected_status

    assert [r.status for r in results] == [p.status for p in plain] == [expected_status(r) for r in results]
    for r, p in zip(results, plain):  # the same quantized network (the names in the embedded contracts differ)
        assert r.parity.max_heatmap_diff == pytest.approx(p.parity.max_heatmap_diff, abs=1e-6)
        assert r.parity.nme_export == pytest.approx(p.parity.nme_export, abs=1e-6)
    import openvino as ov

    ops = [op.get_type_name() for op in ov.Core().read_model(str(results[1].path)).get_ops()]
    assert "FakeQuantize" in ops  # OpenVINO's own post-training placement, on the fine-tuned weights


class _Killed(Exception):
    """A kill at a chosen moment (raised where SIGKILL would land)."""


def _qat_spec(tiny_checkpoint, synthetic_faces, out, **changes):
    from fan_edge.quantize.qat import QATSpec
    from fan_edge.train import TrainSpec

    values = dict(model=str(tiny_checkpoint), teacher=str(tiny_checkpoint), data=[str(synthetic_faces)], out=str(out),
                  epochs=1, batch_size=2, workers=0, device="cpu")
    values.update(changes)
    return QATSpec(TrainSpec(**values), calib_faces=3)


def test_qat_trains_on_the_requested_device_through_the_trainer(tiny_checkpoint, synthetic_faces, tmp_path, monkeypatch, capsys):
    """--device reaches QAT: the trainer's Distributed picks it, moves the quantized model and every batch there and
    logs it; a device that is not there is a one-line error before the model loads, not a silent CPU run."""
    pytest.importorskip("nncf")
    from fan_edge.quantize import qat
    from fan_edge.train import trainer

    monkeypatch.setenv("FAN_EDGE_NO_PROGRESS", "1")
    requested, seen = [], []
    from_env = trainer.Distributed.from_env
    monkeypatch.setattr(trainer.Distributed, "from_env", classmethod(lambda cls, device="auto": requested.append(device) or from_env(device)))
    loss = qat.QATRecipe.loss

    def spy(self, spec, outputs, batch, images, teacher, weights, device):
        seen.append((device, images.device, outputs[-1].device, teacher.conv1.weight.device,
                     {p.device for p in self._model.parameters()}))
        return loss(self, spec, outputs, batch, images, teacher, weights, device)

    prepare = qat.QATRecipe.prepare_model

    def keep(self, *args):
        self._model = prepare(self, *args)
        return self._model

    monkeypatch.setattr(qat.QATRecipe, "loss", spy)
    monkeypatch.setattr(qat.QATRecipe, "prepare_model", keep)
    out = tmp_path / "cpu"
    result = qat.train_qat(_qat_spec(tiny_checkpoint, synthetic_faces, out, max_batches=1))
    assert result["stopped"] and requested == ["cpu"]
    cpu = torch.device("cpu")
    assert seen == [(cpu, cpu, cpu, cpu, {cpu})]
    assert "device cpu, world 1" in (out / "qat.log").read_text()

    capsys.readouterr()
    for device in (["cuda"] if not torch.cuda.is_available() else []) + ["meta"]:
        bad = tmp_path / f"bad-{device}"
        code = _qat(["--model", str(tiny_checkpoint), "--data", str(synthetic_faces), "--out", str(bad), "--device", device])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and f"--device {device}" in err, err
        assert "initialising" not in (bad / "qat.log").read_text() if (bad / "qat.log").exists() else True


def test_qat_killed_after_its_last_save_resumes_with_its_quantizers(qat_runs, tiny_checkpoint, synthetic_faces, tmp_path, monkeypatch):
    """Killed after the end-of-epoch save, before the epoch's log line: resumed (from a last.ckpt as the first
    QAT runs wrote it, without the trainer's "best"), it rebuilds the saved quantizers, logs the cut-off line once
    and ends with the weights and quantizers of the run that was never killed."""
    from safetensors.torch import load_file

    from fan_edge.quantize.qat import LAST
    from fan_edge.train import trainer

    monkeypatch.setenv("FAN_EDGE_NO_PROGRESS", "1")
    out = tmp_path / "killed"
    args = ["--model", str(tiny_checkpoint), "--data", str(synthetic_faces), "--epochs", "1", "--batch-size", "2",
            "--calib-faces", "3", "--workers", "0", "--device", "cpu", "--out", str(out)]  # qat_runs' run
    info = trainer.log.info

    def kill_at_the_line(msg, *args, **kwargs):
        if args and str(args[0]).startswith("epoch 1/"):
            raise _Killed
        info(msg, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trainer.log, "info", kill_at_the_line)
        with pytest.raises(_Killed):
            _qat(args)
    assert not (out / "final.safetensors").exists()
    state = torch.load(out / LAST, weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 0) and "nncf_config" in state and "best" in state
    del state["best"]  # the format of the QAT runs before the one trainer
    torch.save(state, out / LAST)
    assert _qat(args) == 0
    log = (out / "qat.log").read_text()
    assert log.count("epoch 1/1 ") == 1 and "(logged on resume)" in log and "resuming" in log
    straight, _ = qat_runs
    for name in ("final.safetensors", "final.qat.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(out / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_qat_under_torchrun_two_cpu_processes_stop_together_and_resume(tiny_checkpoint, synthetic_faces, tmp_path):
    """QAT runs data parallel like fan-train: both ranks quantize, train and stop at the same batch, rank 0 writes;
    the same command resumes the group from last.ckpt to the final model and its quantizers."""
    pytest.importorskip("nncf")
    import os
    import subprocess
    import sys

    script = tmp_path / "fan_quantize.py"
    script.write_text("import sys\nfrom fan_edge.cli import quantize_main\nsys.exit(quantize_main(['--qat', *sys.argv[1:]]))\n")
    out = tmp_path / "ddp"
    env = dict(os.environ, FAN_EDGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           "--model", str(tiny_checkpoint), "--data", str(synthetic_faces), "--epochs", "2", "--batch-size", "1",
           "--calib-faces", "3", "--workers", "0", "--device", "cpu", "--out", str(out)]
    # 6 faces, 2 ranks x batch 1: 3 steps an epoch. Stop after 4 (inside epoch 2), on both ranks at once.
    first = subprocess.run([*cmd, "--max-batches", "4"], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    state = torch.load(out / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1) and "nncf_config" in state
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    log = (out / "qat.log").read_text()
    assert "world 2" in log and "stopped by --max-batches" in log and "resuming" in log
    assert log.count("epoch 1/2 ") == log.count("epoch 2/2 ") == 1  # rank 0 alone logs
    assert np.isfinite(float(log.split("epoch 2/2 loss=")[1].split()[0]))
    assert (out / "final.safetensors").is_file() and (out / "final.qat.safetensors").is_file()


# ---- the compression report ---------------------------------------------------------------------------


def test_compression_report_takes_rows_of_several_bench_runs(tmp_path, tiny_checkpoint, capsys):
    from fan_edge.quantize.report import STEPS, compression_rows, fastest_summary, format_fastest, format_markdown

    def row(model, target, precision, nme, ms, path=None):
        return {"model": model, "path": path, "target": target, "precision": precision, "size_mb": 1.0, "nme_io": nme,
                "auc7": 60.0, "fr7": 0.3, "latency_ms_p50": ms, "speedup": 2.0, "status": "passed"}

    tiny = str(tiny_checkpoint)
    bench_a = [row("default", "torch", "fp32", 4.70, 10.0), row("default", "onnxruntime", "fp32", 4.70, 6.0),
               row("default", "onnxruntime", "int8", 4.72, 4.0), row("default", "litert", "int8", 4.75, 3.0)]
    bench_b = [row("qat", "onnxruntime", "int8", 4.69, 4.0, path="runs/qat/final.safetensors"),
               row(tiny, "onnxruntime", "fp32", 5.00, 2.0)]
    (tmp_path / "a.json").write_text(json.dumps({"rows": bench_a}))
    (tmp_path / "b.json").write_text(json.dumps(bench_b))
    models = {"float": "default", "qat": "runs/qat/final.safetensors", "pruned": tiny}
    report = compression_rows(bench_a + bench_b, models, macs={"default": 234_809_344, "runs/qat/final.safetensors": 234_809_344})
    assert [(r["step"], r["target"]) for r in report] == [
        ("float", "torch"), ("float", "onnxruntime"), ("ptq", "onnxruntime"), ("ptq", "litert"), ("qat", "onnxruntime"),
        ("pruned", "onnxruntime")]
    assert all(r["step"] in STEPS for r in report)
    by = {(r["step"], r["target"]): r for r in report}
    assert by[("ptq", "onnxruntime")]["delta_nme_io"] == pytest.approx(0.02)
    assert by[("ptq", "litert")]["delta_nme_io"] == pytest.approx(0.05)  # no litert fp32 row: against PyTorch fp32
    assert by[("qat", "onnxruntime")]["delta_nme_io"] == pytest.approx(-0.01)
    assert by[("pruned", "onnxruntime")]["macs"] == count_macs(create_model(tiny), 128)  # counted when not given
    assert "| ptq | onnxruntime | int8 |" in format_markdown(report)
    with pytest.raises(ValueError):
        compression_rows(bench_a, {"floats": "default"})
    failed = row(tiny, "litert", "int8", 9.0, 0.5) | {"status": "failed"}
    with_pq = compression_rows(bench_a + bench_b + [failed], {"float": "default", "pruned+qat": "runs/qat/final.safetensors"})
    summary = fastest_summary(bench_a + bench_b + [failed], with_pq)
    assert summary["fastest"]["latency_ms_p50"] == 2.0  # a failed row is never the fastest, however quick
    assert summary["fastest_pruned_qat"]["latency_ms_p50"] == 4.0 and not summary["pruned_qat_is_fastest"]
    summary = fastest_summary(bench_a[:2] + bench_b[:1], with_pq)
    assert summary["pruned_qat_is_fastest"] and not summary["tied"] and summary["fastest"]["model"] == "qat"  # 4.0 ms against 10, 6
    # the same graph's PTQ artifact timed 3.9 ms (p90 4.1): the 4.0 ms pruned+QAT row is tied with it, not beaten
    twin = row("default", "litert", "int8", 4.8, 3.9) | {"latency_ms_p90": 4.1}
    summary = fastest_summary(bench_a[:2] + bench_b[:1] + [twin], with_pq)
    assert summary["pruned_qat_is_fastest"] and summary["tied"] and summary["fastest"]["latency_ms_p50"] == 3.9
    assert "tied" in format_fastest(summary)
    summary = fastest_summary(bench_a[:2] + bench_b[:1] + [twin | {"latency_ms_p90": 3.95}], with_pq)
    assert not summary["pruned_qat_is_fastest"] and not summary["tied"]  # 4.0 is beyond the faster row's spread
    out = tmp_path / "report"
    code = quantize_main(["--report", "--bench", str(tmp_path / "a.json"), "--bench", str(tmp_path / "b.json"),
                          "--float", "default", "--qat-model", "runs/qat/final.safetensors", "--out", str(out)])
    written = json.loads((out / "compression.json").read_text())
    assert code == 0 and len(written["rows"]) == 5
    # the fastest passed row of both runs is the tiny model's (2.0 ms); there is no pruned+QAT step
    assert written["fastest"]["fastest"]["latency_ms_p50"] == 2.0 and written["fastest"]["pruned_qat_is_fastest"] is False
    assert "- pruned+QAT is the fastest artifact: no" in (out / "compression.md").read_text()
    assert quantize_main(["--report", "--bench", str(tmp_path / "a.json")]) == 2  # no --float: a one-line error
    assert "--float" in capsys.readouterr().err


def test_qat_keeps_the_layers_asked_float(tiny_checkpoint, synthetic_faces):
    pytest.importorskip("nncf")
    from nncf.torch.function_hook.wrapper import get_hook_storage

    from fan_edge.quantize.qat import quantize_for_training

    model = create_model(str(tiny_checkpoint)).eval()
    calib = calibration_faces(synthetic_faces, 128, model.weights.crop, count=2)
    hooks = lambda m: [n for n, _ in get_hook_storage(m).named_hooks()]  # noqa: E731
    everything = hooks(quantize_for_training(model, calib))
    kept = hooks(quantize_for_training(model, calib, [r"l\d+", "conv1"]))
    assert any(n.startswith("pre_hooks.l0/conv2d/0__1") for n in everything)  # l0's weights, quantized by default
    assert not any(n.startswith(("pre_hooks.l0/conv2d/0__1", "pre_hooks.conv1/conv2d/0__1")) for n in kept)
    assert len(kept) < len(everything)


def test_report_finds_exported_rows_of_checkpoints_by_source(tmp_path, tiny_checkpoint):
    """fan-bench names an exported row by its artifact; the checkpoint it came from is the row's ``source``.

    Two run folders' ``final.safetensors`` get distinct names, so neither overwrites the other's artifacts."""
    from fan_edge.export.exporter import resolve_model
    from fan_edge.quantize.report import compression_rows

    runs = {}
    for run in ("prune", "prune-qat"):
        (tmp_path / run).mkdir()
        runs[run] = tmp_path / run / "final.safetensors"
        runs[run].write_bytes(tiny_checkpoint.read_bytes())
        card = tiny_checkpoint.with_suffix(".json")
        if card.exists():
            (tmp_path / run / "final.json").write_bytes(card.read_bytes())
    names = {run: resolve_model(str(path))[1] for run, path in runs.items()}
    assert names == {"prune": "prune-final", "prune-qat": "prune-qat-final"}

    def row(name, target, precision, nme, source, path):
        return {"model": name, "path": path, "source": source, "target": target, "precision": precision, "nme_io": nme,
                "status": "passed"}

    rows = [row("default", "onnxruntime", "fp32", 4.70, "default", "a/default-fp32.onnx"),
            row(names["prune"], "onnxruntime", "fp32", 4.71, str(runs["prune"]), "a/prune-final-fp32.onnx"),
            row(names["prune-qat"], "onnxruntime", "int8", 4.73, str(runs["prune-qat"]), "a/prune-qat-final-int8.onnx")]
    report = compression_rows(rows, {"float": "default", "pruned": str(runs["prune"]), "pruned+qat": str(runs["prune-qat"])},
                              macs={"default": 1, str(runs["prune"]): 1, str(runs["prune-qat"]): 1})
    assert [(r["step"], round(r["delta_nme_io"], 3)) for r in report] == [
        ("float", 0.0), ("pruned", 0.01), ("pruned+qat", 0.03)]


def test_qat_refuses_bf16_autocast(tmp_path):
    from fan_edge.errors import ConfigError
    from fan_edge.quantize.qat import QATSpec, train_qat
    from fan_edge.train import TrainSpec

    with pytest.raises(ConfigError, match="QAT runs in fp32"):
        train_qat(QATSpec(train=TrainSpec(data=[str(tmp_path)], out=str(tmp_path / "qat"), autocast="bf16")))
    assert not (tmp_path / "qat").exists()
