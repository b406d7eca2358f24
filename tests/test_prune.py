"""Structured pruning (fan-prune): channel maps in the config, DepGraph surgery, stacks, export, CLI, resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import randomise_batchnorm

pytest.importorskip("torch_pruning")

from fan_edge.cli import prune_main  # noqa: E402
from fan_edge.errors import ConfigError  # noqa: E402
from fan_edge.models import FAN, FANConfig, count_macs, create_model, save_checkpoint  # noqa: E402
from fan_edge.models.channels import free_layers  # noqa: E402
from fan_edge.quantize.pruning import group_widths, prune_channels, prune_model  # noqa: E402
from fan_edge.quantize.pruning.structured import kept_channels  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def two_stack() -> FAN:
    """fan2-w32-i128 with random weights and BatchNorm statistics."""
    torch.manual_seed(0)
    return randomise_batchnorm(create_model(FANConfig(stacks=2, width=32, input_size=128), weights=False))


@pytest.fixture(scope="module")
def two_stack_path(two_stack, tmp_path_factory) -> Path:
    return save_checkpoint(two_stack, tmp_path_factory.mktemp("two") / "fan2.safetensors", card={"description": "random"})


@pytest.fixture(scope="module")
def halved(two_stack) -> FAN:
    pruned, _ = prune_model(two_stack, 0.5)
    return pruned


def _conv_shapes(model: torch.nn.Module) -> Counter:
    return Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


# --- the config's channel map -------------------------------------------------------------------------


def test_unpruned_config_serialises_as_before():
    cfg = FANConfig(stacks=2, width=64, input_size=128)
    assert "channels" not in cfg.to_dict() and "channels" not in json.loads(cfg.to_json())
    assert not cfg.pruned and FANConfig.from_dict(cfg.to_dict()) == cfg
    assert FANConfig(channels={}) == FANConfig()  # an empty map is the uniform layout


def test_channel_map_round_trips_and_truncates(halved):
    cfg = halved.config
    assert cfg.pruned and set(dict(cfg.channels)) == set(free_layers(2, 4))
    assert FANConfig.from_dict(json.loads(cfg.to_json())) == cfg
    one = cfg.replace(stacks=1)
    assert set(dict(one.channels)) == set(free_layers(1, 4)) and one.layout.trunk == cfg.layout.trunk
    hash(cfg)  # still a frozen, hashable value


@pytest.mark.parametrize(
    "channels, message",
    [
        ({"m0.b9_1.conv1": 8}, "unknown layer"),
        ({"conv_last5": 8}, "unknown layer"),
        ({"conv1": 0}, "positive integer"),
        ({"conv1": 2.5}, "positive integer"),
        ({"m0.b1_4.conv1": 8}, "identity shortcut"),  # 8+8+8 = 24 but the trunk is 32
        ({"conv3.conv3": 2}, "identity shortcut"),  # the stem's conv3 block has an identity shortcut too
        ("conv1=8", "mapping"),
    ],
)
def test_bad_channel_maps_are_one_line_config_errors(channels, message):
    with pytest.raises(ConfigError, match=message) as info:
        FANConfig(stacks=2, width=32, input_size=128, channels=channels)
    assert "\n" not in str(info.value)


def test_consistent_hand_written_map_builds():
    """A downsample block may change its width freely; the stem's conv4 sets the trunk for everything after it."""
    cfg = FANConfig(stacks=1, width=32, input_size=128, channels={"conv1": 6, "conv4.conv1": 8, "conv4.conv2": 4, "conv4.conv3": 4,
                                                                   **{f"{b}.conv1": 8 for b in _trunk_blocks(1)},
                                                                   **{f"{b}.conv2": 4 for b in _trunk_blocks(1)},
                                                                   **{f"{b}.conv3": 4 for b in _trunk_blocks(1)}})
    model = FAN(cfg).eval()
    assert model.conv1.out_channels == 6 and model.conv2.bn1.num_features == 6
    assert model.conv4.downsample[2].weight.shape[0] == 16 and model.conv_last0.in_channels == 16
    assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 68, 32, 32)


def _trunk_blocks(stacks: int) -> list[str]:
    from fan_edge.models.channels import block_names

    return block_names(stacks, 4)[3:]


# --- channel pruning ---------------------------------------------------------------------------------


def test_pruning_removes_channels_and_macs_by_about_the_ratio(two_stack, halved):
    assert group_widths(two_stack) == {"stem": 8, "stem_blocks": 16, "trunk": 32, "head0": 32, "head1": 32}
    assert group_widths(halved) == {"stem": 4, "stem_blocks": 8, "trunk": 16, "head0": 16, "head1": 16}
    before, after = count_macs(two_stack, 128), count_macs(halved, 128)
    # Both sides of most convs halve: about a quarter of the MACs remain (the 3-channel input and 68 heatmaps do not shrink).
    assert 0.22 < after / before < 0.35
    assert sum(p.numel() for p in halved.parameters()) < 0.4 * sum(p.numel() for p in two_stack.parameters())


