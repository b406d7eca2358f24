"""Widening a trained FAN into a wider one (fan-train --init with a narrower checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fan_edge.errors import ConfigError
from fan_edge.models import create_model, save_checkpoint
from fan_edge.runtime.crop import CropSpec
from fan_edge.train.warm_start import warm_start
from fan_edge.train.widen import layer_places, widen_state_dict


def _trained_like(name: str, seed: int) -> torch.nn.Module:
    """A network whose every tensor, BatchNorm statistics included, is far from its initial value."""
    torch.manual_seed(seed)
    model = create_model(name, weights=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    return model.eval()


@pytest.mark.parametrize("narrow,wide", [("fan2-w32-i64", "fan2-w64-i64"), ("fan2-w32-i64", "fan3-w48-i64")])
def test_a_widened_network_gives_the_narrow_ones_heatmaps(narrow: str, wide: str):
    small = _trained_like(narrow, seed=0)
    large = create_model(wide, weights=False)
    state = small.state_dict()
    if large.config.stacks > small.config.stacks:
        from fan_edge.train.warm_start import grow_stacks

        state = grow_stacks(state, large.config.stacks)
    large.load_state_dict(widen_state_dict(state, small.config, large.state_dict(), large.config))
    large.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = small.forward_stacks(x)
        got = large.forward_stacks(x)
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[i], e, atol=1e-4, rtol=1e-4)


def test_the_extra_channels_learn():
    """The zero links from extra into original channels get gradients at once; after one step, so does the extra width.

    At the first step nothing from an extra channel reaches the heatmaps, so only the links that would carry it move
    (as with any zero-initialised branch); the step after, the extra channels' own weights get gradients too.
    """
    small = _trained_like("fan1-w32-i64", seed=1)
    large = create_model("fan1-w64-i64", weights=False)
    large.load_state_dict(widen_state_dict(small.state_dict(), small.config, large.state_dict(), large.config))
    large.train()
    rows, columns = layer_places(small.config, large.config)["m0.b1_4.conv1"]
    conv = large.get_submodule("m0.b1_4.conv1")
    extra_in = torch.ones(conv.weight.shape[1], dtype=torch.bool)
    extra_in[columns] = False
    extra_out = torch.ones(conv.weight.shape[0], dtype=torch.bool)
    extra_out[rows] = False
    optimizer = torch.optim.SGD(large.parameters(), lr=0.1)
    x = torch.randn(2, 3, 64, 64)

    sum(h.square().mean() for h in large(x)).backward()
    assert conv.weight.grad[rows][:, extra_in].abs().sum() > 0
    assert large.get_submodule("l0").weight.grad[:, 32:].abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    sum(h.square().mean() for h in large(x)).backward()
    assert conv.weight.grad[extra_out].abs().sum() > 0


def test_fan_train_init_widens_a_narrower_checkpoint(tmp_path: Path):
    """warm_start (fan-train --init) widens, and the wide network takes the narrow weights' crop and refinement."""
    small = _trained_like("fan2-w32-i64", seed=2)
    small.weights = small.weights.replace(crop=CropSpec(reference_scale=280.0))
    path = save_checkpoint(small, tmp_path / "narrow.safetensors")
    large = warm_start(create_model("fan2-w48-i128", weights=False), str(path)).eval()
    assert large.weights.crop.reference_scale == 280.0
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(large(x), small(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("narrow,wide,message", [
    ("fan2-w64-i64", "fan2-w32-i64", "wider network"),
    ("fan2-w32-i64-s2", "fan2-w64-i64-s2", "fine-head"),
    ("fan2-w32-i64", "fan2-w64-i64", None),
])
def test_widening_refuses_what_it_cannot_preserve(narrow: str, wide: str, message: str | None):
    small, large = create_model(narrow, weights=False), create_model(wide, weights=False)
    if message is None:  # the control: this pair widens
        widen_state_dict(small.state_dict(), small.config, large.state_dict(), large.config)
        return
    with pytest.raises(ConfigError, match=message):
        widen_state_dict(small.state_dict(), small.config, large.state_dict(), large.config)


def test_widening_refuses_a_pruned_network():
    small = create_model("fan1-w32-i64", weights=False)
    pruned = small.config.replace(channels={"conv_last0": 16})
    with pytest.raises(ConfigError, match="pruned"):
        layer_places(pruned, create_model("fan1-w64-i64", weights=False).config)
