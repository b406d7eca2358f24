"""A shallower hourglass from a deeper one's weights (fan_edge.train.shallower), and depth in architecture names."""

from __future__ import annotations

import pytest
import torch

from fan_edge.errors import ConfigError
from fan_edge.models import create_model, save_checkpoint
from fan_edge.models.config import FANConfig
from fan_edge.models.registry import architecture_name, config_from_name
from fan_edge.train.shallower import shallower_state_dict
from fan_edge.train.warm_start import warm_start


def _deep(tmp_path, depth=4, size=128):
    torch.manual_seed(0)
    model = create_model(FANConfig(stacks=2, width=32, input_size=size, hourglass_depth=depth), weights=False)
    return model, save_checkpoint(model, tmp_path / f"d{depth}.safetensors")


@pytest.mark.parametrize("name, depth, size", [("fan1-w64-i96-d3", 3, 96), ("fan2-w32-i64-d2-s2", 2, 64), ("fan4", 4, 256)])
def test_depth_in_names_round_trips(name, depth, size):
    cfg = config_from_name(name)
    assert (cfg.hourglass_depth, cfg.input_size) == (depth, size)
    assert config_from_name(architecture_name(cfg)) == cfg


def test_an_input_the_depth_cannot_halve_names_the_shallower_depth():
    with pytest.raises(ConfigError, match=r"depth 3 \(-d3 in a name\) takes multiples of 32"):
        config_from_name("fan2-w64-i96")


def test_levels_keep_their_relative_place_and_the_bottom_takes_the_dropped_upper_branch(tmp_path):
    deep, _ = _deep(tmp_path)
    sd = deep.state_dict()
    out = shallower_state_dict(sd, 4, 3)
    for stack in ("m0", "m1"):
        for kind in ("b1", "b2", "b3"):
            for level in (4, 3, 2):
                assert torch.equal(out[f"{stack}.{kind}_{level - 1}.conv1.weight"], sd[f"{stack}.{kind}_{level}.conv1.weight"])
        assert torch.equal(out[f"{stack}.b2_plus_1.conv2.weight"], sd[f"{stack}.b1_1.conv2.weight"])
    assert torch.equal(out["conv1.weight"], sd["conv1.weight"]) and torch.equal(out["l1.weight"], sd["l1.weight"])
    shallow = create_model(FANConfig(stacks=2, width=32, input_size=96, hourglass_depth=3), weights=False)
    assert set(out) == set(shallow.state_dict())  # exactly the shallower network's tensors
    two = shallower_state_dict(sd, 4, 2)  # two levels dropped: the bottom is level 2's upper branch
    assert torch.equal(two["m0.b2_plus_1.conv1.weight"], sd["m0.b1_2.conv1.weight"])
    assert torch.equal(two["m0.b3_2.conv1.weight"], sd["m0.b3_4.conv1.weight"])


def test_warm_start_changes_depth_and_input_and_refuses_a_deeper_hourglass(tmp_path):
    deep, path = _deep(tmp_path)
    shallow = warm_start(create_model("fan1-w32-i96-d3", weights=False), str(path))
    assert torch.equal(shallow.state_dict()["m0.b1_3.conv3.weight"], deep.state_dict()["m0.b1_4.conv3.weight"])
    with torch.no_grad():
        assert shallow(torch.rand(1, 3, 96, 96)).shape == (1, 68, 24, 24)  # the last stack's heatmaps
    wider = warm_start(create_model("fan2-w64-i96-d3", weights=False), str(path))  # shallower and wider at once
    assert torch.equal(wider.state_dict()["m1.b2_plus_1.bn1.running_mean"][:32], deep.state_dict()["m1.b1_1.bn1.running_mean"])
    _, d3 = _deep(tmp_path, depth=3, size=96)
    with pytest.raises(ConfigError, match="only a shallower one"):
        warm_start(create_model("fan2-w32-i128", weights=False), str(d3))