def test_every_block_keeps_its_split_and_the_heads_their_landmarks(halved):
    for name in _trunk_blocks(2):
        block = halved.get_submodule(name)
        assert (block.conv1.out_channels, block.conv2.out_channels, block.conv3.out_channels) == (8, 4, 4)
    for i in range(2):
        assert halved.get_submodule(f"l{i}").out_channels == 68
    assert [o.shape for o in halved.forward_stacks(torch.zeros(2, 3, 128, 128))] == [(2, 68, 32, 32)] * 2


def test_least_important_channels_go(two_stack):
    """Zeroing a trunk channel's weights everywhere makes it the first one removed."""
    model = FAN(two_stack.config)
    model.load_state_dict(two_stack.state_dict())
    with torch.no_grad():  # every weight that trunk channel 3 (in the conv1 slot) touches
        model.conv4.conv1.weight[3] = 0.0
        model.conv4.downsample[2].weight[3] = 0.0
        for name in _trunk_blocks(2):
            block = model.get_submodule(name)
            block.conv1.weight[3] = 0.0
            block.conv1.weight[:, 3] = 0.0
            block.bn1.weight[3] = 0.0
        for i in range(2):
            model.get_submodule(f"conv_last{i}").weight[:, 3] = 0.0
        model.bl0.weight[3] = 0.0
        model.al0.weight[3] = 0.0
    pruned = prune_channels(model.eval(), 1 / 16)  # one channel of the conv1 slot (16), none of the 8-channel slots
    kept = pruned.conv4.conv1.weight
    expected = torch.cat([model.conv4.conv1.weight[:3], model.conv4.conv1.weight[4:]])
    assert kept.shape[0] == 15 and torch.equal(kept, expected)


