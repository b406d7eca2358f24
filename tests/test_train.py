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
    assert ckpt.weights.crop.reference_scale == 280.0 and ckpt.weights.refine == "gaussian"
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


# The entries of last.ckpt as fan-train has written them since its runs became resumable (long runs hold exactly
# these): fan-train writes no others, and the one trainer resumes from them.
TRAINER_LAST_ENTRIES = {"model", "optimizer", "epoch", "batch", "best", "history", "spec", "config"}


def test_a_last_ckpt_the_trainer_saved_resumes(synthetic_faces: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FAN_EDGE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    values = dict(model=TINY, data=[str(synthetic_faces)], out=str(out), epochs=2, batch_size=2, workers=0, seed=3, device="cpu")
    assert train(TrainSpec(**values, max_batches=4))["stopped"]  # 3 batches an epoch: inside epoch 2
    state = torch.load(out / LAST, weights_only=True)
    assert set(state) == TRAINER_LAST_ENTRIES and (state["epoch"], state["batch"]) == (1, 1)
    torch.save({k: state[k] for k in TRAINER_LAST_ENTRIES}, out / LAST)  # exactly those entries, nothing newer
    assert not train(TrainSpec(**values))["stopped"]
    log = (out / "train.log").read_text()
    assert "resuming" in log and log.count("epoch 1/2 ") == log.count("epoch 2/2 ") == 1
    assert (out / "final.safetensors").is_file() and (out / "best.safetensors").is_file()


def test_warm_start_gives_an_untrained_network_the_weights_crop_and_refinement(tmp_path: Path):
    from fan_edge.models import Weights
    from fan_edge.runtime.crop import CropSpec
    from fan_edge.train.warm_start import warm_start

    trained_as = Weights(crop=CropSpec(reference_scale=280.0, center_shift=0.0), refine="gaussian")
    path = save_checkpoint(create_model("fan2-w32-i128", weights=trained_as), tmp_path / "w.safetensors")
    student = warm_start(create_model("fan2-w32-i64-s2", weights=False), str(path))  # another size, fine heads
    assert (student.weights.crop, student.weights.refine) == (trained_as.crop, "gaussian")


def test_warm_start_grows_stacks_from_the_last_one(tmp_path: Path):
    from fan_edge.train.warm_start import grow_stacks, warm_start

    torch.manual_seed(3)
    small = create_model("fan2-w32-i128", weights=False)
    path = save_checkpoint(small, tmp_path / "two.safetensors")
    big = warm_start(create_model("fan4-w32-i128", weights=False), str(path)).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        grown, original = big.forward_stacks(x), small.eval().forward_stacks(x)
    # The first two stacks are the checkpoint's own; the new ones start as copies of its last stack and link.
    for a, b in zip(grown[:2], original):
        torch.testing.assert_close(a, b)
    sd = big.state_dict()
    torch.testing.assert_close(sd["m3.b1_4.conv1.weight"], small.state_dict()["m1.b1_4.conv1.weight"])
    torch.testing.assert_close(sd["al2.weight"], small.state_dict()["al0.weight"])
    one = save_checkpoint(create_model("fan1-w32-i128", weights=False), tmp_path / "one.safetensors")
    with pytest.raises(Exception, match="at least 2 stacks"):
        grow_stacks(read_checkpoint(one).state_dict, 3)


def test_fan_train_init_flag_is_in_the_recipe(faces: Path, tmp_path: Path):
    small = save_checkpoint(create_model("fan2-w32-i128", weights=False), tmp_path / "two.safetensors")
    spec = TrainSpec(model="fan3-w32-i128", init=str(small), data=[str(faces)], out=str(tmp_path / "run"), epochs=1,
                     max_batches=1, workers=0, device="cpu")
    train(spec)
    assert f"--init {small}" in spec.command()


def test_teacher_heatmaps_land_on_a_smaller_students_grid():
    """A 128-px teacher's heatmaps, resampled for a 64-px student, decode to the same crop points."""
    from fan_edge.data.heatmaps import gaussian_heatmaps
    from fan_edge.runtime.decode import decode_heatmaps
    from fan_edge.train.trainer import teacher_heatmaps

    rng = np.random.default_rng(0)
    points64 = rng.uniform(12, 52, (68, 2))
    points128 = 2 * points64 + 0.5  # the same crop window at twice the resolution (pixel centres)

    class Oracle(torch.nn.Module):  # a "teacher" that returns exact targets for whatever 128-px crop it sees
        config = create_model("fan1-w32-i128", weights=False).config

        def forward(self, x):
            assert x.shape[-1] == 128
            return torch.from_numpy(gaussian_heatmaps(points128, 128, sigma=1.5))[None]

    soft = teacher_heatmaps(Oracle(), torch.zeros(1, 3, 64, 64), 16).numpy()
    assert soft.shape == (1, 68, 16, 16)
    decoded, _ = decode_heatmaps(soft, 64, "gaussian")
    assert np.abs(decoded[0] - points64).max() < 0.35  # px of the 64-px crop (a quarter of a 4-px cell is 1 px)


def test_teacher_heatmaps_land_on_a_fine_students_grid():
    """A coarse teacher's heatmaps (32x32 at 128 px), resampled for a fine-head student (64x64), decode to its points."""
    from fan_edge.data.heatmaps import gaussian_heatmaps
    from fan_edge.runtime.decode import decode_heatmaps
    from fan_edge.train.trainer import teacher_heatmaps

    points = np.random.default_rng(1).uniform(16, 112, (68, 2))

    class Oracle(torch.nn.Module):
        config = create_model("fan1-w32-i128", weights=False).config

        def forward(self, x):
            return torch.from_numpy(gaussian_heatmaps(points, 128, sigma=1.0))[None]

    soft = teacher_heatmaps(Oracle(), torch.zeros(1, 3, 128, 128), 64).numpy()
    assert soft.shape == (1, 68, 64, 64)
    decoded, _ = decode_heatmaps(soft, 128, "gaussian")
    assert np.abs(decoded[0] - points).max() < 0.5  # crop px, with 2-px cells


def test_distill_refuses_a_teacher_with_another_crop(faces: Path, tmp_path: Path):
    teacher = save_checkpoint(create_model("fan1-w32-i128", weights=False), tmp_path / "t.safetensors")
    spec = TrainSpec(model="fan1-w32-i64", teacher=str(teacher), data=[str(faces)], out=str(tmp_path / "run"),
                     epochs=1, max_batches=1, workers=0, device="cpu", reference_scale=280.0)
    with pytest.raises(Exception, match="crop"):
        train(spec)
    spec.reference_scale = None
    train(spec)  # same crop, other input size: runs


def test_init_takes_a_zoo_name_and_refuses_an_untrained_one(tmp_path: Path):
    """--init default starts from the bundled weights (at another input size too); a bare architecture name is refused."""
    from fan_edge.errors import ConfigError
    from fan_edge.models.factory import trained_weights_file
    from fan_edge.models.registry import get_entry
    from fan_edge.train.warm_start import warm_start

    entry = get_entry("default")
    if not entry.trained:
        pytest.skip("this checkout bundles no trained default")
    assert trained_weights_file("default") == entry.weights_path
    wide = create_model(entry.config.replace(input_size=2 * entry.config.input_size), weights=False)
    warm_start(wide, "default")
    torch.testing.assert_close(wide.state_dict()["conv1.weight"], create_model("default").state_dict()["conv1.weight"])
    for bad in ("fan2-w32-i128", "no-such-model", str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match="no trained weights"):
            warm_start(create_model("fan2-w32-i128", weights=False), bad)


def test_a_larger_teacher_gets_its_own_view_of_the_same_crop(faces: Path):
    """The teacher's crop is the student's geometric view cut at the teacher's size: same points, sharper pixels."""
    import torch.nn.functional as F

    from fan_edge.data.augment import AugmentSpec
    from fan_edge.data.dataset import FaceFolder
    from fan_edge.runtime.crop import CropSpec

    augment = AugmentSpec(flip=1.0, color=0.0, occlusion=0.0)
    student = FaceFolder(faces, 64, CropSpec(), augment, seed=3, teacher_size=128)
    sample = student[5]
    assert sample["image"].shape == (3, 64, 64) and sample["teacher_image"].shape == (3, 128, 128)
    # The teacher's image brought down to 64 px is the student's (up to the two resamplings).
    down = F.interpolate(torch.from_numpy(sample["teacher_image"])[None], size=(64, 64), mode="area")[0].numpy()
    assert np.abs(down - sample["image"]).mean() < 0.015  # 0.006 measured; a one-pixel shift gives 0.039
    # Photometric changes stay on the student's crop; a teacher of the student's own size reuses the student's crop.
    occluded = FaceFolder(faces, 64, CropSpec(), AugmentSpec(flip=0.0, color=0.0, occlusion=1.0), seed=3, teacher_size=128)[5]
    plain = FaceFolder(faces, 64, CropSpec(), AugmentSpec(flip=0.0, color=0.0, occlusion=0.0), seed=3, teacher_size=128)[5]
    np.testing.assert_array_equal(occluded["teacher_image"], plain["teacher_image"])
    assert not np.array_equal(occluded["image"], plain["image"])
    assert "teacher_image" not in FaceFolder(faces, 64, CropSpec(), augment, teacher_size=64)[5]


def test_adaptive_wing_is_the_papers_formula_and_continuous_at_theta():
    """Wang et al. (ICCV 2019), eq. 3 as printed, against the implementation; zero at a perfect prediction."""
    from fan_edge.train.losses import adaptive_wing

    omega, theta, eps, alpha = 14.0, 0.5, 1.0, 2.1
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    pred = target + torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 0.6
    d, p = (target - pred).abs(), alpha - target
    a = omega * (1 / (1 + (theta / eps) ** p)) * p * (theta / eps) ** (p - 1) / eps
    c = theta * a - omega * torch.log(1 + (theta / eps) ** p)
    expected = torch.where(d < theta, omega * torch.log(1 + (d / eps) ** p), a * d - c).flatten(1).mean(1)
    torch.testing.assert_close(adaptive_wing(pred, target), expected)
    assert adaptive_wing(target, target).abs().max() < 1e-12
    below, above = (adaptive_wing(target + s, target) for s in (theta - 1e-9, theta + 1e-9))
    torch.testing.assert_close(below, above, atol=1e-6, rtol=0)


def test_bf16_autocast_trains_resumes_from_fp32_and_is_in_the_recipe(faces: Path, tmp_path: Path, monkeypatch):
    """--autocast bf16 casts the forward pass only: the loss is finite, the weights stay fp32, a run started in fp32
    resumes in bf16 (a run control, like --device), and the card's recipe says so."""
    from fan_edge.train import compute

    monkeypatch.setattr(compute, "has_bf16", lambda: True)  # emulated where the CPU lacks it: slow, not wrong
    out = tmp_path / "run"
    assert train(_spec(faces, None, out, max_batches=3))["stopped"]  # fp32, inside epoch 1 (4 batches an epoch)
    result = train(_spec(faces, None, out, autocast="bf16"))
    assert not result["stopped"]
    log = (out / "train.log").read_text()
    losses = [float(line.split("loss=")[1].split()[0]) for line in log.splitlines() if "loss=" in line]
    assert len(losses) == 2 and all(np.isfinite(losses)) and "device cpu (forward in bf16)" in log
    ckpt = read_checkpoint(out / "best.safetensors")
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values() if t.is_floating_point())
    assert "--autocast bf16" in ckpt.card["recipe"]


def test_bf16_autocast_is_refused_on_a_cpu_without_it(faces: Path, tmp_path: Path, monkeypatch, capsys):
    from fan_edge.train import compute

    monkeypatch.setattr(compute, "has_bf16", lambda: False)
    assert train_main(["--model", TINY, "--data", str(faces), "--out", str(tmp_path / "run"), "--autocast", "bf16",
                       "--device", "cpu", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bfloat16 instructions" in err[0]
    assert not (tmp_path / "run" / LAST).exists()
