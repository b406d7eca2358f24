"""fan-train / fan-distill mechanics on a tiny model and a handful of real faces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fan_edge.cli import distill_main, train_main
from fan_edge.models import create_model, read_checkpoint, save_checkpoint
from fan_edge.train import TrainSpec, train
from fan_edge.train.trainer import LAST, epoch_batches, lr_factor

TINY = "fan1-w32-i128"


def _subset(src: Path, dst: Path, n: int, with_pts: bool = True) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for jpg in sorted(src.glob("*.jpg"))[:n]:
        (dst / jpg.name).symlink_to(jpg)
        if with_pts:
            (dst / jpg.with_suffix(".pts").name).symlink_to(jpg.with_suffix(".pts"))
    return dst


@pytest.fixture()
def faces(data_dir: Path, tmp_path: Path) -> Path:
    return _subset(data_dir / "helen_train", tmp_path / "faces", 16)


@pytest.fixture()
def val_faces(data_dir: Path, tmp_path: Path) -> Path:
    return _subset(data_dir / "afw", tmp_path / "val", 8)


def _spec(faces: Path, val: Path | None, out: Path, **kw) -> TrainSpec:
    base = dict(model=TINY, data=[str(faces)], val=str(val) if val else None, out=str(out), epochs=2, batch_size=4,
                workers=0, lr=1e-3, seed=3)
    base.update(kw)
    return TrainSpec(**base)


def test_epoch_batches_are_a_seeded_partition():
    a = epoch_batches(50, 4, seed=1, epoch=0, rank=0, world=1)
    assert a == epoch_batches(50, 4, seed=1, epoch=0, rank=0, world=1)
    assert a != epoch_batches(50, 4, seed=1, epoch=1, rank=0, world=1)
    flat = [i for b in a for i in b]
    assert len(flat) == 48 and len(set(flat)) == 48
    r0 = [i for b in epoch_batches(50, 4, 1, 0, 0, 2) for i in b]
    r1 = [i for b in epoch_batches(50, 4, 1, 0, 1, 2) for i in b]
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 24


def test_lr_schedules():
    spec = TrainSpec(epochs=10, warmup_epochs=1, schedule="cosine")
    assert lr_factor(spec, 0.5) == pytest.approx(0.5)
    assert lr_factor(spec, 1.0) == pytest.approx(1.0)
    assert lr_factor(spec, 10.0) == pytest.approx(0.01)
    step = TrainSpec(epochs=90, warmup_epochs=0, schedule="step", step_epochs=30)
    assert lr_factor(step, 31) == pytest.approx(0.1) and lr_factor(step, 61) == pytest.approx(0.01)


def test_train_writes_best_checkpoint_with_card(faces: Path, val_faces: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = train(_spec(faces, val_faces, out, reference_scale=280.0, center_shift=0.0, refine="gaussian"))
    assert not result["stopped"]
    assert (out / "train.log").read_text().count("epoch 2/2") == 1
    ckpt = read_checkpoint(out / "best.safetensors")
    assert ckpt.config.crop.reference_scale == 280.0 and ckpt.config.refine == "gaussian"
    assert "fan-train --model fan1-w32-i128" in ckpt.card["recipe"]
    assert set(ckpt.card["figures"]) >= {"nme_io", "nme_box", "auc7", "fr7"}
    model = create_model(out / "best.safetensors")
    assert model.config.stacks == 1


def test_interrupted_run_resumes_to_the_same_weights(faces: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    train(_spec(faces, None, straight))
    cut = tmp_path / "cut"
    first = train(_spec(faces, None, cut, max_batches=5))  # 4 batches an epoch: stops inside epoch 2
    assert first["stopped"]
    state = torch.load(cut / LAST, weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1)
    second = train(_spec(faces, None, cut))
    assert not second["stopped"]
    a = read_checkpoint(straight / "best.safetensors").state_dict
    b = read_checkpoint(cut / "best.safetensors").state_dict
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_training_improves_validation_nme(faces: Path, tmp_path: Path):
    out = tmp_path / "improve"
    train(_spec(faces, faces, out, epochs=6, lr=2e-3, rotation=0.0, occlusion=0.0, color=0.0, warmup_epochs=0.0))
    log = (out / "train.log").read_text()
    nmes = [float(line.split("nme_io=")[1].split()[0]) for line in log.splitlines() if "nme_io=" in line]
    assert len(nmes) == 6
    assert min(nmes[3:]) < nmes[0]


def test_cli_reports_bad_data_in_one_line(tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = train_main(["--model", TINY, "--data", str(empty), "--out", str(tmp_path / "x"), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no images with .pts" in err


def test_distill_uses_unlabeled_faces(faces: Path, data_dir: Path, tmp_path: Path):
    teacher = create_model("fan2-w32-i128", weights=False)
    teacher_path = save_checkpoint(teacher, tmp_path / "teacher.safetensors")
    unlabeled = _subset(data_dir / "afw", tmp_path / "unlabeled", 8, with_pts=False)
    out = tmp_path / "distill"
    rc = distill_main([
        "--model", TINY, "--teacher", str(teacher_path), "--data", str(faces), "--data", str(unlabeled),
        "--out", str(out), "--epochs", "1", "--batch-size", "4", "--workers", "0",
    ])
    assert rc == 0
    card = read_checkpoint(out / "best.safetensors").card
    assert card["recipe"].startswith("fan-distill") and "--teacher" in card["recipe"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_torchrun_two_cpu_processes_stop_together_and_resume(faces: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    env = dict(os.environ, FAN_EDGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fan_edge.train", "--model", TINY, "--data", str(faces), "--out", str(out),
           "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    # 16 faces, 2 ranks x batch 4: 2 steps an epoch. Stop after 3 steps (inside epoch 2), on both ranks at once.
    first = subprocess.run(cmd + ["--max-batches", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "stopped by --max-batches" in (out / "train.log").read_text()
    state = torch.load(out / LAST, weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    log = (out / "train.log").read_text()
    assert "world 2" in log and "resuming" in log and "epoch 2/2" in log
    assert (out / "final.safetensors").is_file()
    assert np.isfinite(float(log.split("epoch 2/2 loss=")[1].split()[0]))
