"""fan-train --ema: the moving average of the weights, what the run validates and saves, and its resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fan_edge.errors import CheckpointError, ConfigError
from fan_edge.models import read_checkpoint
from fan_edge.train import TrainSpec, train
from fan_edge.train.ema import WeightAverage
from fan_edge.train.trainer import LAST

TINY = "fan1-w32-i128"


def test_the_average_ramps_up_to_its_decay_and_copies_integer_buffers():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(0.0)
    average = WeightAverage(net, decay=0.5)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0]):
        with torch.no_grad():
            net[0].weight.fill_(value)
        net[1].num_batches_tracked += 1
        d = min(0.5, (1 + step) / (10 + step))  # 0.1, 0.18.., 0.25, 0.3..: below 0.5 for these steps
        expected = d * expected + (1 - d) * value
        average.update(net)
        assert average.weights["0.weight"].item() == pytest.approx(expected)
    assert average.weights["1.num_batches_tracked"].item() == 4
    assert average.step_decay() == pytest.approx(5 / 14)
    with average.applied(net):
        assert net[0].weight.item() == pytest.approx(expected)
    assert net[0].weight.item() == 8.0  # the network's own weights come back after the block


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_a_decay_outside_zero_to_one_is_refused(decay: float):
    with pytest.raises(ConfigError, match="--ema"):
        TrainSpec(ema=decay)


def _values(faces: Path, out: Path) -> dict:
    return dict(model=TINY, data=[str(faces)], val=str(faces), out=str(out), epochs=2, batch_size=2, workers=0,
                lr=1e-3, seed=3, device="cpu", ema=0.9, warmup_epochs=0.0)


def test_the_run_saves_the_average_logs_both_figures_and_resumes_to_the_same_average(
        synthetic_faces: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FAN_EDGE_NO_PROGRESS", "1")
    straight = tmp_path / "straight"
    assert not train(TrainSpec(**_values(synthetic_faces, straight)))["stopped"]
    state = torch.load(straight / LAST, weights_only=True)
    final = read_checkpoint(straight / "final.safetensors")
    assert state["ema"]["updates"] == 6  # 3 batches an epoch, 2 epochs
    averaged = {k: v for k, v in state["ema"]["weights"].items() if v.is_floating_point()}
    differs = 0
    for key, mean in averaged.items():
        torch.testing.assert_close(final.state_dict[key].float(), mean.float(), msg=key)
        differs += not torch.equal(mean, state["model"][key])
    assert differs > len(averaged) // 2  # the file holds the average, not the last step's weights
    assert "--ema 0.9" in final.card["recipe"]
    log = (straight / "train.log").read_text()
    assert log.count("raw_nme_io=") == 2 and log.count(" nme_io=") == 2

    cut = tmp_path / "cut"
    assert train(TrainSpec(**_values(synthetic_faces, cut), max_batches=4))["stopped"]  # inside epoch 2
    assert not train(TrainSpec(**_values(synthetic_faces, cut)))["stopped"]
    resumed = read_checkpoint(cut / "final.safetensors").state_dict
    for key, value in final.state_dict.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_checkpoint_without_the_average_is_refused_in_one_line(synthetic_faces: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FAN_EDGE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    assert train(TrainSpec(**_values(synthetic_faces, out), max_batches=1))["stopped"]
    state = torch.load(out / LAST, weights_only=True)
    del state["ema"]
    torch.save(state, out / LAST)
    with pytest.raises(CheckpointError, match="holds none"):
        train(TrainSpec(**_values(synthetic_faces, out)))