def test_round_to_and_group_ratios(two_stack):
    assert [kept_channels(16, 0.5, 8), kept_channels(8, 0.5, 8), kept_channels(32, 0.25, None), kept_channels(4, 0.99, None)] == [8, 8, 24, 1]
    rounded = prune_channels(two_stack, 0.5, round_to=8)
    assert (rounded.m0.b1_4.conv1.out_channels, rounded.m0.b1_4.conv2.out_channels, rounded.m0.b1_4.conv3.out_channels) == (8, 8, 8)
    partial = prune_channels(two_stack, 0.5, ratios={"trunk": 0, "head1": 0.25})
    assert group_widths(partial) == {"stem": 4, "stem_blocks": 8, "trunk": 32, "head0": 16, "head1": 24}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratio": 0.0}, r"\(0, 1\)"),
        ({"ratio": 1.0}, r"\(0, 1\)"),
        ({"ratio": -0.2}, r"\(0, 1\)"),
        ({"ratio": True}, r"\(0, 1\)"),
        ({"ratio": 0.5, "ratios": {"hourglass": 0.5}}, "unknown channel group"),
        ({"ratio": 0.5, "ratios": {"trunk": 1.5}}, "of trunk"),
        ({"ratio": 0.5, "importance": "taylor"}, "unknown importance"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
    ],
)
def test_bad_pruning_requests(two_stack, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        prune_channels(two_stack, **kwargs)


# --- stacks ------------------------------------------------------------------------------------------


def test_stack_pruning_keeps_the_early_exit(two_stack):
    one, report = prune_model(two_stack, None, stacks=1)
    assert one.config.stacks == 1 and not hasattr(one, "m1") and not hasattr(one, "bl0")
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(one(x), two_stack.forward_stacks(x, 1)[0])
    assert 0.3 < report.macs_reduction < 0.6 and report.settings["stacks"] == 1
    with pytest.raises(ConfigError, match="between 1 and 2"):
        prune_model(two_stack, None, stacks=3)
    with pytest.raises(ConfigError, match="nothing to prune"):
        prune_model(two_stack, None)


def test_stacks_then_channels(two_stack):
    pruned, report = prune_model(two_stack, 0.5, stacks=1)
    assert pruned.config.stacks == 1 and group_widths(pruned)["trunk"] == 16
    assert report.groups_before["trunk"] == 32 and "head1" not in report.groups_after


def test_pruning_the_default_meets_the_mac_target():
    """The settings docs/compression.md recommends for the bundled default remove at least 40% of its MACs."""
    default = create_model("default")
    for ratio, stacks, round_to in [(0.5, None, 16), (None, 1, None)]:
        _, report = prune_model(default, ratio, stacks=stacks, round_to=round_to)
        assert report.macs_reduction >= 0.40, (ratio, stacks, report.macs_reduction)


# --- checkpoints and export ----------------------------------------------------------------------------


def test_pruned_checkpoint_rebuilds_exactly(halved, tmp_path):
    path = save_checkpoint(halved, tmp_path / "pruned.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["config"]["channels"]["m1.b3_4.conv1"] == 8
    again = create_model(path)
    assert again.config == halved.config and _conv_shapes(again) == _conv_shapes(halved)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(again(x), halved(x))
    early = create_model(path, stacks=1)  # truncation still works on a pruned file
    with torch.no_grad():
        assert torch.equal(early(x), halved.forward_stacks(x, 1)[0])


def _onnx_conv_shapes_and_macs(path: Path) -> tuple[Counter, int]:
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    spatial = {}
    for v in list(model.graph.value_info) + list(model.graph.output):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if len(dims) == 4:
            spatial[v.name] = dims[2] * dims[3]
    shapes, macs = Counter(), 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            shapes[tuple(w)] += 1
            macs += int(torch.tensor(w).prod()) * spatial[node.output[0]]
    return shapes, macs


def _openvino_conv_shapes(path: Path) -> Counter:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return Counter(
        tuple(op.input_value(1).get_shape()) for op in model.get_ops() if op.get_type_name() == "Convolution"
    )


def test_pruned_model_exports_with_the_removed_channels(halved, two_stack, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from fan_edge.export import export_model

    path = save_checkpoint(halved, tmp_path / "pruned.safetensors")
    results = export_model(str(path), "onnx,openvino", "fp32", output=tmp_path / "exports", verify=False)
    by_target = {r.target: r for r in results}
    onnx_shapes, onnx_macs = _onnx_conv_shapes_and_macs(by_target["onnx"].path)
    assert onnx_shapes == _conv_shapes(halved)  # every conv as pruned (BatchNorm stays separate: it is pre-activation)
    assert onnx_macs == count_macs(halved, 128) and onnx_macs < 0.35 * count_macs(two_stack, 128)
    assert _openvino_conv_shapes(by_target["openvino"].path) == _conv_shapes(halved)
    assert json.loads(by_target["onnx"].path.with_name(by_target["onnx"].path.name + ".json").read_text())["config"]["channels"]


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_prunes_only_with_epochs_zero(two_stack_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert prune_main(["--model", str(two_stack_path), "--ratio", "0.5", "--epochs", "0", "--out", str(out)]) == 0
    card = json.loads((out / "pruned.json").read_text())
    record = card["pruning"]
    assert record["command"].startswith("fan-prune --model ") and "--ratio 0.5" in record["command"]
    assert record["macs_after"] < 0.35 * record["macs_before"] and record["channels_after"]["trunk"] == 16
    assert create_model(out / "pruned.safetensors").config.pruned
    printed = capsys.readouterr()
    assert not printed.out and "fewer" in printed.err  # the summary goes to stderr
    # Same settings again: reused; other settings: refused with a one-line error.
    assert prune_main(["--model", str(two_stack_path), "--ratio", "0.5", "--epochs", "0", "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().err
    assert prune_main(["--model", str(two_stack_path), "--ratio", "0.25", "--epochs", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pruned with other settings" in err and "--fresh" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ratio", "1.5"], "(0, 1)"),
        (["--ratio", "0"], "(0, 1)"),
        ([], "nothing to prune"),
        (["--stacks", "3"], "between 1 and 2"),
        (["--ratio", "0.5", "--group-ratio", "trunk"], "GROUP=R"),
        (["--ratio", "0.5", "--group-ratio", "neck=0.5"], "unknown channel group"),
        (["--group-ratio", "trunk=0.5"], "give --ratio too"),
        (["--ratio", "0.5", "--epochs", "2"], "--data"),
        (["--ratio", "0.5", "--init", "x.safetensors"], "--init"),
    ],
)
def test_cli_bad_input_is_one_line(two_stack_path, tmp_path, capsys, args, message):
    code = prune_main(["--model", str(two_stack_path), "--out", str(tmp_path / "bad"), "--epochs", "0", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_fine_tune_resumes_and_stamps_the_cards(two_stack_path, synthetic_faces, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAN_EDGE_NO_PROGRESS", "1")
    out = tmp_path / "ft"
    args = ["--model", str(two_stack_path), "--stacks", "1", "--ratio", "0.5", "--data", str(synthetic_faces),
            "--out", str(out), "--epochs", "1", "--batch-size", "2", "--workers", "0", "--val-every", "1"]
    assert prune_main([*args, "--max-batches", "1"]) == 0
    assert (out / "last.ckpt").is_file() and not (out / "final.safetensors").exists()
    state = torch.load(out / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 1) and state["spec"]["teacher"] == str(two_stack_path)
    assert state["config"]["channels"]["m0.b1_4.conv1"] == 8
    capsys.readouterr()
    assert prune_main(args) == 0
    assert "resuming" in capsys.readouterr().err
    final = out / "final.safetensors"
    card = json.loads(final.with_suffix(".json").read_text())
    assert card["recipe"].startswith("fan-prune ") and card["fine_tune_recipe"].startswith("fan-distill ")
    assert card["pruning"]["macs_after"] == card["macs"] == count_macs(create_model(final), 128)
    assert create_model(final).config == create_model(out / "pruned.safetensors").config


def test_under_torchrun_pruning_comes_first(two_stack_path, synthetic_faces, tmp_path, capsys, monkeypatch):
    """Ranks must not all prune and write the same file: torchrun only fine-tunes an already pruned model."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = prune_main(["--model", str(two_stack_path), "--ratio", "0.5", "--data", str(synthetic_faces), "--out", str(tmp_path / "ddp")])
    err = capsys.readouterr().err
    assert code == 2 and "--epochs 0" in err and not (tmp_path / "ddp" / "pruned.safetensors").exists()
